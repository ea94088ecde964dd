"""The worker loop: what a worker greenlet does between waking and parking."""

from __future__ import annotations

from typing import TYPE_CHECKING

from greenlet import GreenletExit

from ggopool._panic import report_failure

if TYPE_CHECKING:
    from ggopool._pool import Pool


def work(pool: Pool) -> None:
    """The body of a worker greenlet (its parent is the hub, as with ``gevent.spawn_raw``).

    Accounting: the worker was counted in ``pool._workers`` by whoever started it, and it
    uncounts itself on every way out.
    """
    try:
        _run(pool)
    except GreenletExit:
        # Someone killed this worker (gevent.kill, greenlet.throw). It ends, and if tasks
        # are waiting the spawn rule gets another worker onto them.
        pool._workers -= 1
        if pool._tasks and pool._should_add_worker():
            pool._add_worker()


def _run(pool: Pool) -> None:
    tasks = pool._tasks
    popleft = tasks.popleft
    while True:
        # Runs until the queue is empty, then parks on the pool's free list.
        while tasks:
            ctx, fn, args, kwargs = popleft()
            try:
                ctx.run(fn, *args, **kwargs)
            except GreenletExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - no task may end its worker
                report_failure(pool, ctx, fn, exc)
            if pool._workers > pool._cap:
                # The cap was lowered while this task ran: leave now that it is done.
                pool._workers -= 1
                if tasks and pool._should_add_worker():
                    pool._add_worker()
                return
        # Don't keep the last task's callable, arguments and context alive while parked.
        ctx = fn = args = kwargs = None  # type: ignore[assignment]
        if not _park(pool):
            return


def _park(pool: Pool) -> bool:
    """Wait on the free list for a wake-up. True: woken for work. False: uncounted, exit."""
    timeout = pool._idle_timeout
    if timeout == 0:
        pool._workers -= 1
        return False
    wakeups = pool._wakeups
    pool._idle += 1
    try:
        woken = wakeups.acquire(timeout=timeout)
    except GreenletExit:
        # Killed while parked. Become an awake worker again before the caller uncounts
        # it: either a waker already counted it awake (a wake-up is waiting; take it) or
        # it is still counted idle.
        if not wakeups.acquire(blocking=False):
            pool._idle -= 1
        elif pool._retiring:
            pool._retiring -= 1
            pool._workers += 1  # set_cap already uncounted it; work() uncounts it again
        raise
    if not woken:
        # Timed out. A wake-up granted just as the timer fired is still this worker's
        # to take (any parked worker may take any wake-up); otherwise it leaves.
        woken = wakeups.acquire(blocking=False)
        if not woken:
            pool._idle -= 1
            pool._workers -= 1
            return False
    if pool._retiring:
        # set_cap lowered the cap and granted this wake-up to retire a parked worker; it
        # has already been uncounted.
        pool._retiring -= 1
        return False
    return True
