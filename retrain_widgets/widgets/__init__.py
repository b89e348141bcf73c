"""ipywidgets views of the core: the :class:`RetrainStudio` dashboard and its parts."""

from __future__ import annotations

from .bridge import Bridge
from .studio import RetrainStudio
from .tree import LayerTreeView

__all__ = ["RetrainStudio", "Bridge", "LayerTreeView"]
