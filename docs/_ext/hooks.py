"""mkdocs hooks: README.md is the site's home page, written once.

docs/index.md holds only a marker; the page is README.md with its links made relative to
docs/ (``docs/guide.md`` -> ``guide.md``, ``CHANGELOG.md`` -> ``changelog.md``) and its
links to files the site does not carry (LICENSE, NOTICE) turned into plain text.

Loaded by mkdocs.yml (``hooks``); not part of the package.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: What docs/index.md says in place of the README's text.
MARKER = "<!-- the README: docs/_ext/hooks.py -->"

#: A Markdown link whose target is relative: [text](target) or [text](target#anchor).
LINK = re.compile(r"\[(?P<text>[^\]]+)\]\((?P<target>(?![a-z]+://|#)[^)\s]+)\)")


def home_page(readme: str) -> str:
    """The README's text, with each link pointed where the site has it."""

    def relink(match: re.Match[str]) -> str:
        text, target = match.group("text"), match.group("target")
        path, _, anchor = target.partition("#")
        if path.startswith("docs/"):
            path = path.removeprefix("docs/")
        elif path == "CHANGELOG.md":
            path = "changelog.md"
        else:
            return text  # a file of the repository the site does not carry
        return f"[{text}]({path}{'#' + anchor if anchor else ''})"

    return LINK.sub(relink, readme)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    if markdown.strip() != MARKER:
        raise ValueError(f"docs/index.md must hold only {MARKER}")
    readme = Path(config["config_file_path"]).parent / "README.md"
    return home_page(readme.read_text(encoding="utf-8"))
