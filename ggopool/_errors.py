"""The errors ggopool raises for misuse of a pool's state."""

from __future__ import annotations

import concurrent.futures

import gevent.pool


class PoolClosed(RuntimeError):
    """``go``/``submit`` on a pool after ``close()``: nothing new is accepted."""


class PoolFull(RuntimeError, gevent.pool.PoolFull):
    """The pool is full and the caller cannot wait.

    Raised by ``go``/``submit`` when the queue holds ``Config.max_pending`` tasks and
    they are called from the hub or from one of the pool's own workers (waiting there
    could deadlock; other greenlets wait for room instead), and by ``add``/``spawn``
    when the pool holds ``cap`` members and the caller may not wait. It is also a
    ``gevent.pool.PoolFull``, so code written for gevent's pool catches it.
    """


class TaskCancelled(concurrent.futures.CancelledError):
    """``get()`` of a task that was cancelled before it started; it never ran."""
