"""Every ```python block in README.md and docs/*.md runs, so no snippet can rot.

The rule for whoever writes them: a block fenced with ```python is a whole program. The test
runs each one as it stands, in a fresh interpreter, in an empty directory, with the repository
importable (so ``import ggopool`` and ``from loadtests.app import ...`` work), and fails if it
exits non-zero or runs longer than `SNIPPET_TIMEOUT` seconds.

A block that is deliberately a fragment (it uses names it does not define, say) is marked
by an HTML comment, which GitHub does not show, on the last non-blank line before its opening
fence, at any indentation:

    <!-- not-run: uses send_webhook and order_id, defined by the application -->
    ```python
    ggopool.go(send_webhook, order_id)
    ```

The reason after ``not-run:`` is required. A marker that is not directly followed by a
```python block fails the test, so markers cannot drift away from their blocks. Blocks in
other languages (```sh, ```text, bare ```) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).absolute().parents[1]
SNIPPET_TIMEOUT = 30.0

MARKER = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->\s*$")
LOOSE_MARKER = re.compile(r"<!--\s*not-run\b")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`\s]*)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    info: str
    code: str
    not_run: str | None  # the reason, for a marked fragment

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of ``path``, and the problems found with its not-run markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    pending: tuple[int, str] | None = None  # a marker waiting for its block
    i = 0
    while i < len(lines):
        text = lines[i]
        fence = FENCE.match(text)
        if fence:
            indent, info = fence.group("indent"), fence.group("info")
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                line = lines[i]
                body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
                i += 1
            start = i - len(body)  # the fence's 1-based line number
            reason = None
            if pending is not None:
                if info == "python":
                    reason = pending[1]
                else:
                    problems.append(f"line {pending[0]}: not-run marker before a ```{info} block")
                pending = None
            blocks.append(Block(path, start, info, "\n".join(body) + "\n", reason))
        elif text.strip():
            if pending is not None:
                problems.append(f"line {pending[0]}: not-run marker not followed by a block")
                pending = None
            marker = MARKER.match(text)
            if marker:
                pending = (i + 1, marker.group("reason"))
            elif LOOSE_MARKER.search(text):
                problems.append(f"line {i + 1}: a not-run marker needs a reason: {text.strip()}")
        i += 1
    if pending is not None:
        problems.append(f"line {pending[0]}: not-run marker at the end of the file")
    return blocks, problems


def python_blocks() -> list[Block]:
    return [b for path in doc_files() for b in parse(path)[0] if b.info == "python"]


def runnable() -> list[pytest.ParameterSet]:
    return [pytest.param(b, id=b.where) for b in python_blocks() if b.not_run is None]


def test_every_python_block_is_found_and_every_marker_belongs_to_one() -> None:
    for path in doc_files():
        blocks, problems = parse(path)
        assert problems == [], f"{path.name}: {problems}"
        opened = sum(
            1
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip().startswith("```python")
        )
        assert len([b for b in blocks if b.info == "python"]) == opened, path.name
    assert python_blocks(), "README.md has no ```python block: the parser is broken"


@pytest.mark.parametrize("block", runnable())
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(block.code, encoding="utf-8")
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=SNIPPET_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where}: still running after {SNIPPET_TIMEOUT} s:\n{block.code}")
    assert proc.returncode == 0, (
        f"{block.where} exited with {proc.returncode} (mark a deliberate fragment with "
        f"<!-- not-run: reason -->):\n{block.code}\n--- stderr:\n{proc.stderr}"
    )


def test_parse_reads_markers_indented_blocks_and_reports_stray_markers(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- not-run: a fragment -->\n"
        "```python\n"
        "fragment()\n"
        "```\n"
        "- a list item:\n"
        "\n"
        "  ```python\n"
        "  if True:\n"
        "      print(1)\n"
        "  ```\n"
        "<!-- not-run: before a shell block -->\n"
        "```sh\n"
        "ls\n"
        "```\n"
        "<!-- not-run: followed by text -->\n"
        "text\n"
        "<!-- not-run -->\n",
        encoding="utf-8",
    )
    blocks, problems = parse(doc)
    assert [(b.line, b.info, b.code, b.not_run) for b in blocks] == [
        (2, "python", "fragment()\n", "a fragment"),
        (7, "python", "if True:\n    print(1)\n", None),
        (12, "sh", "ls\n", None),
    ]
    assert problems == [
        "line 11: not-run marker before a ```sh block",
        "line 15: not-run marker not followed by a block",
        "line 17: a not-run marker needs a reason: <!-- not-run -->",
    ]
