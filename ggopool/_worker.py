"""The worker loop: what a worker greenlet does between waking and parking."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenlet import GreenletExit, getcurrent
from greenlet import greenlet as Greenlet

from ggopool._panic import report_failure

if TYPE_CHECKING:
    from ggopool._pool import Pool


#: Why a parked worker was switched back to: a task for it, or leave (already uncounted).
WORK, RETIRE, EXPIRE = "work", "retire", "expire"


def work(pool: Pool, generation: int) -> None:
    """The body of a worker greenlet (its parent is the hub, as with ``gevent.spawn_raw``).

    Whoever started the worker counted it in ``pool._workers``; it uncounts itself on
    every way out. ``generation`` is the pool's when the worker was started; it changes
    only in a forked child, where a worker inherited from the parent (even one whose start
    was still pending at the fork) sees it differ and leaves without touching the child's
    pool.
    """
    if pool._generation != generation:
        return
    me = getcurrent()
    pool._starting -= 1
    try:
        if pool._workers > pool._cap:
            # Started before set_cap lowered the cap: leave before taking any task.
            pool._workers -= 1
            return
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
    # Only a bounded pool (max_pending) has a slot to give back as a task leaves its
    # queue; the others take a task's first slot with a plain popleft and pay nothing.
    slots = pool._slots
    take = popleft if slots is None else _giving_back_a_slot(slots.release, popleft)
    counts = pool._counts
    while True:
        # Runs until the queue is empty, then parks on the pool's free list.
        while tasks:
            # The four slots of one task (see _entry.py).
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


def _giving_back_a_slot(
    release: Callable[[], object], popleft: Callable[[], Any]
) -> Callable[[], Any]:
    def take() -> Any:
        release()  # may wake a greenlet waiting in go() for a slot
        return popleft()

    return take


def _park(pool: Pool, generation: int) -> bool:
    """Wait on the free list until woken. True: woken for work. False: uncounted, exit."""
    if pool._generation != generation:
        return False  # inherited across a fork: the child's pool is not ours to touch
    timeout = pool._idle_timeout
    if timeout == 0 or pool._closed:
        pool._workers -= 1
        return False
    me = getcurrent()
    pool._parked.append(me)
    if pool._quiet is not None:
        pool._check_quiet()  # this worker no longer counts as running: maybe nothing does
    hub = pool._hub
    timer = None
    if timeout is not None:
        # Not ref'd: a parked worker must not keep gevent.wait() or the loop running.
        timer = hub.loop.timer(timeout, ref=False)
        timer.start(_expire, pool, me, generation)
    try:
        why = hub.switch()
    except GreenletExit:
        # Killed while parked. Become an awake worker again before work() uncounts it.
        if pool._generation == generation:
            if me in pool._parked:
                pool._parked.remove(me)
            else:
                pool._starting -= 1  # a wake-up was on its way
        raise
    finally:
        if timer is not None:
            timer.close()
    if pool._generation != generation:
        return False  # woken by a callback scheduled before a fork, now in the child
    if why is WORK:
        pool._starting -= 1
        if pool._workers > pool._cap:
            # Woken just before set_cap lowered the cap: leave rather than start a task
            # above it (work() gets the queue another worker if none is awake).
            pool._workers -= 1
            return False
        return True
    # RETIRE (set_cap, close, or a fork) or EXPIRE: already uncounted by whoever sent it.
    return False


def _expire(pool: Pool, worker: Greenlet, generation: int) -> None:
    """The idle timer of a parked worker (runs in the hub)."""
    if pool._generation != generation or worker not in pool._parked:
        return  # woken for work (or retired) just as the timer fired
    pool._parked.remove(worker)
    pool._workers -= 1
    worker.switch(EXPIRE)
