"""The worker loop: what a worker greenlet does between waking and parking.

A worker's place in its pool's counts is its ``state``, and the counts follow the state:

* ``STARTING``: counted in ``_workers`` and ``_starting`` (started, not yet in its loop);
* ``RUNNING``: counted in ``_workers`` (in its loop: inside a task, or about to park);
* ``LEAVING``: counted as ``RUNNING``; `Pool.kill` was aimed at its task, and it leaves
  after that task however the task ends (one that swallows the exit included);
* ``PARKED``: counted in ``_workers`` and on the free list ``_parked``;
* ``WAKING``: counted in ``_workers`` and ``_starting``, off the free list, a ``WORK``
  switch on its way;
* ``GONE``: uncounted.

Whoever changes a worker's state changes the counts with it, in the same step (the pool's
methods, or the worker itself). However a worker ends — it returns, it is killed, any
exception is thrown into it at any point — its ``finally`` hands it to
`Pool._worker_left`, which uncounts it by its state exactly once. No case per exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenlet import GreenletExit
from greenlet import greenlet as RawGreenlet

from ggopool._locals import clear_locals
from ggopool._panic import report_failure, report_worker_failure

if TYPE_CHECKING:
    from ggopool._pool import Pool

#: A worker's states (see the module docstring).
STARTING, RUNNING, LEAVING, PARKED, WAKING, GONE = (
    "starting",
    "running",
    "leaving",
    "parked",
    "waking",
    "gone",
)

#: What a parked worker is switched back with: a task for it, or leave (already uncounted).
WORK, RETIRE, EXPIRE = "work", "retire", "expire"


class Worker(RawGreenlet):
    """A worker greenlet: a raw greenlet (its parent is the hub) with its state."""

    __slots__ = ("state",)

    state: str


def work(pool: Pool, me: Worker, generation: int) -> None:
    """The body of a worker greenlet.

    `Pool._start_workers` makes the greenlet and switches into it in one step, after
    checking the pool's generation and queue, so nothing (a fork, a set_cap) can come
    between its start and this. ``generation`` is the pool's then; it changes only in a
    forked child (or when the pool's hub was destroyed), where a worker left over from
    before sees it differ and leaves without touching the pool.
    """
    try:
        pool._starting -= 1
        me.state = RUNNING
        instruments = pool._instruments  # once per worker, not per task
        if instruments is not None:
            instruments.worker_hook(pool, instruments.worker_started)
        _run(pool, me, generation)
    except GreenletExit:
        pass  # killed (gevent.kill, Pool.kill, greenlet.throw): the worker ends
    except BaseException as exc:  # noqa: BLE001 - thrown into the worker from outside a task
        # (a gevent.Timeout a finished task never cancelled, gevent.kill(worker, exc)):
        # report it as gevent reports a greenlet that dies of it, and end.
        if pool._generation == generation:
            report_worker_failure(pool, exc)
    finally:
        if pool._generation == generation:
            pool._worker_left(me)
            instruments = pool._instruments
            if instruments is not None:
                instruments.worker_hook(pool, instruments.worker_exited)


def _run(pool: Pool, me: Worker, generation: int) -> None:
    tasks = pool._tasks
    popleft = tasks.popleft
    # Only a bounded pool (max_pending) has a slot to give back as a task leaves its
    # queue; the others take a task's first slot with a plain popleft and pay nothing.
    slots = pool._slots
    take = popleft if slots is None else _giving_back_a_slot(slots.release, popleft)
    counts = pool._counts
    local_state = me.__dict__  # empty unless a task left greenlet-local state (_locals.py)
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
                counts.reporting += 1  # done: no longer running while its report runs
                try:
                    report_failure(pool, ctx, fn, args, kwargs, exc)
                finally:
                    counts.reporting -= 1
            if local_state:
                if me.state is LEAVING:
                    return  # a Pool.kill was aimed at this task, which has ended
                clear_locals(me)  # the next task starts with none, as in a new greenlet
            if pool._workers > pool._cap and pool._generation == generation:
                return  # the cap was lowered while this task ran: leave now that it is done
        # Don't keep the last task's callable, arguments and context alive while parked.
        ctx = fn = args = kwargs = None
        if not _park(pool, me, generation):
            return


def aim_kill(worker: Worker) -> None:
    """`Pool.kill` is aimed at the task ``worker`` runs: it leaves once that task ends,
    however it ends (counted as RUNNING until then: no count changes).

    The worker loop tests this only where it already tests ``me.__dict__`` after each task
    (for greenlet-local state), so a mark goes there too: reading ``me.state`` after every
    task instead cost 426 instructions per no-op task (callgrind, CPython 3.11.7: that
    attribute read on a greenlet subclass is not specialized). `_park` reads the state
    too, in case the task emptied ``getcurrent().__dict__``.
    """
    worker.state = LEAVING
    worker.__dict__[_LEAVING_MARK] = True


#: The mark `aim_kill` leaves in a worker's ``__dict__``.
_LEAVING_MARK = "ggopool_leaving"


def _giving_back_a_slot(
    release: Callable[[], object], popleft: Callable[[], Any]
) -> Callable[[], Any]:
    def take() -> Any:
        release()  # may wake a greenlet waiting in go() for a slot
        return popleft()

    return take


def _park(pool: Pool, me: Worker, generation: int) -> bool:
    """Wait on the free list until woken. True: woken for work. False: leave."""
    if pool._generation != generation:
        return False  # inherited across a fork: the child's pool is not ours to touch
    timeout = pool._idle_timeout
    parked = pool._parked
    if timeout == 0 or pool._closed or len(parked) >= pool._max_idle or me.state is LEAVING:
        return False  # leave instead of parking: work() uncounts this worker
    me.state = PARKED
    parked[me] = None
    if pool._quiet is not None:
        pool._check_quiet()  # this worker no longer counts as running: maybe nothing does
    hub = pool._hub
    timer = None
    if timeout is not None:
        # Not ref'd: a parked worker must not keep gevent.wait() or the loop running.
        timer = hub.loop.timer(timeout, ref=False)
        timer.start(_expire, pool, me, generation)
    try:
        while True:
            why = hub.switch()
            if pool._generation != generation:
                return False  # woken by a callback scheduled before a fork, now in the child
            state = me.state
            if state is WAKING and why is WORK:
                pool._starting -= 1
                me.state = RUNNING
                return True
            if state is GONE:
                return False  # retired (set_cap, close) or expired: already uncounted
            # A switch nobody in the pool sent (a callback a finished task left behind):
            # still parked, or a WORK switch still on its way. Keep waiting.
    finally:
        if timer is not None:
            timer.close()


def _expire(pool: Pool, worker: Worker, generation: int) -> None:
    """The idle timer of a parked worker (runs in the hub)."""
    if pool._generation != generation or worker.state is not PARKED:
        return  # woken for work (or retired) just as the timer fired
    pool._uncount_parked(worker)
    worker.switch(EXPIRE)
