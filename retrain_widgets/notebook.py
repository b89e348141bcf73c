"""Which notebook this kernel runs, so that each run is stored with it.

A kernel does not know its notebook by itself; the front end's server tells it:

* Jupyter Server (JupyterLab 4, Notebook 7, Voilà ...) starts each notebook's kernel with the
  environment variable ``JPY_SESSION_NAME`` set to the session's path, and ipykernel (6.22 and
  later) copies it into the user namespace as ``__session__``;
* VS Code sets ``__vsc_ipynb_file__`` in the user namespace.

:func:`kernel_notebook` reads those (the user namespace is ``__main__``'s, so no IPython import is
needed), and ``None`` outside a notebook (a script, a plain Python shell, nbval / nbclient
kernels that no server started): those runs belong to no notebook. :func:`notebook_key` makes
the path relative to the folder that holds the run store, so a course folder that is moved or
served from another root keeps its runs grouped by notebook.
"""

from __future__ import annotations

import os
import sys

__all__ = ["kernel_notebook", "notebook_key"]

_NAMESPACE_KEYS = ("__session__", "__vsc_ipynb_file__")


def kernel_notebook() -> str | None:
    """The absolute path of this kernel's notebook, or ``None`` outside a notebook."""
    main = sys.modules.get("__main__")
    namespace = vars(main) if main is not None else {}
    found = next((v for k in _NAMESPACE_KEYS if isinstance(v := namespace.get(k), str) and v), None)
    found = found or os.environ.get("JPY_SESSION_NAME") or None
    if found is None:
        return None
    if os.path.isabs(found):
        return os.path.normpath(found)
    # a path relative to the server's root; the kernel runs in the notebook's folder
    return os.path.join(os.getcwd(), os.path.basename(found))


def notebook_key(path: str | None, store_dir: str | None) -> str | None:
    """``path`` relative to the folder that holds the store ``store_dir`` (``/`` separators), as
    stored with each run; the absolute path when it is on another drive or there is no store."""
    if path is None:
        return None
    if store_dir is None:
        return path
    try:
        return os.path.relpath(path, os.path.dirname(os.path.abspath(store_dir))).replace(os.sep, "/")
    except ValueError:  # another drive (Windows)
        return path
