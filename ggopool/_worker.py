"""The worker loop: what a worker greenlet does between waking and parking."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenlet import GreenletExit, getcurrent

from ggopool._panic import report_failure

if TYPE_CHECKING:
    from ggopool._pool import Pool


def work(pool: Pool) -> None:
    """The body of a worker greenlet (its parent is the hub, as with ``gevent.spawn_raw``).

    Whoever started the worker counted it in ``pool._workers``; it uncounts itself on
    every way out. ``generation`` changes only in a forked child: a worker inherited from
    the parent then sees it differ and leaves without touching the child's pool.
    """
    me = getcurrent()
    generation = pool._generation
    pool._starting -= 1
    try:
        _run(pool, generation)
    except GreenletExit:
        # Someone killed this worker (gevent.kill, greenlet.throw, Pool.kill).
        if pool._generation == generation:
            pool._workers -= 1
    finally:
        if pool._generation == generation:
            pool._worker_left(me)


def _run(pool: Pool, generation: int) -> None:
    tasks = pool._tasks
    popleft = tasks.popleft
    # Only a pool with max_pending has greenlets to wake when a task leaves its queue; the
    # others take the first slot with a plain popleft and pay nothing for the feature.
    take = popleft if pool._max_pending is None else _making_room(pool, popleft)
    counts = pool._counts
    while True:
        # Runs until the queue is empty, then parks on the pool's free list.
        while tasks:
            # The four slots of one task (see SLOTS in _pool.py).
            ctx = take()
            fn = popleft()
            args = popleft()
            kwargs = popleft()
            try:
                ctx.run(fn, *args, **kwargs)
            except GreenletExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - no task may end its worker
                counts.failed += 1
                report_failure(pool, ctx, fn, exc)
            if pool._workers > pool._cap and pool._generation == generation:
                # The cap was lowered while this task ran: leave now that it is done.
                pool._workers -= 1
                return
        # Don't keep the last task's callable, arguments and context alive while parked.
        ctx = fn = args = kwargs = None
        if not _park(pool, generation):
            return


def _making_room(pool: Pool, popleft: Callable[[], Any]) -> Callable[[], Any]:
    def take() -> Any:
        # One task's worth of room is made: wake a greenlet waiting in go() for it.
        if pool._blocked:
            pool._room.release()
        return popleft()

    return take


def _park(pool: Pool, generation: int) -> bool:
    """Wait on the free list for a wake-up. True: woken for work. False: uncounted, exit."""
    if pool._generation != generation:
        return False  # inherited across a fork: the child's pool is not ours to touch
    timeout = pool._idle_timeout
    if timeout == 0 or pool._closed:
        pool._workers -= 1
        return False
    wakeups = pool._wakeups
    pool._idle += 1
    if pool._quiet is not None:
        pool._check_quiet()  # this worker no longer counts as running: maybe nothing does
    try:
        woken = wakeups.acquire(timeout=timeout)
    except GreenletExit:
        # Killed while parked. Become an awake worker again before work() uncounts it:
        # either a waker already counted it awake (a wake-up is waiting; take it) or it
        # is still counted idle.
        if pool._generation == generation:
            if not wakeups.acquire(blocking=False):
                pool._idle -= 1
            elif pool._retiring:
                pool._retiring -= 1
                pool._workers += 1  # already uncounted by _retire_parked
            else:
                pool._starting -= 1
        raise
    if pool._generation != generation:
        return False
    if not woken:
        # Timed out. A wake-up granted just as the timer fired is still this worker's
        # to take (any parked worker may take any wake-up); otherwise it leaves.
        woken = wakeups.acquire(blocking=False)
        if not woken:
            pool._idle -= 1
            pool._workers -= 1
            return False
    if pool._retiring:
        # set_cap or close granted this wake-up to retire a parked worker; it has
        # already been uncounted.
        pool._retiring -= 1
        return False
    pool._starting -= 1
    return True
