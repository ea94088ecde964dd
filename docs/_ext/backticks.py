"""A griffe extension for the API reference: ggopool's docstrings, read as the site renders them.

The docstrings follow the reStructuredText habits of trio's and gevent's: a name in single
backticks (`Pool.go`, `~ggopool.Pool.stats`) is a cross reference, ``double backticks``
are code, and a paragraph ending in ``::`` introduces an indented code block. This turns
each single-backtick name into a link to the page's entry for it, found as Sphinx would:
in the documented object, then in each enclosing scope out to ``ggopool``. A name that
resolves to nothing public is logged as a warning, which ``mkdocs build --strict`` turns
into a failed build, so a docstring cannot point at a name that does not exist. Each
``::`` block becomes a fenced Python block.

Loaded by mkdocs.yml (``extensions`` of the python handler); not part of the package.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import griffe

#: The site's warnings go through mkdocs' loggers: under --strict, a warning fails the build.
log = logging.getLogger("mkdocs.plugins.ggopool.backticks")

#: A name in single backticks (not part of a ``double``-backtick span).
REF = re.compile(r"(?<![`\w])`(?P<tilde>~?)(?P<name>[A-Za-z_][\w.]*)(?:\(\))?`(?![`\w])")

#: The integration modules beside the core, documented on the same page.
SKIP_MODULES = ("bench",)


def _public(name: str) -> bool:
    return not name.startswith("_")


def _members(obj: Any) -> dict[str, Any]:
    try:
        return dict(obj.all_members) if obj.is_class else dict(obj.members)
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return {}


def public_objects(pkg: griffe.Module) -> dict[str, Any]:
    """Every object the API page renders, by the path it is rendered under."""
    found: dict[str, Any] = {pkg.path: pkg}

    def walk(path: str, obj: Any, depth: int) -> None:
        found[path] = obj
        if depth and (obj.is_class or obj.is_module):
            exports = set(obj.exports or ()) if obj.is_module else set()
            for name, member in _members(obj).items():
                # A module's imported names are its own only if it exports them.
                if _public(name) and not (
                    member.is_alias and obj.is_module and name not in exports
                ):
                    walk(f"{path}.{name}", member, depth - 1)

    for name in pkg.exports or ():
        walk(f"{pkg.path}.{name}", pkg[str(name)], 1)
    for name, module in pkg.modules.items():
        if _public(name) and name not in SKIP_MODULES:
            walk(module.path, module, 2)
    return found


def canonical(public: dict[str, Any]) -> dict[str, str]:
    """Where each object is defined (``ggopool._pool.Pool``) -> where the page renders it."""
    found: dict[str, str] = {}
    for path, obj in public.items():
        try:
            found.setdefault(obj.canonical_path, path)
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
    return found


def _resolve(name: str, scope: str, public: dict[str, Any]) -> str | None:
    """The rendered path ``name`` refers to from inside ``scope``, or None.

    A full dotted path to where an object is defined (``ggopool._pool.Pool``) also resolves,
    to where the page renders it (``ggopool.Pool``).
    """
    if name in public:
        return name
    parts = scope.split(".")
    while parts:
        candidate = ".".join([*parts, name])
        if candidate in public:
            return candidate
        parts.pop()
    return canonical(public).get(name) if name.startswith("ggopool.") else None


def _fence_literal_blocks(text: str) -> str:
    """reST's ``para::`` plus an indented block, as a fenced Python block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 2 < len(lines) and not lines[i + 1].strip():
            block_indent = len(lines[i + 2]) - len(lines[i + 2].lstrip())
            own_indent = len(line) - len(line.lstrip())
            if lines[i + 2].strip() and block_indent > own_indent:
                head = line.rstrip()[:-2].rstrip()
                if head:
                    out.append(head + ":")
                out += ["", " " * own_indent + "```python"]
                i += 2
                while i < len(lines) and (
                    not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= block_indent
                ):
                    out.append(" " * own_indent + lines[i][block_indent:])
                    i += 1
                while out and not out[-1].strip():
                    out.pop()
                out += [" " * own_indent + "```", ""]
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def rewrite(text: str, scope: str, public: dict[str, Any]) -> tuple[str, list[str]]:
    """``text`` with its references linked and its ``::`` blocks fenced; the unresolved."""
    missing: list[str] = []
    parts = re.split(r"(```.*?```)", _fence_literal_blocks(text), flags=re.DOTALL)

    def link(match: re.Match[str]) -> str:
        name = match.group("name")
        target = _resolve(name, scope, public)
        if target is None:
            missing.append(name)
            return match.group(0)
        shown = name.rsplit(".", 1)[-1] if match.group("tilde") else name
        return f"[`{shown}`][{target}]"

    # Code blocks are left as they are: a backtick there is code.
    for k in range(0, len(parts), 2):
        parts[k] = REF.sub(link, parts[k])
    return "".join(parts), missing


class BacktickRefs(griffe.Extension):
    """Links single-backtick names in the rendered docstrings; warns on unknown ones."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "ggopool":
            return
        public = public_objects(pkg)
        seen: set[int] = set()
        for path, obj in public.items():
            try:
                docstring = obj.docstring
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
            if docstring is None or id(docstring) in seen:
                continue
            seen.add(id(docstring))
            docstring.value, missing = rewrite(docstring.value, path, public)
            for name in missing:
                log.warning(
                    "the docstring of %s refers to `%s`, which names nothing in ggopool's "
                    "public API: link a public name, or write it in ``double backticks``",
                    path,
                    name,
                )
