"""The documentation documents this repository, in its own words: every link in the
top-level Markdown files and docs/ resolves inside the repository (files, and
headings for #anchors), and nothing points to files outside it."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [*sorted(ROOT.glob("*.md")), *sorted((ROOT / "docs").rglob("*.md"))]
DOCUMENTS += [p for p in [ROOT / "deploy" / "README.md"] if p.exists()]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
OUTSIDE = re.compile(r"shared/|SPEC §|PERFORMANCE-NOTES")


def anchors(document: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings."""
    found = set()
    for line in document.read_text().splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            found.add(title.replace(" ", "-"))
    return found


def test_there_are_docs():
    names = {p.name for p in DOCUMENTS}
    assert {"README.md", "concepts.md", "api.md", "operations.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(document: Path):
    broken = []
    for target in LINK.findall(document.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        missing = not resolved.is_relative_to(ROOT) or not resolved.exists()
        if missing or (anchor and anchor not in anchors(resolved)):
            broken.append(target)
    assert broken == []


def test_nothing_points_outside_the_repository():
    places = [
        *DOCUMENTS,
        *(ROOT / "aggregates").rglob("*.py"),
        *(ROOT / "aggregates").rglob("*.html"),
        *(ROOT / "botlnek_site").rglob("*.py"),
    ]
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in places
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == []
