"""The pool: its task list, its counts and gopool's rule for when one more worker runs."""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from gevent import Timeout, get_hub, spawn_raw
from gevent.event import Event
from gevent.lock import Semaphore
from greenlet import GreenletExit, getcurrent

from ggopool._config import Config, check_int_at_least, check_timeout
from ggopool._entry import NO_KWARGS, SLOTS, Entry
from ggopool._errors import PoolClosed, PoolFull
from ggopool._gevent_pool import GeventPoolMixin
from ggopool._instrument import Instruments, InstrumentsMixin, dropped, notifications_held
from ggopool._panic import PanicHandler
from ggopool._stats import Counts, PoolStats
from ggopool._task import Task, as_exception, check_exception, is_task_runner
from ggopool._threads import allocate_lock
from ggopool._threads import get_ident as _get_ident
from ggopool._worker import (
    GONE,
    LEAVING,
    LONG_QUEUE,
    NOT_OVERDUE,
    PARKED,
    RETIRE,
    RUNNING,
    STARTING,
    WAKING,
    WORK,
    YIELDING,
    Worker,
    aim_kill,
    at_a_later_turn,
    callbacks_queued,
    in_aimed_task,
    loop_watch,
    starts_overdue,
    work,
)

if TYPE_CHECKING:
    from ggopool._group import TaskGroup

P = ParamSpec("P")
T = TypeVar("T")


#: No thread has this id: go() from every thread takes the general way in.
NO_THREAD = -1

#: Every pool alive, so a forked child can reset them (see _fork.py).
all_pools: weakref.WeakSet[Pool] = weakref.WeakSet()

# The process (its pid) whose exit drain has run: a task handed over from another thread
# after it would never run, so it raises PoolClosed instead. Checked and set under the
# lock, so that no hand-over slips in between the drain's last look and the refusal.
_hand_overs_refused_in: int | None = None
_hand_over_lock = allocate_lock()


def refuse_hand_overs() -> None:
    """From now on, in this process, a task handed over from another thread raises
    `PoolClosed` (the exit drain has run: the hub will not run again)."""
    global _hand_overs_refused_in
    with _hand_over_lock:
        _hand_overs_refused_in = os.getpid()
        pools = list(all_pools)
    # The threads already waiting in a pool's spawn() for room would wait forever.
    for pool in pools:
        pool._refuse_waiting_threads(_refused_at_exit(pool.name))


def _refused_at_exit(name: str) -> PoolClosed:
    return PoolClosed(
        f"pool {name!r} accepts no tasks from other threads: the interpreter is exiting "
        "and its exit drain has run"
    )


def _new_hand_over_lock() -> None:
    # In a forked child: another thread may have held it at the fork.
    global _hand_over_lock
    _hand_over_lock = allocate_lock()


#: Where a worker was when Pool.kill was called, which decides its blow (`_kill_worker`).
_OUTSIDE_TASK, _IN_TASK, _IN_REPORT = "outside a task", "in a task", "in a report"


def _kill_worker(worker: Worker, exception: object, where: str) -> None:
    """Pool.kill's blow to one worker (a loop callback in the hub), thrown once.

    ``where`` the worker was when kill was called. In a task: it was aimed then
    (`aim_kill`), and that task gets ``exception`` if it still runs; the worker leaves
    after it, however it ends, and a task queued after the kill is never hit. Reporting
    the failure of a task that had ended: the plain exit (the kill's exception belongs to
    a task, not to a panic handler), and the worker ends. Anywhere else (parked,
    starting, woken, yielding): the plain exit, reported nowhere; a worker woken since for
    a task queued after the kill runs it, then leaves.
    """
    if worker.dead:
        return
    if where is _IN_TASK:
        if in_aimed_task(worker):
            worker.throw(as_exception(exception))
    elif where is _IN_REPORT:
        worker.throw(GreenletExit)
    elif worker.state is RUNNING:
        aim_kill(worker)
    elif worker.state is not LEAVING:
        worker.throw(GreenletExit)


def _no_max_idle(max_idle: int | None) -> int:
    return sys.maxsize if max_idle is None else max_idle


def check_cap(cap: object) -> int:
    return check_int_at_least("cap", cap, 1)


class Pool(GeventPoolMixin, InstrumentsMixin):
    """A pool of reusable worker greenlets that run queued tasks, at most ``cap`` at once.

    Where an application writes ``gevent.spawn(fn, x)`` it writes ``pool.go(fn, x)``::

        pool = ggopool.new_pool("notify", 100)
        pool.go(send_webhook, order_id)

    Rules:

    * ``go()`` never blocks and never switches greenlets (unless ``Config.max_pending``
      is reached): the task is queued and starts after the caller yields, as with
      ``gevent.spawn``. Tasks start in FIFO order.
    * After each ``go()``, gopool's rule decides whether one more worker should run:
      ``(task_count() >= scale_threshold and awake < cap) or awake == 0``, where *awake*
      counts workers that are running a task or already woken. If so, a parked worker is
      woken, or, when none is parked, a new worker greenlet is started.
    * A worker runs tasks until the queue is empty, then parks on the pool's free list
      for ``Config.idle_timeout`` seconds waiting to be woken, then exits.
      ``worker_count()`` (running and parked) never exceeds ``cap``, except while workers
      that were running a task when ``set_cap`` lowered it finish that task.
    * A task runs in the caller's ``contextvars`` (copied when it is queued), so request
      ids and tracing spans survive, and what it sets never leaks into the next task.
    * An ``Exception`` from a ``go()`` task goes to the panic handler as
      ``handler(ctx, exc)``, or, with none set, to ``gevent.get_hub().handle_error``; the
      worker survives. KeyboardInterrupt, SystemExit and SystemError go to the hub,
      which raises them in the main greenlet. A worker killed with ``GreenletExit`` ends;
      another takes the queue.
    * Threads: a pool belongs to the thread that made it; its workers run on that
      thread's hub. ``go``, ``ctx_go``, ``submit``, ``try_go``, ``spawn`` and ``set_cap``
      (and a task's ``start_later``) from any other thread hand the call over to it
      (``loop.run_callback_threadsafe``); such a
      task is accepted when handed over, so a later ``close()`` or a full queue does not
      refuse it, and ``join()`` and ``stats()`` count it from then on. ``spawn`` on a pool
      that waits when full blocks the calling thread until there is room. After the drain
      at interpreter exit has run, a hand-over raises `PoolClosed`. The other methods
      belong to the pool's thread.
    * Fork: in a forked child every pool starts empty, with no workers, and works; what
      was queued (or waits in ``spawn_later``) stays with the parent (see
      docs/deploying.md, "fork").
    * A long backlog of tasks that never yield does not hold up the event loop: between
      two tasks a worker lets the loop run its timers and I/O once gevent's switch
      interval has passed since it last did, as gevent's loop does between greenlets.
    """

    # Every attribute a pool has (GeventPoolMixin adds the slot of its members).
    # Slots, not an instance dict: CPython reads a slot without a lookup however many
    # there are, where an instance dict stops sharing its keys past 29 attributes and
    # every read on go()'s path becomes a dict lookup (a 30th attribute cost a no-op task
    # 8,726 -> 9,202 instructions under callgrind; slots cost 0.5-1.4% fewer than the
    # shared-keys dict).
    __slots__ = (
        "__weakref__",
        "_awaiting",
        "_blocked",
        "_cap",
        "_closed",
        "_config",
        "_counts",
        "_exited",
        "_fast_ident",
        "_generation",
        "_greenlets",
        "_hub",
        "_ident",
        "_idle_timeout",
        "_idle_timer",
        "_inbox",
        "_instruments",
        "_later",
        "_loop_watch",
        "_max_idle",
        "_name",
        "_one_start_each",
        "_panic_handler",
        "_parked",
        "_quiet",
        "_slots",
        "_start_ones",
        "_starter_scheduled",
        "_starting",
        "_submitted",
        "_tasks",
        "_threshold_slots",
        "_threshold_slots_before",
        "_to_start",
        "_waiting_threads",
        "_workers",
    )

    def __init__(self, name: str, cap: int, config: Config | None = None) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        if not name:
            raise ValueError("name must be a non-empty str, got ''")
        check_cap(cap)
        if config is None:
            config = Config()
        elif not isinstance(config, Config):
            raise TypeError(f"config must be a ggopool.Config or None, got {config!r}")
        self._name = name
        self._cap = cap
        self._config = config
        self._threshold_slots = SLOTS * config.scale_threshold
        # The same threshold, against the queue's length before a task's slots are added.
        self._threshold_slots_before = self._threshold_slots - SLOTS
        self._idle_timeout = config.idle_timeout
        # None, or what add_instrument attached (_instrument.py). Kept across a fork.
        self._instruments: Instruments | None = None
        self._max_idle = _no_max_idle(config.max_idle)
        self._panic_handler: PanicHandler | None = None
        # The thread whose hub runs this pool's workers.
        self._ident = _get_ident()
        self._hub = get_hub()
        self._loop_watch = loop_watch(self._hub)  # what the workers saw of its loop
        self._reset()
        # The spawn_later tasks waiting for their time, with when it comes (monotonic):
        # accepted work that the drain waits for, not yet queued or counted. Kept across
        # a fork, whose reset cancels them (they run in the parent).
        self._later: dict[Task[Any], float] = {}
        all_pools.add(self)

    def _reset(self) -> None:
        """The state of a new pool; also what a forked child starts from."""
        self._tasks: deque[Any] = deque()  # SLOTS entries per task
        self._closed = False
        # Live workers, running or parked (gopool's worker count); the free list of parked
        # workers; and how many are awake (woken or to be started) but not yet in their
        # loop. Workers that are awake: _workers - len(_parked). Workers inside a task:
        # those minus _starting, because a worker in its loop yields only inside a task or
        # as YIELDING (see _running). Each worker's state says which count it (_worker.py).
        self._workers = 0
        # Insertion-ordered: a wake-up takes the most recently parked (popitem), so the
        # longest parked expire first when fewer are needed; any one leaves in O(1). Each
        # with when it parked (the loop's clock), for the pool's one idle timer, which runs
        # while a worker is parked and idle_timeout is set (_worker.py, _expire_idle).
        self._parked: dict[Worker, float] = {}
        timer = getattr(self, "_idle_timer", None)
        if timer is not None:
            timer.close()  # in a forked child: the parent's, for the parent's workers
        self._idle_timer: Any = None
        self._starting = 0
        # Workers counted but not started yet: no greenlet exists for them until the hub
        # runs _start_workers, and one that then finds the queue empty is never made.
        self._to_start = 0
        self._starter_scheduled = False
        # While the starts of a run have taken the switch interval and the loop has not
        # polled since: each start counted is a loop callback of its own (_start_one).
        self._one_start_each = False
        self._start_ones = 0  # _start_one callbacks pending
        self._greenlets: set[Worker] = set()
        # The gevent Semaphore that guards a bounded task list: its counter is the number
        # of free slots under max_pending. go() takes one (waiting cooperatively when
        # there is none) and a worker gives one back as it takes a task off the list.
        # An unbounded pool has none: under gevent the list itself needs no lock, as
        # nothing yields while it is touched. (As the channel that wakes parked workers
        # it cost more than gevent.spawn itself for one task at a time: see the README.)
        max_pending = self._config.max_pending
        self._slots = None if max_pending is None else Semaphore(max_pending)
        # go() takes its fast path only when called from this thread: the pool's own
        # thread while the pool is open, unbounded and has no instrument, NO_THREAD
        # otherwise. One comparison on the hot path serves threads, close(), max_pending
        # and instruments alike (see _route).
        self._fast_ident = NO_THREAD
        self._route()
        self._blocked = 0  # greenlets waiting in go()/submit() for a slot
        # Tasks handed over by other threads, not yet taken by the hub; and those taken
        # that wait for a slot of a bounded pool.
        self._inbox: deque[Entry] = deque()
        self._awaiting: list[list[Entry | None]] = []  # each waits in its own greenlet
        # Threads blocked in spawn() until their task is queued (the gevent surface's).
        self._waiting_threads: set[Any] = set()
        self._quiet: Event | None = None  # set when nothing is queued or running (join)
        self._exited: Event | None = None  # set when a worker ends (kill)
        self._submitted = 0
        self._counts = Counts()
        self._reset_members()
        self._generation = getattr(self, "_generation", 0) + 1

    def _route(self) -> None:
        """Choose go()'s way in: its fast path only from the pool's own thread while the pool
        is open, unbounded and has no instrument that watches tasks (NO_THREAD matches no
        thread). Called whenever one of these changes."""
        instruments = self._instruments
        quiet = instruments is None or not instruments.tasks
        fast = not self._closed and self._slots is None and quiet
        self._fast_ident = self._ident if fast else NO_THREAD

    def _after_fork_in_child(self) -> None:
        # The parent's queue stays the parent's: it runs there. Clear the child's copy of
        # it, so that a worker inherited mid-task finds nothing more to run here, and tell
        # the child's handles of those tasks that they will not run here. Wake the
        # inherited parked workers so that they see the new generation and exit. A closed
        # pool stays closed: that was the application's decision. The instruments hear of
        # the dropped tasks once the reset is complete (a hook may yield).
        with notifications_held(self):
            for fn in itertools.islice(self._tasks, 1, None, SLOTS):
                fn = dropped(fn)  # an instrument's entry: they hear of it
                if is_task_runner(fn, self):
                    fn.__self__._left_in_parent()
            for task in list(self._later):
                task._left_in_parent()  # spawn_later's: its timer was the parent's
            self._tasks.clear()
            parked = list(self._parked)
            closed = self._closed
            self._reset()
            if closed:
                self.close()
        loop = self._hub.loop
        if loop is None:
            return  # its hub was destroyed: its parked workers went with it
        for worker in parked:
            loop.run_callback(worker.switch, RETIRE)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (
            f"<ggopool.Pool {self._name!r} cap={self._cap} workers={self._workers} "
            f"idle={len(self._parked)} queued={len(self._tasks) // SLOTS}{state}>"
        )

    @property
    def name(self) -> str:
        """The pool's name, as given to `new_pool`; the key for `register_pool`."""
        return self._name

    @property
    def cap(self) -> int:
        """The most workers this pool runs at once (change it with `set_cap`)."""
        return self._cap

    @property
    def config(self) -> Config:
        """The pool's `Config`."""
        return self._config

    @property
    def closed(self) -> bool:
        """True once `close` (or leaving a ``with`` block) was called."""
        return self._closed

    def set_cap(self, cap: int) -> None:
        """Change the most workers this pool runs at once; it takes effect at once.

        Raising the cap wakes or starts workers for tasks already queued, as ``go()``
        would have had the cap been this high. Lowering it loses no task: parked workers
        above the new cap exit now, and running ones leave after their current task.
        A bad cap raises and leaves the cap as it was.
        """
        check_cap(cap)
        if _get_ident() != self._ident:
            self._hub.loop.run_callback_threadsafe(self.set_cap, cap)
            return
        self._cap = cap
        excess = self._workers - cap
        if excess > 0:
            # Workers not inside a task leave now, so that the counts say at once what
            # the new cap allows: parked ones first, then starts not yet made, then woken
            # ones whose wake-up is on its way. Running ones leave after their task.
            self._retire_idle(excess)
        else:
            queued = len(self._tasks) // SLOTS
            while queued and self._should_add_worker():
                self._add_worker()
                queued -= 1
        self._check_room()  # spawn() may wait for room, and a higher cap made some

    def set_panic_handler(self, handler: PanicHandler | None) -> None:
        """Send the ``Exception``s of this pool's ``go()`` tasks to ``handler(ctx, exc)``.

        ``ctx`` is the task's ``contextvars.Context`` and the handler runs inside it;
        ``exc`` keeps its ``__traceback__``. ``None`` restores the default, which reports
        through ``gevent.get_hub().handle_error``. A handler that raises is itself
        reported through the hub, and the worker goes on.
        """
        if handler is not None and not callable(handler):
            raise TypeError(f"panic handler must be callable or None, got {handler!r}")
        self._panic_handler = handler

    # -- queueing ----------------------------------------------------------------------

    def go(self, fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Queue ``fn(*args, **kwargs)`` to run on one of the pool's workers.

        The task runs in a copy of the caller's ``contextvars.Context``. ``go()`` never
        yields, unless ``Config.max_pending`` tasks are queued: then it waits for room,
        or raises `PoolFull` when called from the hub or from this pool's own workers.
        A non-callable ``fn`` raises TypeError; a closed pool raises `PoolClosed`; in
        both cases nothing is queued.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if _get_ident() != self._fast_ident:
            # Another thread, a bounded pool or a closed one: the general way in.
            self._queue((contextvars.copy_context(), fn, args, kwargs or NO_KWARGS))
            return
        tasks = self._tasks
        queued = len(tasks)
        tasks.extend((contextvars.copy_context(), fn, args, kwargs or NO_KWARGS))
        self._submitted += 1
        # gopool's spawn rule (see _should_add_worker), inlined: go() is the hot path.
        awake = self._workers - len(self._parked)
        if (queued >= self._threshold_slots_before and awake < self._cap) or awake == 0:
            self._add_worker()

    def ctx_go(
        self,
        ctx: contextvars.Context,
        fn: Callable[P, object],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        """Like `go`, but the task runs in a copy of ``ctx`` instead of the caller's context.

        The copy is taken now, so one ``ctx`` may be handed to many tasks that run at
        once, and nothing a task sets is seen by ``ctx`` or by the other tasks.
        """
        if not isinstance(ctx, contextvars.Context):
            raise TypeError(f"ctx must be a contextvars.Context, got {ctx!r}")
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        self._queue((ctx.copy(), fn, args, kwargs or NO_KWARGS))

    def try_go(self, fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Like `go`, but never waits: False (and nothing queued) if the queue is full.

        A closed pool still raises `PoolClosed`.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if _get_ident() != self._ident:
            self._hand_over((contextvars.copy_context(), fn, args, kwargs or NO_KWARGS))
            return True
        if self._closed:
            self._refuse_closed()
        if self._slots is not None:
            if not self._slots.acquire(blocking=False):
                self._counts.rejected += 1
                return False
            self._slots.release()  # _queue takes it again, without waiting
        self._queue((contextvars.copy_context(), fn, args, kwargs or NO_KWARGS))
        return True

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]:
        """Queue ``fn(*args, **kwargs)`` like `go` and return its `Task` handle.

        An exception from the task goes to whoever calls ``get()`` on the handle, not to
        the panic handler.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        ctx = contextvars.copy_context()
        task: Task[T] = Task(self, fn, args, kwargs, ctx)
        self._queue((ctx, task._run, (args, kwargs), NO_KWARGS))
        return task

    def _queue(self, task: Entry) -> None:
        """Queue a task: `go`'s fast path is this, inlined, for the common case."""
        if _get_ident() != self._ident:
            self._hand_over(task)
            return
        if self._closed or self._slots is not None:
            self._admit()
        self._push(task)

    def _push(self, task: Entry) -> None:
        """Append an admitted task and apply the spawn rule."""
        info = None
        instruments = self._instruments
        if instruments is not None and instruments.tasks:
            task = instruments.observe(self, task)  # the entry runs it between the hooks
            info = task[1]
        self._tasks.extend(task)
        self._submitted += 1
        if self._should_add_worker():
            self._add_worker()
        if info is not None:
            info._queued()  # type: ignore[attr-defined]  # a TaskInfo

    def _in_own_thread(self, fn: Callable[..., object], *args: Any) -> None:
        """``fn(*args)`` now if called from the pool's thread; else handed over to its hub,
        which runs it soon (its loop's timers and watchers belong to that thread)."""
        if _get_ident() == self._ident:
            fn(*args)
        else:
            self._hub.loop.run_callback_threadsafe(fn, *args)

    def _hand_over(self, task: Entry) -> None:
        """Queue a task from another thread on the pool's own hub thread."""
        if self._closed:
            self._refuse_closed()
        # deque.append is atomic, so threads may add to the inbox at once; until the hub
        # takes a task from it, join() and stats() count it as pending.
        with _hand_over_lock:
            self._refuse_after_exit_drain()
            self._inbox.append(task)
        self._hub.loop.run_callback_threadsafe(self._accept_handed_over)

    def _refuse_after_exit_drain(self) -> None:
        """Raise PoolClosed once the exit drain has run in this process (the hub will not
        run again). Called holding `_hand_over_lock`, so that no hand-over slips in between
        the drain's last look and the refusal."""
        if _hand_overs_refused_in == os.getpid():
            raise _refused_at_exit(self._name)

    @contextlib.contextmanager
    def _accepting_from_any_thread(self) -> Iterator[None]:
        """Around accepting work that the hub will start later (a ``spawn_later`` task):
        from another thread, refused with PoolClosed after the exit drain, as a hand-over
        is; what the block accepted is visible to the drain's last look."""
        if _get_ident() == self._ident:
            yield
            return
        with _hand_over_lock:
            self._refuse_after_exit_drain()
            yield

    def _accept_handed_over(self) -> None:
        # Runs in the hub.
        inbox = self._inbox
        while inbox:
            self._accept(inbox.popleft())

    def _accept(self, task: Entry) -> None:
        """Queue a task accepted before (handed over from another thread, or a
        ``spawn_later`` task whose time has come). Its caller was told it was accepted, so
        it is never refused now (not even by a close() since): in a bounded pool with no
        free slot, a greenlet waits for one on its behalf."""
        if self._slots is not None and not self._slots.acquire(blocking=False):
            waiting: list[Entry | None] = [task]
            self._awaiting.append(waiting)
            spawn_raw(self._admit_handed_over, waiting)
        else:
            self._push(task)

    def _admit_handed_over(self, waiting: list[Entry | None]) -> None:
        slots = self._slots
        assert slots is not None
        slots.acquire()
        task = waiting[0]
        if task is None:
            slots.release()  # Pool.kill cancelled it while it waited
            return
        self._awaiting.remove(waiting)
        self._push(task)

    def _admit(self) -> None:
        """For a bounded or closed pool: refuse, or take a free slot, waiting for one if
        need be."""
        if self._closed:
            self._refuse_closed()
        slots = self._slots
        assert slots is not None  # only a closed or bounded pool comes here
        if not slots.acquire(blocking=False):
            current = getcurrent()
            if current is self._hub or current in self._greenlets:
                self._counts.rejected += 1
                where = "the hub" if current is self._hub else "one of its own workers"
                raise PoolFull(
                    f"pool {self._name!r} is full: max_pending={self._config.max_pending} tasks "
                    f"are queued, and waiting for room from {where} could deadlock"
                )
            self._blocked += 1
            try:
                slots.acquire()
            finally:
                self._blocked -= 1
            if self._closed:
                slots.release()
                self._refuse_closed()

    def _refuse_closed(self) -> None:
        self._counts.rejected += 1
        raise PoolClosed(f"pool {self._name!r} is closed: it accepts no new tasks")

    # -- many tasks at once ------------------------------------------------------------

    def group(self, cancel_on_error: bool = False) -> TaskGroup:
        """An errgroup-like fan-out on this pool; see `TaskGroup`."""
        from ggopool._group import TaskGroup

        return TaskGroup(self, cancel_on_error)

    # -- lifecycle ---------------------------------------------------------------------

    def join(self, timeout: float | None = None, raise_error: bool = False) -> bool:
        """Wait until nothing is queued or running; False if ``timeout`` passed first.

        It also waits for the report of each failed task (its panic handler, which may
        yield), although `stats` counts such a task as failed, not running, from the moment
        it raised.

        With ``raise_error``, then raise the exception of one of the pool's members at the
        time of the call (see `spawn`) that failed, as gevent's ``join`` does.

        Called from one of the pool's own tasks, it waits for itself: as gevent's, it
        waits out ``timeout`` and returns False (``server.stop(timeout)`` in a handler
        waits so, then kills the connections); with no ``timeout`` it would wait forever,
        so it raises RuntimeError instead.
        """
        timeout = check_timeout(timeout)
        members = list(self._members) if raise_error else []
        started = time.monotonic()
        self._moved_from_a_destroyed_hub()
        if self._is_quiet():
            quiet = True
        elif timeout is None and getcurrent() in self._greenlets:
            raise RuntimeError(
                f"cannot join pool {self._name!r} from one of its own tasks without a "
                "timeout: it would wait for itself forever"
            )
        else:
            if self._quiet is None:
                self._quiet = Event()
            quiet = bool(self._quiet.wait(timeout))
        if quiet:
            # And the members `add` gave it, as gevent's join waits for its greenlets.
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            quiet = self._join_added_members(left)
        self._raise_member_error(members)
        return quiet

    def close(self) -> None:
        """Accept no new tasks; what is queued still runs, and so does a ``spawn_later``
        task accepted before, when its time comes. ``go``/``submit`` raise
        `PoolClosed` from now on. Parked workers exit now, the rest when the queue is
        empty. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._fast_ident = NO_THREAD
        self._retire_parked(len(self._parked))
        if self._slots is not None:
            for _ in range(self._blocked):
                self._slots.release()  # each waiter wakes, gives it back, raises PoolClosed

    def kill(
        self,
        timeout: float | None = None,
        *,
        exception: object = GreenletExit,
        block: bool = True,
    ) -> bool:
        """Kill every queued task and every worker. The pool stays open and usable.

        Queued tasks never run; a handle's outcome is ``exception``, as for a greenlet
        killed before it started (the default ``GreenletExit`` is its value). Running
        tasks get ``exception`` raised inside them, once, and each such worker ends when
        its task does, however the task ends: a task that catches the exit to clean up
        and returns (``except GreenletExit: cleanup(); return``) still ends its worker.
        Parked workers end with a plain ``GreenletExit``, reported nowhere, whatever
        ``exception`` is. A worker still running a task that survived an earlier kill is
        not hit again (as gevent's ``Group.kill`` does not hit a dying greenlet twice);
        `Task.kill` on that task is a new kill. Members added with `add` are killed with
        it too, as gevent's ``Pool.kill`` kills its greenlets.

        ``exception`` is an exception class or instance, as gevent's: anything else raises
        TypeError, and nothing is killed.

        With ``block``, waits up to ``timeout`` seconds for the workers (and the added
        members) to end; True if they all did. ``timeout`` comes first, for the callers
        of ``kill(timeout)``; ``exception`` and ``block`` are keywords.
        """
        timeout = check_timeout(timeout)
        if not isinstance(block, bool):
            raise TypeError(f"block must be a bool, got {block!r}")
        check_exception(exception)
        counts = self._counts
        tasks = self._tasks
        # Every part of the pool's state changes first, and the killed tasks are reported
        # last: a report may run a panic handler that yields, and whatever runs meanwhile
        # finds the queue empty and each killed task marked. The instruments are told
        # in between (they may yield too: an exporter that sends spans over the network).
        with notifications_held(self):
            queued = [dropped(fn) for fn in itertools.islice(tasks, 1, None, SLOTS)]
            tasks.clear()
            # Entries cancelled before are counted as cancelled already and gave their slot
            # back then; the others are cancelled now.
            killed: list[Task[Any]] = []
            already = 0
            for fn in queued:
                if is_task_runner(fn, self):
                    if fn.__self__.cancelled():
                        already += 1
                    else:
                        killed.append(fn.__self__)
            newly = len(queued) - already
            counts.cancelled_queued -= already
            counts.dropped += newly + already
            if self._slots is not None:
                for _ in range(newly):
                    self._slots.release()
            # Tasks accepted from other threads and not on the queue yet (no slot held).
            handed: list[Entry] = []
            inbox = self._inbox
            while inbox:
                handed.append(inbox.popleft())
            for waiting in self._awaiting:
                handed.append(waiting[0])  # type: ignore[arg-type]  # None only once dropped
                waiting[0] = None
            self._awaiting.clear()
            handed_before = 0  # cancelled (or killed) while handed over: counted then
            for _, fn, _, _ in handed:
                if is_task_runner(fn, self):
                    if fn.__self__.cancelled():  # type: ignore[attr-defined]
                        handed_before += 1
                        if self._slots is not None:
                            # Its cancel gave back a slot it never held (it was on no queue).
                            self._slots.acquire(blocking=False)
                    else:
                        killed.append(fn.__self__)  # type: ignore[attr-defined]
            counts.cancelled_queued -= handed_before
            self._submitted += len(handed)
            counts.dropped += len(handed)
            counts.cancelled += newly + len(handed) - handed_before
            reports = [task._set_killed(exception) for task in killed]
            current = getcurrent()
            dying = self._dying_workers()
            greenlets = list(self._greenlets)
            for worker in greenlets:
                if worker is current or worker.state is LEAVING:
                    continue  # the caller: it gets the exception below; or hit by an earlier kill
                where = _OUTSIDE_TASK
                if worker.state is RUNNING:
                    # Now: it leaves after this task (or this report), and takes no other.
                    where = _IN_TASK if aim_kill(worker) else _IN_REPORT
                    if where is _IN_TASK and worker in dying:
                        continue  # its task was killed by killone: not hit again, as in gevent
                # Scheduled after the callbacks that start new workers, so each has started.
                self._hub.loop.run_callback(_kill_worker, worker, exception, where)
        added = self._kill_added_members(exception)
        for task, report in zip(killed, reports, strict=True):
            task._report_kill(report)
        if current in self._greenlets:
            # Killed from one of its own tasks: the calling task ends with the exception
            # now, and its worker after it. (From a panic handler reporting the worker's
            # failed task, there is no task left to end: the worker leaves after the
            # report, and the kill waits for the others.)
            if aim_kill(current):  # a Worker: it is in _greenlets
                raise as_exception(exception)
            greenlets.remove(current)
        if not block:
            return not any(worker in self._greenlets for worker in greenlets)
        # False: the Timeout ends the block quietly, as gevent documents (the stubs omit it).
        with Timeout(timeout, False):  # type: ignore[arg-type]
            while any(worker in self._greenlets for worker in greenlets):
                if self._exited is None:
                    self._exited = Event()
                self._exited.wait()
            for member in added:
                join = getattr(member, "join", None)  # not a raw greenlet's
                if join is not None:
                    join()
        return not any(worker in self._greenlets for worker in greenlets) and all(
            getattr(member, "dead", True) for member in added
        )

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the pool; then wait for what it holds, unless the block is being
        interrupted.

        Leaving normally or with an ``Exception``: wait until every queued task has run,
        as ``concurrent.futures``' executors do, so an error in the block loses nothing
        already queued. Leaving with any other ``BaseException`` (Ctrl-C's
        KeyboardInterrupt, ``sys.exit()``, a ``gevent.Timeout``, a kill): do not wait, so
        the interruption goes on at once. The queued tasks stay queued and run whenever
        the hub runs; if the process is exiting, the exit drain waits for them up to its
        deadline and logs what it abandons (see `ggopool.set_exit_drain`).
        """
        self.close()
        if exc_type is None or issubclass(exc_type, Exception):
            self.join()

    # -- counts ------------------------------------------------------------------------

    def worker_count(self) -> int:
        """gopool's ``WorkerCount``: the workers its spawn rule counts, those running a task
        and those parked waiting for one, and, as in gopool, each one from the moment the
        rule asks for it: a start that the hub has not made yet (at its next turn, or never
        if the queue has run empty by then) is counted. `stats` ``.workers`` counts only the
        worker greenlets that exist."""
        return self._workers

    def _live_workers(self) -> int:
        """The worker greenlets that exist: `worker_count` less the starts not made yet."""
        return self._workers - self._to_start

    def task_count(self) -> int:
        """Tasks queued and not yet started (cancelled ones excluded; those handed over by
        other threads included)."""
        return len(self._tasks) // SLOTS - self._counts.cancelled_queued + self._in_flight()

    def _running(self) -> int:
        """Tasks started and not finished: the workers inside a task.

        Seen from any greenlet but a worker's own, a worker that is awake and back in its
        loop is inside a task, or reporting the failure of its last one (which is done),
        because between two tasks it yields only to let the loop run, and is counted in
        ``_starting`` while it does (``YIELDING``).
        """
        return self._workers - len(self._parked) - self._starting - self._counts.reporting

    def _in_flight(self) -> int:
        """Tasks accepted from other threads and not yet on the queue."""
        return len(self._inbox) + len(self._awaiting)

    def _is_quiet(self) -> bool:
        # No worker awake in its loop: join() waits for failure reports (their panic
        # handlers) as well as for the tasks.
        awake = self._workers - len(self._parked) - self._starting
        return not self._tasks and awake == 0 and not self._in_flight()

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counts; see `PoolStats`."""
        counts = self._counts
        queued = len(self._tasks) // SLOTS
        running = self._running()
        # Every accepted task was dropped by kill(), is queued, is running, or has
        # finished (returned, raised, or was skipped because it was cancelled).
        finished = self._submitted - counts.dropped - queued - running
        in_flight = self._in_flight()  # accepted from other threads, counted as pending
        return PoolStats(
            name=self._name,
            cap=self._cap,
            workers=self._live_workers(),
            idle=len(self._parked),
            running=running,
            pending=queued - counts.cancelled_queued + in_flight,
            submitted=self._submitted + in_flight,
            completed=finished - counts.failed - counts.skipped,
            failed=counts.failed,
            cancelled=counts.cancelled,
            rejected=counts.rejected,
        )

    # -- gopool's spawn rule -----------------------------------------------------------

    def _should_add_worker(self) -> bool:
        """gopool's rule, evaluated after a task is queued: should one more worker run?"""
        awake = self._workers - len(self._parked)
        return (len(self._tasks) >= self._threshold_slots and awake < self._cap) or awake == 0

    def _add_worker(self) -> None:
        """Wake a parked worker, or count one more to start if the cap allows."""
        # Nothing between the rule's check and these increments can yield, and only the
        # pool's own thread touches them, so no other greenlet can run in between: two
        # go() calls can never both see room for the last worker below the cap. (gopool
        # checks and increments separately across goroutines and can overshoot.)
        loop = self._hub.loop
        if loop is None:
            loop = self._hub_was_destroyed()
        if self._parked:
            # The most recently parked: the others' idle time goes on, so a pool that
            # needs fewer workers than it has lets the extra ones expire.
            worker = self._parked.popitem()[0]
            worker.state = WAKING
            self._starting += 1
            loop.run_callback(worker.switch, WORK)
        elif self._workers < self._cap:
            self._workers += 1
            self._starting += 1
            self._to_start += 1
            if not self._starter_scheduled:
                if self._one_start_each:
                    self._start_ones += 1
                    loop.run_callback(self._start_one, self._generation)  # one per start
                else:
                    self._starter_scheduled = True
                    loop.run_callback(self._start_workers, self._generation)

    def _start_workers(self, generation: int) -> None:
        """Make the workers counted by `_add_worker` (a loop callback in the hub).

        Each new worker runs until its task first yields; the hub is then back here, and
        the next worker starts at once while tasks are queued and starts are counted, as
        ``gevent.spawn``'s start callbacks run one after the other: a burst of tasks that
        block gets a worker for every task before the code that queued them runs again,
        however busy the loop. What makes the next start wait instead:

        * The task queued callbacks of the loop before it yielded (``gevent.sleep(0)``, an
          event it set): the next start goes behind them, so a task that yields only
          briefly is resumed first and its worker takes the next queued task itself. A
          burst of short tasks is run by the few workers it keeps busy, not by one each.
        * A worker found the loop overdue (it ran tasks for gevent's switch interval
          without the loop polling for I/O, see _worker.py): the next start waits for a
          later turn of the loop, behind the workers waiting for one.
        * The starts themselves have taken the switch interval since the loop last
          polled: until it polls again each start is a callback of its own
          (`_start_one`), as each of ``gevent.spawn``'s is, so gevent's loop breaks the
          run of callbacks where it would break ``gevent.spawn``'s, and tasks queued
          meanwhile start in their turn among the other callbacks.

        A start that finds the queue empty (an earlier worker took every task) is uncounted
        here, and no greenlet is ever made for it.
        """
        if generation != self._generation:
            return  # scheduled before a fork; the child's pool starts its own
        if self._moved_from_a_destroyed_hub():
            return
        hub = self._hub
        loop = hub.loop
        watch = self._loop_watch
        # Until this run of starts hands over (below), it is the pool's one starter:
        # _add_worker schedules no other, and an exception out of a worker's switch
        # leaves the rest scheduled.
        handed_over = False
        try:
            while True:
                if not self._to_start:
                    return  # set_cap took the starts back, or every one was made
                if not self._tasks:
                    self._uncount_starts()
                    return
                if watch.overdue != NOT_OVERDUE and loop.iteration == watch.overdue:
                    handed_over = True
                    at_a_later_turn(hub, self, self._start_workers, generation)  # _worker.py
                    return
                queued_before = callbacks_queued(loop)
                self._make_worker(generation)
                # Back in the hub: the worker's task yielded, or the worker parked or ended.
                if generation != self._generation:
                    handed_over = True  # forked, or the hub destroyed: not ours any more
                    return
                if not self._to_start or not self._tasks:
                    continue  # uncounts what is left, or returns
                # Past LONG_QUEUE queued callbacks they are not counted again: the next start
                # waits behind them all, as it would behind the task's own.
                if not 0 <= queued_before <= LONG_QUEUE or callbacks_queued(loop) != queued_before:
                    handed_over = True
                    loop.run_callback(self._start_workers, generation)
                    return
                if starts_overdue(loop, watch):
                    handed_over = True
                    self._one_start_each = True
                    self._starter_scheduled = False  # each start counted now is scheduled
                    start_one = self._start_one
                    wanted = min(self._to_start, len(self._tasks) // SLOTS) - self._start_ones
                    for _ in range(wanted):
                        self._start_ones += 1
                        loop.run_callback(start_one, generation)
                    return
        finally:
            if not handed_over and generation == self._generation:
                self._starter_scheduled = False
                if self._to_start:
                    # A worker's switch raised: the rest still start.
                    self._starter_scheduled = True
                    loop.run_callback(self._start_workers, generation)

    def _start_one(self, generation: int) -> None:
        """Make one worker counted by `_add_worker`, while the starts of a run of them have
        taken the switch interval and the loop has not polled since (see `_start_workers`):
        one loop callback per start, as ``gevent.spawn`` makes. Once the loop has polled,
        the last of these callbacks pending starts the rest in a run again."""
        if generation != self._generation:
            return
        self._start_ones -= 1
        if self._moved_from_a_destroyed_hub():
            return
        if not self._one_start_each:
            return  # the rest are started in a run again, or a fork came between
        if self._hub.loop.iteration != self._loop_watch.starts_seen and not self._start_ones:
            self._one_start_each = False
            if not self._starter_scheduled:
                self._starter_scheduled = True
                self._start_workers(generation)
            return
        if self._to_start and self._tasks:
            try:
                self._make_worker(generation)
            finally:
                # Counted starts need not each have a callback (a task taken by a parked
                # worker frees a start's), and a worker's switch may raise: while starts
                # and tasks are left, one more, behind the callbacks queued meanwhile.
                if (
                    generation == self._generation
                    and self._to_start
                    and self._tasks
                    and self._one_start_each
                ):
                    self._start_ones += 1
                    self._hub.loop.run_callback(self._start_one, generation)
        if generation == self._generation and self._to_start and not self._tasks:
            self._uncount_starts()

    def _make_worker(self, generation: int) -> None:
        """Make one of the counted starts a worker greenlet and run it until it yields."""
        self._to_start -= 1
        # A raw greenlet whose parent is the hub: what gevent.spawn_raw makes, less its
        # greenlet-tree bookkeeping, which long-lived workers don't need.
        worker = Worker(work, self._hub)
        worker.state = STARTING
        self._greenlets.add(worker)
        worker.switch(self, worker, generation)

    def _uncount_starts(self) -> None:
        """The queue is empty: the starts counted and not made are never made."""
        n, self._to_start = self._to_start, 0
        self._workers -= n
        self._starting -= n

    def _moved_from_a_destroyed_hub(self) -> bool:
        """Whether this pool's hub was destroyed (``hub.destroy()``) since its last
        ``go()``; if so, move to the thread's hub now, with starts counted for what is
        queued (called where no ``go()`` may come: `join`, and the starts' callbacks)."""
        if self._hub.loop is not None:
            return False
        self._hub_was_destroyed()
        for _ in range(len(self._tasks) // SLOTS):
            if not self._should_add_worker():
                break
            self._add_worker()
        return True

    def _hub_was_destroyed(self) -> Any:
        """The pool's hub was destroyed (``hub.destroy()``): move to the thread's new hub.

        Its workers went with the old hub; the queue stays and new workers run it, as
        ``gevent.spawn`` goes on working with the new hub.
        """
        self._hub = get_hub()
        self._loop_watch = loop_watch(self._hub)
        self._generation += 1
        self._workers = self._starting = self._to_start = self._counts.reporting = 0
        self._parked = {}
        self._idle_timer = None  # it went with the old loop
        self._greenlets = set()
        self._starter_scheduled = self._one_start_each = False
        self._start_ones = 0
        return self._hub.loop

    def _retire_idle(self, n: int) -> None:
        """Make up to ``n`` workers that are not inside a task leave now, uncounted at once:
        parked ones (longest parked first), then starts not made yet, then woken ones and
        those waiting for a turn of the loop."""
        n -= self._retire_parked(n)
        cancelled = min(n, self._to_start)
        if cancelled:
            self._to_start -= cancelled
            self._workers -= cancelled
            self._starting -= cancelled
            n -= cancelled
        if n > 0:
            for worker in list(self._greenlets):
                if worker.state is WAKING or worker.state is YIELDING:
                    worker.state = GONE  # its WORK or RESUME switch finds it gone: it leaves
                    self._workers -= 1
                    self._starting -= 1
                    n -= 1
                    if not n:
                        break

    def _retire_parked(self, n: int) -> int:
        """Make up to ``n`` parked workers exit now, uncounted at once; how many did."""
        parked = self._parked
        retired = min(n, len(parked))
        for worker in list(itertools.islice(parked, retired)):
            self._uncount_parked(worker)
            self._hub.loop.run_callback(worker.switch, RETIRE)
        return retired

    def _uncount_parked(self, worker: Worker) -> None:
        """A parked worker leaves the free list and the counts; it will exit."""
        del self._parked[worker]
        worker.state = GONE
        self._workers -= 1

    def _worker_left(self, worker: Worker) -> None:
        """A worker has ended, however it ended: uncount it by its state (once), keep
        queued tasks going and tell join() and kill() what changed."""
        state = worker.state
        worker.state = GONE
        if state is not GONE:
            self._workers -= 1
            if state is PARKED:
                del self._parked[worker]
            elif state is STARTING or state is WAKING or state is YIELDING:
                self._starting -= 1
        self._greenlets.discard(worker)
        if self._tasks and self._should_add_worker():
            self._add_worker()
        self._check_quiet()
        exited = self._exited
        if exited is not None:
            self._exited = None
            exited.set()

    def _check_quiet(self) -> None:
        quiet = self._quiet
        if quiet is not None and self._is_quiet():
            self._quiet = None
            quiet.set()
