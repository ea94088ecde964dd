"""The bench's progress line on stderr: which step of how many, and what it is running."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts the bench's steps and shows the current one on ``stream``.

    On a terminal one line is redrawn in place; anywhere else (a pipe, a CI log) each step
    is a line of its own, so a log shows where a slow or stuck run was.
    """

    def __init__(self, total: int, stream: TextIO | None = None, *, done: int = 0) -> None:
        self.total = total
        self.done = done
        self.stream = sys.stderr if stream is None else stream
        self._tty = self.stream.isatty()
        self._start = time.monotonic()

    def step(self, what: str) -> None:
        """Note that the step ``what`` is starting."""
        self.done += 1
        width = len(str(self.total))
        line = (
            f"bench [{self.done:>{width}}/{self.total}] "
            f"{time.monotonic() - self._start:6.1f}s  {what}"
        )
        if self._tty:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the redrawn line, if there is one."""
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
