"""Every image and relative link of the repository's Markdown files points at a file that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "node_modules", "test-artifacts", ".pytest_cache", "build", "dist"}

# [text](target "title") and ![alt](target), <img src="..."> and <a href="...">
_MD_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
_HTML_LINK = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def markdown_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        files = [ROOT / p for p in listed]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        files = [p for p in ROOT.rglob("*.md") if not SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    return sorted(p for p in files if p.is_file())


def targets(text: str) -> list[str]:
    """The link and image targets of a Markdown text (code spans and blocks left out)."""
    text = _CODE.sub("", text)
    return [m.group(1) for pattern in (_MD_LINK, _HTML_LINK, _REF_DEF) for m in pattern.finditer(text)]


def is_relative(target: str) -> bool:
    return not re.match(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", target, re.IGNORECASE)


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in targets(path.read_text(encoding="utf-8")):
        if not is_relative(target):
            continue
        file_part = unquote(target.split("#", 1)[0].split("?", 1)[0])
        resolved = (ROOT / file_part.lstrip("/")) if file_part.startswith("/") else (path.parent / file_part)
        if not resolved.exists():
            bad.append(target)
    return bad


def test_the_link_finder_sees_images_links_and_html():
    text = ('![fig](docs/a.png) [nb](notebooks/x.ipynb#top "title") <img src="b.png"> [web](https://x.org) '
            '`[code](not/a/link.md)`\n[ref]: c/d.md\n```\n![x](in/code.png)\n```')
    assert targets(text) == ["docs/a.png", "notebooks/x.ipynb#top", "https://x.org", "b.png", "c/d.md"]
    assert [t for t in targets(text) if is_relative(t)] == ["docs/a.png", "notebooks/x.ipynb#top", "b.png", "c/d.md"]


def test_a_missing_target_is_reported(tmp_path):
    doc = tmp_path / "doc.md"
    (tmp_path / "here.png").write_bytes(b"")
    doc.write_text("![ok](here.png) ![missing](docs/figures/nothing.png) [ok](#anchor)")
    assert broken_links(doc) == ["docs/figures/nothing.png"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_images_and_relative_links_exist(path):
    assert path.suffix == ".md"
    bad = broken_links(path)
    assert not bad, f"{path.relative_to(ROOT)} points at files that do not exist: {bad}"


def test_the_readme_is_among_the_checked_files():
    assert ROOT / "README.md" in markdown_files()
