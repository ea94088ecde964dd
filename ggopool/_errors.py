"""The errors ggopool raises for misuse of a pool's state."""

from __future__ import annotations

import concurrent.futures


class PoolClosed(RuntimeError):
    """``go``/``submit`` on a pool after ``close()``: nothing new is accepted."""


class PoolFull(RuntimeError):
    """The pool's queue holds ``Config.max_pending`` tasks and the caller cannot wait.

    Raised by ``go``/``submit`` when called from the hub or from one of the pool's own
    workers (waiting there could deadlock); other greenlets wait for room instead.
    """


class TaskCancelled(concurrent.futures.CancelledError):
    """``get()`` of a task that was cancelled before it started; it never ran."""
