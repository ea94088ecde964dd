"""A pool's counts: the live ones the worker loop keeps, and the snapshot `Pool.stats` returns."""

from __future__ import annotations

from dataclasses import dataclass


class Counts:
    """Counters of the rarer outcomes, updated as they happen.

    Nothing here is touched for a task that simply runs: how many tasks finished is
    derived from the pool's other counts (see `Pool._running`), which keeps the worker
    loop free of per-task bookkeeping.

    They live in an object of their own, bound by each worker when it starts, so that a
    forked child can give its pools fresh counts while workers inherited from the parent
    keep updating the parent's copy, which nothing reads in the child.
    """

    __slots__ = (
        "cancelled",
        "cancelled_queued",
        "dropped",
        "failed",
        "rejected",
        "reporting",
        "skipped",
    )

    def __init__(self) -> None:
        self.failed = 0  # tasks that raised
        self.skipped = 0  # cancelled entries a worker took off the queue and did not run
        self.cancelled = 0  # tasks cancelled before they started
        self.cancelled_queued = 0  # cancelled entries still on the queue
        self.dropped = 0  # entries removed from the queue by Pool.kill
        self.rejected = 0  # go/submit refused: closed, full, or try_go with no room
        # Workers reporting a failed task (its panic handler, or the hub's handle_error,
        # may yield): the task is done and counted failed, so it no longer counts as
        # running, and completed, derived from running, never goes down meanwhile.
        self.reporting = 0


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's counts, from `Pool.stats`.

    ``submitted == completed + failed + cancelled + running + pending`` always holds, even
    while a panic handler runs, and ``submitted``, ``completed``, ``failed``, ``cancelled``
    and ``rejected`` never go down. A task whose failure is being reported (its panic
    handler may yield) counts as failed and no longer as running.
    ``completed`` counts tasks that returned (a task killed while running counts here, as
    a killed ``gevent.Greenlet`` is successful); ``failed`` those that raised.
    """

    name: str
    cap: int
    workers: int  # live worker greenlets, running or parked
    idle: int  # of those, parked on the free list
    running: int  # tasks started and not finished (a failed one being reported is finished)
    pending: int  # tasks queued, not started, not cancelled
    submitted: int  # tasks accepted by go, ctx_go, submit or try_go
    completed: int
    failed: int
    cancelled: int
    rejected: int  # calls refused with PoolClosed or PoolFull, or try_go returning False
