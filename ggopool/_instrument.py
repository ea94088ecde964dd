"""Instruments: observers a pool calls as its tasks are queued, start and finish, and as its
workers start and exit (trio's ``Instrument``, gevent's event subscribers).

A pool with no instrument pays nothing per task: attaching one routes ``go()`` off its fast
path (as ``close()`` and ``max_pending`` do), and the general way in, `Pool._push`, makes each
task's entry a `TaskInfo` that runs the task between its hooks. The worker loop itself never
looks at instruments.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Iterator, Mapping
from time import perf_counter
from types import MethodType
from typing import TYPE_CHECKING, Any, cast

from gevent import get_hub
from greenlet import GreenletExit

from ggopool._describe import describe_call, short_repr
from ggopool._task import is_task_runner

if TYPE_CHECKING:
    from ggopool._entry import Entry
    from ggopool._pool import Pool
    from ggopool._task import Task

#: What `Instrument.task_finished` is told about how a task ended.
COMPLETED, FAILED, KILLED, CANCELLED = "completed", "failed", "killed", "cancelled"

#: The hooks, by name, in the order a task meets them.
HOOKS = ("task_queued", "task_started", "task_finished", "worker_started", "worker_exited")


class Instrument:
    """An observer of a pool's tasks and workers: subclass it, define the hooks you need,
    and attach it with `Pool.add_instrument`.

    Metrics, tracing and load-test harnesses watch a pool this way while the application
    keeps the pool it already had: every way into the pool (``go``, ``ctx_go``, ``try_go``,
    ``submit``, ``spawn``, ``spawn_later``, ``map``, ``imap``, ``apply``, a group's tasks,
    tasks handed over from other threads) is seen. Example, a count of failures by call::

        class Failures(ggopool.Instrument):
            def __init__(self):
                self.by_call = collections.Counter()

            def task_finished(self, task, outcome, exc):
                if outcome == "failed":
                    self.by_call[task.call] += 1

        failures = Failures()
        pool.add_instrument(failures)

    Rules:

    * Only the hooks a class defines are called; the base class's do nothing. An object
      of any class that defines at least one of them may be attached, too.
    * ``task_queued(task)``: the task (a `TaskInfo`) is on the queue, in the caller's
      greenlet (for a task handed over by another thread, in the pool's hub as it takes
      it). ``task_started(task)``: in the worker, inside the task's own
      ``contextvars.Context``, just before the call. ``task_finished(task, outcome,
      exc)``: just after it, in the same place; ``outcome`` is ``"completed"`` (it
      returned), ``"failed"`` (it raised ``exc``, or a kill with another exception did),
      ``"killed"`` (a kill's ``GreenletExit``, ``exc``, ended it while it ran) or
      ``"cancelled"`` (it never started:
      ``Task.cancel``, ``Task.kill``, ``Pool.kill``, a group that cancels on error, or a
      fork that left it to the parent; then it is called where that happened).
    * Every task an instrument saw queued is finished exactly once for it, in this
      process, as long as it stays attached, and it hears of the task as queued before
      anything else of it (even if another instrument's hook yields meanwhile). Tasks
      queued before it was attached are not seen at all.
    * ``worker_started(pool)`` and ``worker_exited(pool)``: a worker greenlet began or
      ended (not each wake-up from the free list).
    * ``removed(pool)``: the instrument was detached from the pool (`Pool.remove_instrument`,
      or a hook of it raised), and will not be called again for its tasks: those it saw
      start and not finish are not finished for it. An instrument that keeps something
      open for each running task (a tracer's spans) ends it here.
    * Hooks must not block: they run on the task's way through the pool. An ``Exception``
      from a hook is reported through ``gevent.get_hub().handle_error`` and the
      instrument is detached from the pool; the task goes on as if nothing happened.
    * Instruments belong to the pool's thread, as its workers do.
    """

    __slots__ = ()

    def task_queued(self, task: TaskInfo) -> None:
        """A task is on the pool's queue."""

    def task_started(self, task: TaskInfo) -> None:
        """A task is about to run, in its worker and its own context."""

    def task_finished(self, task: TaskInfo, outcome: str, exc: BaseException | None) -> None:
        """A task ended: ``"completed"``, ``"failed"``, ``"killed"`` or ``"cancelled"``."""

    def worker_started(self, pool: Pool) -> None:
        """A worker greenlet of the pool started."""

    def worker_exited(self, pool: Pool) -> None:
        """A worker greenlet of the pool ended."""

    def removed(self, pool: Pool) -> None:
        """The instrument was detached from the pool: no hook of it is called again."""


class _Attached:
    """One attachment of an instrument: `remove` marks it gone, so the tasks queued while it
    was attached stop calling it."""

    __slots__ = ("instrument", "live")

    def __init__(self, instrument: object) -> None:
        self.instrument = instrument
        self.live = True


_Hook = tuple[_Attached, Callable[..., object]]


def _hooks_of(attached: tuple[_Attached, ...], name: str) -> tuple[_Hook, ...]:
    found = []
    base = getattr(Instrument, name)
    for one in attached:
        method = getattr(type(one.instrument), name, None)
        if method is not None and method is not base:
            found.append((one, getattr(one.instrument, name)))
    return tuple(found)


class Instruments:
    """What a pool's instruments are at one moment, each hook's callers ready: immutable.

    A pool holds one (or None, the no-instrument case the hot paths check for); attaching
    or removing an instrument gives it a new one. A queued task keeps the one of its
    queueing, so an instrument attached later is not told the rest of its story.
    """

    __slots__ = ("attached", "tasks", *HOOKS)

    def __init__(self, attached: tuple[_Attached, ...]) -> None:
        self.attached = attached
        self.task_queued = _hooks_of(attached, "task_queued")
        self.task_started = _hooks_of(attached, "task_started")
        self.task_finished = _hooks_of(attached, "task_finished")
        self.worker_started = _hooks_of(attached, "worker_started")
        self.worker_exited = _hooks_of(attached, "worker_exited")
        # Whether any hook watches tasks: if none does, go() keeps its fast path.
        self.tasks = bool(self.task_queued or self.task_started or self.task_finished)

    def observe(self, pool: Pool, entry: Entry) -> Entry:
        """The queue entry that runs ``entry``'s task between this pool's hooks."""
        ctx, fn, args, kwargs = entry
        return (ctx, TaskInfo(pool, self, ctx, fn, args, kwargs), args, kwargs)

    def worker_hook(self, pool: Pool, hooks: tuple[_Hook, ...]) -> None:
        for attached, hook in hooks:
            if attached.live:
                try:
                    hook(pool)
                except Exception as exc:  # noqa: BLE001 - reported, and the instrument detached
                    _hook_failed(pool, attached, exc)


class TaskInfo:
    """One task on its way through a pool with instruments, as the hooks see it.

    ``pool``, ``fn``, ``args``, ``kwargs``: the call as it was queued (``pool.go(fn,
    *args, **kwargs)``, or a `Task`'s own call); ``task``: the `Task` handle of a
    ``submit``/``spawn``-style task, None for ``go``/``ctx_go``/``try_go``; ``context``: the
    ``contextvars.Context`` it runs in; ``queued_at`` and ``started_at``:
    ``time.perf_counter()`` when it was queued and when it started (None until then);
    ``call``: ``fn('x', retries=3)``, bounded, as a failure report names it. An instrument
    may keep one in a dict until the task finishes; the arguments are let go then.
    """

    __slots__ = (
        "_hooks",
        "_target",
        "_untold",
        "args",
        "context",
        "fn",
        "kwargs",
        "pool",
        "queued_at",
        "started_at",
        "task",
    )

    def __init__(
        self,
        pool: Pool,
        hooks: Instruments,
        ctx: contextvars.Context,
        target: Callable[..., object],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> None:
        self.pool = pool
        self._hooks = hooks
        self._target = target  # what the worker calls: fn, or a Task's runner
        self.context = ctx
        self.started_at: float | None = None  # None: not started (yet)
        # The task_queued hooks not called yet, while `_queued` calls them (see there).
        self._untold: list[_Hook] | None = None
        if type(target) is MethodType and is_task_runner(target, pool):
            task: Task[Any] = target.__self__  # type: ignore[assignment]
            self.task: Task[Any] | None = task
            self.fn: Callable[..., object] = task._fn
            self.args = task._args
            self.kwargs: Mapping[str, Any] = task._kwargs
            if not task.ready():
                task._add_hook(self._task_done)  # a cancel before it starts finishes it here
            # Else it was cancelled before it reached the queue (while it waited for a place
            # in a bounded pool): `_queued` finishes it, once the instruments heard of it.
        else:
            self.task = None
            self.fn = target
            self.args = args
            self.kwargs = kwargs
        self.queued_at = perf_counter()

    @property
    def call(self) -> str:
        """``fn('x', retries=3)``, arguments' reprs bounded; never raises."""
        return describe_call(self.fn, self.args, self.kwargs)

    def __repr__(self) -> str:
        return f"<task {self.call} of pool {self.pool.name!r}>"

    # -- the hooks -----------------------------------------------------------------------

    def _queued(self) -> None:
        # (Called by Pool._push once the entry is queued and the spawn rule applied.)
        task = self.task
        # Cancelled before it was queued (see __init__): finished once told queued.
        done = task is not None and task.ready()
        hooks = self._hooks.task_queued
        if hooks:
            self._untold = list(hooks)
            self._tell_queued()
        if done:
            self._finish(CANCELLED, None)

    def _tell_queued(self) -> None:
        """Call the task_queued hooks not called yet. A hook may yield (against the rules,
        but it may), and the task start or finish meanwhile: then the start or the finish
        calls the rest first, so each instrument hears of the task as queued before anything
        else of it, once."""
        untold = self._untold
        while untold:
            attached, hook = untold.pop(0)
            if attached.live:
                try:
                    hook(self)
                except Exception as exc:  # noqa: BLE001 - reported, and the instrument detached
                    _hook_failed(self.pool, attached, exc)
        self._untold = None

    def _finish(self, outcome: str, exc: BaseException | None) -> None:
        # Once per task: from __call__ for one that started, else from _task_done (a
        # Task's cancel), _queued or _dropped (Pool.kill, a fork). Held until the pool's
        # state change is complete, if one is under way (`notifications_held`).
        if _held:
            held = _held.get(self.pool)
            if held is not None:
                held.append((self, outcome, exc))
                return
        if self._untold:
            self._tell_queued()
        try:
            for attached, hook in self._hooks.task_finished:
                if attached.live:
                    try:
                        hook(self, outcome, exc)
                    except Exception as hook_exc:  # noqa: BLE001 - as in _queued
                        _hook_failed(self.pool, attached, hook_exc)
        finally:
            # Not kept alive by an instrument that keeps this object a while.
            self.args = ()
            self.kwargs = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The worker's ctx.run(info, *args, **kwargs): in the task's context.
        task = self.task
        if task is not None and task.cancelled():
            return self._target(*args, **kwargs)  # the Task skips it; finished at its cancel
        if self._untold:
            self._tell_queued()
        self.started_at = perf_counter()
        # Killed, unless the call returns or raises otherwise.
        outcome: str = KILLED
        error: BaseException | None = None
        try:
            for attached, hook in self._hooks.task_started:
                if attached.live:
                    try:
                        hook(self)
                    except Exception as hook_exc:  # noqa: BLE001 - as in _queued
                        _hook_failed(self.pool, attached, hook_exc)
            try:
                value = self._target(*args, **kwargs)
            except GreenletExit as exc:
                error = exc
                raise
            except BaseException as exc:
                outcome, error = FAILED, exc
                raise
            if task is None:
                outcome = COMPLETED
            else:
                # A Task's runner keeps what the call did in the handle.
                outcome, error = _outcome_of(task)
            return value
        finally:
            self._finish(outcome, error)

    def _task_done(self, task: Task[Any]) -> None:
        # A hook on the Task: it is done or, before it started, cancelled or killed.
        if self.started_at is None:
            self._finish(CANCELLED, None)

    def _dropped(self) -> Callable[..., object]:
        """The pool dropped this entry unrun (Pool.kill, or a fork): a go() task is finished
        here as cancelled (a Task is, by its own cancel). The callable it would have run."""
        if self.task is None:
            self._finish(CANCELLED, None)
        return self._target


def _outcome_of(task: Task[Any]) -> tuple[str, BaseException | None]:
    exc = task._exc
    if exc is not None:
        return FAILED, exc
    kill = task._kill_exc
    if kill is not None and task._value is kill:
        return KILLED, kill
    return COMPLETED, None


#: The pools whose instruments' ``task_finished`` calls are held (`notifications_held`),
#: with the calls owed. Empty but while a pool's state changes: `TaskInfo._finish` pays one
#: test of it.
_held: dict[Pool, list[tuple[TaskInfo, str, BaseException | None]]] = {}


def forget_held_notifications() -> None:
    """In a forked child: no pool holds its instruments' calls (see `notifications_held`)."""
    _held.clear()


@contextlib.contextmanager
def notifications_held(pool: Pool) -> Iterator[None]:
    """Hold the ``task_finished`` calls ``pool``'s tasks would make in the block, and make them
    after it (in order), once the block's state change is complete.

    For the operations that change many parts of a pool's state at once (`Pool.kill`, a
    forked child's reset): a hook may yield (an exporter that sends each span over the
    network), and whatever runs meanwhile (workers taking tasks, other greenlets queueing)
    must find the state either as it was or as it is after, never half-changed. The block
    itself must not yield. Held in a block already holding them, they are made by the
    outermost one.
    """
    if pool in _held:
        yield
        return
    held: list[tuple[TaskInfo, str, BaseException | None]] = []
    _held[pool] = held
    try:
        yield
    finally:
        del _held[pool]
        for info, outcome, exc in held:
            info._finish(outcome, exc)


def unwrap(fn: object) -> Any:
    """A queued callable as the pool's own code knows it: an instrumented entry's target."""
    return fn._target if type(fn) is TaskInfo else fn


def dropped(fn: object) -> Any:
    """`unwrap`, for an entry the pool drops unrun: its instruments are told."""
    return fn._dropped() if type(fn) is TaskInfo else fn


def _hook_failed(pool: Pool, attached: _Attached, exc: Exception) -> None:
    """Report an instrument's exception through the hub and detach it. Never raises (but
    a GreenletExit that kills the greenlet meanwhile)."""
    attached.live = False
    remove_instrument(pool, attached.instrument)
    _report_hook_failure(pool, attached.instrument, exc)


def _report_hook_failure(pool: Pool, instrument: object, exc: Exception) -> None:
    """Report a detached instrument's exception through the hub. Never raises (but a
    GreenletExit that kills the greenlet meanwhile)."""
    try:
        hub = get_hub()
        hub.handle_error(_FailedInstrument(pool, instrument), type(exc), exc, exc.__traceback__)
    except GreenletExit:
        raise
    except BaseException:  # noqa: BLE001 - nowhere left to say it but stderr
        with contextlib.suppress(BaseException):
            sys.__stderr__.write(  # type: ignore[union-attr]
                f"ggopool: pool {pool.name!r}: an instrument raised {type(exc).__name__} "
                "and reporting it failed; it is detached\n"
            )


class _FailedInstrument:
    """The ``context`` of a failed instrument's report through the hub."""

    __slots__ = ("instrument", "pool")

    def __init__(self, pool: Pool, instrument: object) -> None:
        self.pool = pool
        self.instrument = instrument

    def __repr__(self) -> str:
        return (
            f"<instrument {short_repr(self.instrument)} of pool {self.pool.name!r}, "
            "detached because it raised>"
        )


# -- attaching -------------------------------------------------------------------------------


class InstrumentsMixin:
    """`Pool`'s methods for its instruments, which it keeps in one attribute,
    ``_instruments``: an `Instruments`, or None when it has none."""

    __slots__ = ()

    if TYPE_CHECKING:
        _instruments: Instruments | None

        def _in_own_thread(self, fn: Callable[..., object], *args: Any) -> None: ...

    def add_instrument(self, instrument: Instrument) -> None:
        """Attach ``instrument`` (see `Instrument`): it sees the tasks queued from now on, and
        the workers that start or exit.

        Example::

            pool.add_instrument(Failures())

        An object that is neither an `Instrument` nor defines one of its hooks raises
        TypeError; one already attached raises ValueError. From another thread, the call
        is handed over to the pool's thread, as `set_cap`'s is.
        """
        _check_instrument(instrument)
        if any(one is instrument for one in instruments_of(cast("Pool", self))):
            raise ValueError(f"{short_repr(instrument)} is already attached to pool {self.name!r}")
        self._in_own_thread(add_instrument, self, instrument)

    def remove_instrument(self, instrument: Instrument) -> None:
        """Detach ``instrument``: it is called no more, not even for the tasks it saw queued.

        One not attached raises ValueError. From another thread, as `add_instrument`.
        """
        if not any(one is instrument for one in instruments_of(cast("Pool", self))):
            raise ValueError(f"{short_repr(instrument)} is not attached to pool {self.name!r}")
        self._in_own_thread(remove_instrument, self, instrument)

    @property
    def instruments(self) -> tuple[Instrument, ...]:
        """The attached instruments, in the order they were attached."""
        return instruments_of(cast("Pool", self))  # type: ignore[return-value]

    if TYPE_CHECKING:

        @property
        def name(self) -> str: ...


def _check_instrument(instrument: object) -> None:
    if isinstance(instrument, Instrument):
        return
    if not any(callable(getattr(type(instrument), name, None)) for name in HOOKS):
        raise TypeError(
            "instrument must be a ggopool.Instrument or define one of its hooks "
            f"({', '.join(HOOKS)}), got {short_repr(instrument)}"
        )


def add_instrument(pool: Pool, instrument: object) -> None:
    current = pool._instruments
    attached = () if current is None else current.attached
    if any(one.instrument is instrument for one in attached):
        return  # attached by an earlier hand-over from a thread
    pool._instruments = Instruments((*attached, _Attached(instrument)))
    pool._route()


def remove_instrument(pool: Pool, instrument: object) -> None:
    current = pool._instruments
    attached = () if current is None else current.attached
    found = [one for one in attached if one.instrument is instrument]
    if not found:
        return  # removed meanwhile (it raised, or a hand-over from a thread came late)
    found[0].live = False
    rest = tuple(one for one in attached if one is not found[0])
    pool._instruments = Instruments(rest) if rest else None
    pool._route()
    # Told once the pool's state says it is gone: its hook may yield, or remove others.
    removed = getattr(type(instrument), "removed", None)
    if removed is not None and removed is not Instrument.removed:
        try:
            instrument.removed(pool)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - reported; it is detached already
            _report_hook_failure(pool, instrument, exc)


def instruments_of(pool: Pool) -> tuple[object, ...]:
    current = pool._instruments
    return () if current is None else tuple(one.instrument for one in current.attached)
