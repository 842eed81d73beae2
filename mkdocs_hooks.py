"""MkDocs hook: the repository's files that docs/ links to, in the site.

The pages link to files beside docs/ (`../deploy/README.md`, `../bench/results.md`,
`../CHANGELOG.md`, `../LICENSE`), which read right on GitHub but lie outside the
site's docs_dir, so a strict build would call them broken. Rather than turn link
checking off, this hook follows those links (and the links of the files they reach,
transitively), adds each file to the site under `repository/<its path>` (Markdown as
a page, anything else as a plain file), and points every such link there. Links
that reach back into docs/ point at the page itself. A link to a file that does not
exist is left as written, and the strict build fails on it.
"""

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

PREFIX = "repository"
# [text](target) and [text](target "title"); images too. Not inside code spans:
# the pages write no links there.
LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\s+\"[^\"]*\")?(\))")


def _root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _docs(config) -> Path:
    return Path(config["docs_dir"]).resolve()


def _source_of(file: File, config) -> Path:
    """Where a page of the site lives in the repository."""
    if file.src_uri.startswith(PREFIX + "/"):
        return _root(config) / file.src_uri.removeprefix(PREFIX + "/")
    return _docs(config) / file.src_uri


def _targets(text: str, source: Path, root: Path, docs: Path) -> list[Path]:
    """Files outside docs/ but inside the repository that `text` links to."""
    found = []
    for match in LINK.finditer(text):
        target = match[2]
        if re.match(r"[a-z]+:", target):
            continue
        resolved = (source.parent / target).resolve()
        if (
            resolved.is_file()
            and resolved.is_relative_to(root)
            and not resolved.is_relative_to(docs)
        ):
            found.append(resolved)
    return found


def on_files(files: Files, config) -> Files:
    root, docs = _root(config), _docs(config)
    queue = [
        _source_of(file, config)
        for file in files.documentation_pages()
        if file.abs_src_path
    ]
    seen: set[Path] = set()
    while queue:
        source = queue.pop()
        if source in seen or not source.is_file():
            continue
        seen.add(source)
        for target in _targets(source.read_text(encoding="utf-8"), source, root, docs):
            if target in seen:
                continue
            uri = f"{PREFIX}/{target.relative_to(root).as_posix()}"
            if files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, content=target.read_bytes()))
            if target.suffix == ".md":
                queue.append(target)
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    root, docs = _root(config), _docs(config)
    source = _source_of(page.file, config)
    here = posixpath.dirname(page.file.src_uri)

    def point(match: re.Match) -> str:
        target = match[2]
        if re.match(r"[a-z]+:", target):
            return match[0]
        resolved = (source.parent / target).resolve()
        if not resolved.exists() or not resolved.is_relative_to(root):
            return match[0]  # left for the strict build to report
        if resolved.is_relative_to(docs):
            uri = resolved.relative_to(docs).as_posix()
        elif resolved.is_file():
            uri = f"{PREFIX}/{resolved.relative_to(root).as_posix()}"
        else:
            return match[0]
        new = posixpath.relpath(uri, here or ".")
        return f"{match[1]}{new}{match[3] or ''}{match[4] or ''}{match[5]}"

    return LINK.sub(point, markdown)
