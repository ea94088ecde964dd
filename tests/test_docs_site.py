"""The documentation site: it builds with warnings as errors, its API page has every public name.

``mkdocs build --strict`` fails on a broken link, a missing anchor, or a single-backtick name
in a docstring that names nothing public (docs/_ext/backticks.py). These tests build the
site as .ci/run does and read the pages it wrote.
"""

from __future__ import annotations

import html
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import griffe
import pytest

import ggopool

REPO = Path(__file__).absolute().parents[1]
INTEGRATIONS = ("gunicorn", "locust", "prometheus")


def load(name: str) -> ModuleType:
    """One of the site's build extensions in docs/_ext, which are not part of the package."""
    spec = importlib.util.spec_from_file_location(name, REPO / "docs" / "_ext" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def text_of(page: str) -> str:
    """A page's visible text, whitespace collapsed."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", body)).split())


def plain(docstring: str) -> str:
    """A docstring's first line as the page shows it: no backticks, no ``~``."""
    first = docstring.strip().splitlines()[0]
    return " ".join(re.sub(r"`~?", "", first).split())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_api_page_has_every_public_name_with_its_docstring(site: Path) -> None:
    page = (site / "api" / "index.html").read_text(encoding="utf-8")
    anchors = set(re.findall(r'id="(ggopool[\w.]*)"', page))
    text = text_of(page)
    package = griffe.load("ggopool", search_paths=[str(REPO)])
    for name in ggopool.__all__:
        assert f"ggopool.{name}" in anchors, name
        doc = package[name].docstring
        assert doc is not None, f"ggopool.{name} has no docstring"
        assert plain(doc.value) in text, name
    for module in INTEGRATIONS:
        assert f"ggopool.{module}" in anchors, module
    # A method's entry, and a cross reference from one docstring to another entry.
    assert "ggopool.Pool.go" in anchors
    assert 'href="#ggopool.Pool.ctx_go"' in page


def test_the_home_page_is_the_readme(site: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    intro = readme.split("\n\n")[1]  # the paragraph under the title
    home = text_of((site / "index.html").read_text(encoding="utf-8"))
    assert text_of(re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", intro).replace("`", "")) in home
    changelog = text_of((site / "changelog" / "index.html").read_text(encoding="utf-8"))
    assert f"## {ggopool.__version__}" in (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f" {ggopool.__version__} " in f" {changelog} "


def test_a_backtick_name_links_to_its_entry_or_is_reported() -> None:
    backticks = load("backticks")
    public = dict.fromkeys(["ggopool", "ggopool.Pool", "ggopool.Pool.go", "ggopool.Config"])
    text, missing = backticks.rewrite(
        "Runs `go` like `~ggopool.Pool.go`, with `Config`; see `Nope` and ``code``.",
        "ggopool.Pool.submit",
        public,
    )
    assert text == (
        "Runs [`go`][ggopool.Pool.go] like [`go`][ggopool.Pool.go], with "
        "[`Config`][ggopool.Config]; see `Nope` and ``code``."
    )
    assert missing == ["Nope"]
    # A full path to where a name is defined links to where the page renders it.
    defined = {
        "ggopool.gunicorn": SimpleNamespace(canonical_path="ggopool.gunicorn"),
        "ggopool.gunicorn.Worker": SimpleNamespace(canonical_path="ggopool.gunicorn._w.Worker"),
    }
    text, missing = backticks.rewrite("`ggopool.gunicorn._w.Worker`", "ggopool", defined)
    assert (text, missing) == ("[`ggopool.gunicorn._w.Worker`][ggopool.gunicorn.Worker]", [])


def test_a_literal_block_becomes_a_fenced_python_block_left_as_it_is() -> None:
    backticks = load("backticks")
    text, missing = backticks.rewrite(
        "Example::\n\n    x = `go`\n    y = 1\n\nAfter.", "ggopool", {}
    )
    assert text == "Example:\n\n```python\nx = `go`\ny = 1\n```\n\nAfter."
    assert missing == []


def test_the_home_page_points_the_readmes_links_at_the_site() -> None:
    hooks = load("hooks")
    assert (
        hooks.home_page(
            "[a](docs/guide.md#rules), [b](CHANGELOG.md), [c](NOTICE), [d](https://x.org/y.md), "
            "[e](#install)"
        )
        == "[a](guide.md#rules), [b](changelog.md), c, [d](https://x.org/y.md), [e](#install)"
    )
