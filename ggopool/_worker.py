"""The worker loop: what a worker greenlet does between waking and parking.

A worker's place in its pool's counts is its ``state``, and the counts follow the state:

* ``STARTING``: counted in ``_workers`` and ``_starting`` (started, not yet in its loop);
* ``RUNNING``: counted in ``_workers`` (in its loop: inside a task, or about to park);
* ``LEAVING``: counted as ``RUNNING``; `Pool.kill` was aimed at its task, and it leaves
  after that task however the task ends (one that swallows the exit included);
* ``PARKED``: counted in ``_workers`` and on the free list ``_parked``;
* ``WAKING``: counted in ``_workers`` and ``_starting``, off the free list, a ``WORK``
  switch on its way;
* ``YIELDING``: counted in ``_workers`` and ``_starting``: between two tasks, letting the
  event loop run its timers and I/O (see `_let_the_loop_run`);
* ``GONE``: uncounted.

Whoever changes a worker's state changes the counts with it, in the same step (the pool's
methods, or the worker itself). However a worker ends — it returns, it is killed, any
exception is thrown into it at any point — its ``finally`` hands it to
`Pool._worker_left`, which uncounts it by its state exactly once. No case per exception.

A worker runs queued tasks one after the other without going back to the hub, so a backlog
of tasks that never yield would hold up every timer and socket until it is done. Every
`CHECK_EVERY` tasks, while tasks are still queued, the worker looks at the loop: if it has
not polled for I/O for gevent's switch interval (``gevent.getswitchinterval()``, 5 ms), the
worker waits for one turn of the loop before it takes the next task, as gevent's own loop
breaks out of a long run of callbacks after the same interval. Until the loop has polled,
every other worker of the pool that is woken waits too, before its first task (each is
woken by a callback of the same run, which the loop would not leave), and no new worker is
started. The waiting workers (and the start) are resumed one each turn of the loop: the
first may run tasks until the loop is overdue again, and the others, resumed in the same
turn, would then run theirs one after the other before the loop could poll.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import deque
from collections.abc import Callable
from contextvars import Context
from time import monotonic
from typing import TYPE_CHECKING, Any

from gevent import getswitchinterval
from greenlet import GreenletExit
from greenlet import greenlet as RawGreenlet

from ggopool._locals import clear_locals
from ggopool._panic import report_failure, report_worker_failure
from ggopool._stats import Counts
from ggopool._task import forget_frames, forget_frames_soon

if TYPE_CHECKING:
    from gevent.hub import Hub

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
YIELDING = "yielding"

#: What a parked worker is switched back with: a task for it, or leave (already uncounted).
WORK, RETIRE, EXPIRE = "work", "retire", "expire"

#: What a yielding worker is switched back with, once the loop has run.
RESUME = "resume"

#: How many tasks a worker runs between two looks at the loop. A look costs a clock read;
#: once per task it would cost more than the 2% of a no-op task this check may take.
CHECK_EVERY = 16

#: `LoopWatch.overdue` when no iteration of the loop is (no iteration count is negative).
NOT_OVERDUE = -1

#: Lower than any watcher's default priority: the loop runs its due timers and ready I/O
#: before it gives a yielding worker its turn back.
_AFTER_THE_OTHERS = -1


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
    except GreenletExit as exc:
        # Killed (gevent.kill, Pool.kill, greenlet.throw): the worker ends. A killed task
        # keeps the exit as its value: its frames must not keep it in a cycle.
        forget_frames(exc)
    except BaseException as exc:  # noqa: BLE001 - thrown into the worker from outside a task
        # (a gevent.Timeout a finished task never cancelled, gevent.kill(worker, exc)):
        # report it as gevent reports a greenlet that dies of it, and end.
        if pool._generation == generation:
            report_worker_failure(pool, exc)
    finally:
        if me.state is LEAVING:
            task_ended(me)  # the task Pool.kill was aimed at has ended: a blow must miss
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
    local_state = me.__dict__  # empty unless a task left greenlet-local state (_locals.py)
    loop = pool._hub.loop
    watch = pool._loop_watch
    # CHECK_EVERY tasks in a row, then a look at the loop: a for over a range costs no
    # more per task than the while's own check (a countdown cost 3% of a no-op task).
    in_a_row = range(CHECK_EVERY)
    while True:
        # Runs until the queue is empty, then parks on the pool's free list.
        if (
            watch.overdue != NOT_OVERDUE  # cheaper than the loop's iteration, read below
            and loop.iteration == watch.overdue
            and tasks
            and not _let_the_loop_run(pool, me, generation, watch)
        ):
            return  # woken while the loop was overdue, and the cap was lowered meanwhile
        while tasks:
            for _ in in_a_row:
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
                    _task_failed(pool, me, ctx, fn, args, kwargs, exc)
                if local_state:
                    if me.state is LEAVING:
                        return  # a Pool.kill was aimed at this task, which has ended
                    clear_locals(me)  # the next task starts with none, as in a new greenlet
                if pool._workers > pool._cap and pool._generation == generation:
                    return  # the cap was lowered while this task ran: leave now it is done
                if not tasks:
                    break
            else:
                # CHECK_EVERY tasks in a row, and more queued.
                if not _look_at_the_loop(pool, me, generation, loop, watch):
                    return  # it waited for the loop, and the cap was lowered meanwhile
        # Don't keep the last task's callable, arguments and context alive while parked.
        ctx = fn = args = kwargs = None
        if watch.turns:
            _no_more_turns(pool, watch)
        if not _park(pool, me, generation):
            return


def _task_failed(
    pool: Pool,
    me: Worker,
    ctx: Context,
    fn: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: BaseException,
) -> None:
    """Count and report a task that raised. Out of the worker loop: code there costs
    every task (the loop's bytecode grows), and only a failure runs this."""
    # Its report may yield (a panic handler that logs over the network): a kill's blow
    # must miss it, whether the kill came before (the task ended) or comes meanwhile.
    marks = me.__dict__
    marks[_LEAVING_MARK] = _TASK_ENDED if me.state is LEAVING else _REPORTING
    # A worker inherited across a fork (or from a destroyed hub) is not the pool's any
    # more: it reports its task's failure, but the counts are the new pool's.
    counts = pool._counts if me in pool._greenlets else Counts()
    counts.failed += 1
    counts.reporting += 1  # done: no longer running while its report runs
    try:
        report_failure(pool, ctx, fn, args, kwargs, exc)
    finally:
        counts.reporting -= 1
        if marks.get(_LEAVING_MARK) is _REPORTING:
            del marks[_LEAVING_MARK]
        # Reported: whoever keeps it (a Task) must keep no cycle with it. Once this worker
        # has gone on (or left: its loop's frame still holds the task then).
        forget_frames_soon(exc, pool._hub.loop)


def aim_kill(worker: Worker) -> bool:
    """`Pool.kill` is aimed at the task ``worker`` runs: it leaves once that task ends,
    however it ends (counted as RUNNING until then: no count changes). True if the worker
    is inside that task; False if the task has ended and the worker reports its failure,
    where no blow may land (it leaves after the report).

    The worker loop tests this only where it already tests ``me.__dict__`` after each task
    (for greenlet-local state), so a mark goes there too: reading ``me.state`` after every
    task instead cost 426 instructions per no-op task (callgrind, CPython 3.11.7: that
    attribute read on a greenlet subclass is not specialized). `_park` reads the state
    too, in case the task emptied ``getcurrent().__dict__``.
    """
    marks = worker.__dict__
    mark = marks.get(_LEAVING_MARK)
    in_task = mark is None or mark is True  # not reporting an ended task's failure
    worker.state = LEAVING
    marks[_LEAVING_MARK] = True if in_task else _TASK_ENDED
    return in_task


#: The mark `aim_kill` leaves in a worker's ``__dict__``.
_LEAVING_MARK = "ggopool_leaving"


def task_ended(worker: Worker) -> None:
    """The task a kill was aimed at (`aim_kill`) has ended: the worker only leaves now
    (reporting the task's failure first, perhaps), and a blow still on its way misses."""
    worker.__dict__[_LEAVING_MARK] = _TASK_ENDED


def in_aimed_task(worker: Worker) -> bool:
    """Whether ``worker`` still runs the task `aim_kill` was aimed at."""
    return worker.__dict__.get(_LEAVING_MARK) is True


#: `_LEAVING_MARK`'s value once the aimed-at task has ended.
_TASK_ENDED = "task ended"
#: `_LEAVING_MARK`'s value while a worker not aimed at reports its task's failure.
_REPORTING = "reporting"


class LoopWatch:
    """What the workers on one hub last saw of its loop, and what waits for its next turn
    (one per hub: every pool on it lets the same loop run)."""

    __slots__ = ("overdue", "seen", "since", "starts_seen", "starts_since", "timer", "turns")

    def __init__(self) -> None:
        self.seen = -1  # the loop's iteration count at the last look
        self.since = 0.0  # when (time.monotonic) a look first saw that count
        # The iteration a worker found overdue; NOT_OVERDUE once the loop has run since
        # (`_next_turn`), so that a worker woken for a task need not read the loop's
        # iteration (a property that cost 495 instructions of a 35,500 wake-up).
        self.overdue = NOT_OVERDUE
        # The calls waiting for a later turn (`at_a_later_turn`), and the timer that
        # makes the next one when that turn comes.
        self.turns: deque[tuple[Pool, Callable[[Any], object], Any]] = deque()
        self.timer: Any = None
        # The same as seen and since, for the starts of workers (`starts_overdue`).
        self.starts_seen = -1
        self.starts_since = 0.0


_watches: weakref.WeakKeyDictionary[Hub, LoopWatch] = weakref.WeakKeyDictionary()


def loop_watch(hub: Hub) -> LoopWatch:
    """The `LoopWatch` of ``hub``'s loop."""
    watch = _watches.get(hub)
    if watch is None:
        watch = _watches[hub] = LoopWatch()
    return watch


def _look_at_the_loop(pool: Pool, me: Worker, generation: int, loop: Any, watch: LoopWatch) -> bool:
    """Between two tasks, with more queued: if the loop has not polled for I/O for the
    switch interval, wait for it to (see the module docstring). False if the worker must
    leave now (see `_let_the_loop_run`)."""
    if found_overdue(loop, watch):
        return _let_the_loop_run(pool, me, generation, watch)
    return True


def found_overdue(loop: Any, watch: LoopWatch) -> bool:
    """Whether ``loop`` has not polled for I/O for gevent's switch interval, by what the
    workers on its hub saw of it; if so, marked overdue in ``watch`` until it has."""
    iteration = loop.iteration
    if iteration != watch.seen:
        watch.seen = iteration  # it polled since the last look: count from now
        watch.since = monotonic()
    elif monotonic() - watch.since >= getswitchinterval():
        watch.overdue = iteration
        return True
    return False


#: Past this many callbacks queued in the loop, a start does not count them again to see
#: whether its task queued any (`callbacks_queued`): gevent's default loop counts its queue
#: one by one (27 ns each here). A burst of tasks that yield once keeps about as many queued
#: as it has workers (a few hundred for 100,000 tasks); a loop with more than this queued is
#: so busy that the next start waits behind them all, as it does behind a task's own.
LONG_QUEUE = 4096


def callbacks_queued(loop: Any) -> int:
    """How many callbacks ``loop`` has queued; -1 if it cannot tell. (The queue is gevent's,
    private: both of its loops have one.)"""
    callbacks = getattr(loop, "_callbacks", None)
    return -1 if callbacks is None else len(callbacks)


def starts_overdue(loop: Any, watch: LoopWatch) -> bool:
    """Whether the pools on ``loop``'s hub have been starting workers for gevent's switch
    interval since the loop last polled for I/O (see `Pool._start_workers`). Apart from
    `found_overdue`: a worker woken for a task that blocks need not wait for the loop."""
    iteration = loop.iteration
    if iteration != watch.starts_seen:
        watch.starts_seen = iteration
        watch.starts_since = monotonic()
        return False
    return monotonic() - watch.starts_since >= getswitchinterval()


def _let_the_loop_run(pool: Pool, me: Worker, generation: int, watch: LoopWatch) -> bool:
    """Wait for a later turn of the loop: its due timers, ready I/O and queued callbacks
    run first. The worker is not inside a task meanwhile: `Pool._running` does not count
    it. False if the worker must leave now (the cap was lowered meanwhile)."""
    hub = pool._hub
    me.state = YIELDING
    pool._starting += 1
    turn: tuple[Pool, Callable[[Any], object], object] | None = (pool, me.switch, RESUME)
    try:
        at_a_later_turn(hub, pool, me.switch, RESUME)
        while hub.switch() is not RESUME:
            pass  # a switch nobody in the pool sent (see _park): keep waiting
        turn = None
    finally:
        if turn is not None:
            with contextlib.suppress(ValueError):
                watch.turns.remove(turn)  # ended while it waited: it will not be resumed
        if me.state is YIELDING and pool._generation == generation:
            # After an exception work() uncounts this worker by its state: RUNNING. After
            # a fork the child's pool is not ours to touch.
            me.state = RUNNING
            pool._starting -= 1
    if me.state is GONE:
        return False  # retired while it waited (set_cap): already uncounted
    iteration = hub.loop.iteration
    if iteration != watch.seen:
        watch.seen = iteration  # the loop has just polled: count from now
        watch.since = monotonic()
    return pool._workers <= pool._cap or pool._generation != generation


def at_a_later_turn(hub: Hub, pool: Pool, fn: Callable[[Any], object], arg: object) -> None:
    """Call ``fn(arg)`` (for ``pool``) at a later turn of ``hub``'s loop, after its timers
    and I/O; one such call each turn, in the order they were asked for, or all of a pool's
    at once when its queue runs empty (`_no_more_turns`).

    One each turn: a worker resumed in a turn may run tasks until the loop is overdue
    again, and the others would then run theirs in the same turn, one after the other.
    """
    watch = loop_watch(hub)
    watch.turns.append((pool, fn, arg))
    if watch.timer is None:
        watch.timer = hub.loop.timer(0.0, priority=_AFTER_THE_OTHERS)
        watch.timer.start(_next_turn, watch)


def _no_more_turns(pool: Pool, watch: LoopWatch) -> None:
    """``pool``'s queue is empty: what of it waits for a turn (workers, a start) has no
    task to take, so it need not wait; it runs soon, in this run of callbacks, and parks,
    leaves or finds the queue empty."""
    mine = [turn for turn in watch.turns if turn[0] is pool]
    if not mine:
        return
    watch.turns = deque(turn for turn in watch.turns if turn[0] is not pool)
    run_callback = pool._hub.loop.run_callback
    for _, fn, arg in mine:
        run_callback(fn, arg)


def _next_turn(watch: LoopWatch) -> None:
    """The loop's turn has come: call the first of `at_a_later_turn`'s calls (a timer
    callback in the hub)."""
    turns = watch.turns
    timer = watch.timer
    if timer is not None and timer.loop.iteration != watch.overdue:
        # The loop has polled since: nothing is overdue. (Not if a worker found this very
        # iteration overdue, before this timer's turn: that one waits for the next.)
        watch.overdue = NOT_OVERDUE
    if not turns or timer is None:
        watch.timer = None
        return
    _, fn, arg = turns.popleft()
    if turns:
        timer.start(_next_turn, watch)  # due at the next turn, not this one
    else:
        watch.timer = None
    fn(arg)


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
    hub = pool._hub
    if timeout is None:
        parked[me] = 0.0
    else:
        # When it parked, by the loop's clock: `_expire_idle` makes it leave at that time
        # plus idle_timeout. One timer per pool, not one per park: making, starting and
        # closing a timer each time cost a trickle of tasks (each wakes a parked worker)
        # 8% more instructions per task (callgrind: 41,676 against 38,196).
        now = parked[me] = hub.loop.now()
        if pool._idle_timer is None:
            _expire_idle_at(pool, now + timeout, generation)
    if pool._quiet is not None:
        pool._check_quiet()  # this worker no longer counts as running: maybe nothing does
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


#: A parked worker due to leave within this many seconds of the idle timer's firing leaves
#: with the ones due then, rather than the timer being started again for so short a wait.
_IDLE_SLACK = 0.001


def _expire_idle_at(pool: Pool, when: float, generation: int) -> None:
    """Start the pool's idle timer, due at ``when`` (the loop's clock). Not ref'd: parked
    workers must not keep ``gevent.wait()`` or the loop running."""
    loop = pool._hub.loop
    timer = pool._idle_timer = loop.timer(max(0.0, when - loop.now()), ref=False)
    timer.start(_expire_idle, pool, generation)


def _expire_idle(pool: Pool, generation: int) -> None:
    """The pool's idle timer (runs in the hub): the workers parked for ``idle_timeout``
    leave, longest parked first (the free list is in the order they parked), and the
    timer is started again for the next one due, if any is parked."""
    if pool._generation != generation:
        return  # the parent's timer, in a forked child: the child's pool starts its own
    timer, pool._idle_timer = pool._idle_timer, None
    if timer is not None:
        timer.close()
    timeout = pool._idle_timeout
    assert timeout is not None  # no timer is started without one
    now = pool._hub.loop.now()
    due = []
    for worker, since in pool._parked.items():
        if since + timeout > now + _IDLE_SLACK:
            _expire_idle_at(pool, since + timeout, generation)
            break
        due.append(worker)
    # Uncounted first, all of them: a worker that leaves may wake others for queued tasks,
    # and those must be ones that stay.
    for worker in due:
        pool._uncount_parked(worker)
    for worker in due:
        worker.switch(EXPIRE)
