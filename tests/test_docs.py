"""The documents point only at files the repository has.

Every relative link and every backticked path in the READMEs and docs/*.md names a file or
folder of this repository as it is: a renamed module breaks this test, not a reader's trust.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "bench" / "README.md",
    ROOT / "clients" / "web" / "README.md",
]

TRACKED_TOPS = ("services", "clients", "tests", "scripts", "proto", "docs", "deploy", "envoy")
"""Folders of the repository: a backticked path that starts with one must exist."""

SOURCE_ROOTS = ("services", "clients", "scripts", "tests", "bench")
"""Where a short module path (`executor/events/watch.py`, `rpc/serving.py`) is looked for."""

EXCEPTIONS: set[str] = set()
"""Paths a document names on purpose although the repository does not have them."""

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CODE = re.compile(r"`([^`\s]+)`")
_PLACEHOLDER = re.compile(r"[<>*{}$]")


@functools.cache
def _modules() -> list[Path]:
    return [
        file
        for source in SOURCE_ROOTS
        for file in (ROOT / source).rglob("*.py")
        if not {".venv", "node_modules"} & set(file.parts)
    ]


def _references(document: Path) -> list[str]:
    """The document's relative links (as `link:target`) and backticked words."""
    text = document.read_text()
    links = [target for target in _LINK.findall(text) if not re.match(r"[a-z]+:", target)]
    return [*(f"link:{target}" for target in links), *_CODE.findall(text)]


def _missing(document: Path, reference: str) -> str | None:
    """Why `reference` names nothing in the repository, or None when it is fine."""
    is_link = reference.startswith("link:")
    path = reference.removeprefix("link:").split("#", 1)[0].rstrip("/")
    if not path or reference in EXCEPTIONS or _PLACEHOLDER.search(path):
        return None
    if not is_link and (path.startswith("/") or ("/" not in path and not path.endswith(".py"))):
        return None  # a word, or a path on the machine (`/proc/cpuinfo`), not in the repository
    # A link is relative to its document; a backticked path, to the repository's root.
    target = ((document.parent if is_link else ROOT) / path).resolve()
    if not target.is_relative_to(ROOT):
        return "points outside the repository"
    if target.exists() or (document.parent / path).exists():
        return None
    if is_link:
        return "no such file"
    if path.split("/", 1)[0] in TRACKED_TOPS:
        return "no such file"
    if path.endswith(".py") and not path.startswith("."):
        # A module named the short way (`executor/events/watch.py`): some package must hold it.
        if any(file.as_posix().endswith(f"/{path}") for file in _modules()):
            return None
        return "no such module"
    return None


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda document: document.name)
def test_every_path_a_document_names_exists(document: Path) -> None:
    problems = [
        f"{reference.removeprefix('link:')!r}: {problem}"
        for reference in dict.fromkeys(_references(document))
        if (problem := _missing(document, reference)) is not None
    ]
    where = document.relative_to(ROOT)
    assert not problems, f"{where} names what the repository lacks:\n" + "\n".join(problems)
