"""The handle of a submitted or spawned task: what a ``gevent.Greenlet`` offers those who
wait for it, kill it or link to it, and concurrent.futures' Future in one."""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import time
from collections.abc import Callable
from types import CodeType, MethodType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from gevent import Timeout, get_hub
from gevent.exceptions import InvalidSwitchError
from greenlet import GreenletExit, getcurrent
from greenlet import greenlet as RawGreenlet

from ggopool._config import check_timeout
from ggopool._describe import describe_call, short_repr
from ggopool._errors import TaskCancelled

if TYPE_CHECKING:
    from gevent._types import _Loop

    from ggopool._pool import Pool

    # gevent's stubs type joinall, killall and iwait over greenlets, so for a type checker
    # a Task is one (gevent itself needs only what Task defines below). At run time it is
    # not: a task runs on a worker greenlet and has no switch(), parent or gr_frame.
    _TaskBase = RawGreenlet
else:

    class _TaskBase:
        __slots__ = ()


#: Covariant: a Task[int] is a Task[object], so tasks of different results go in one list
#: (``gevent.joinall([a, b])`` type-checks).
T = TypeVar("T", covariant=True)

#: A task's states: waiting for its time (``spawn_later``), queued, running, done (its
#: outcome set), cancelled (stopped before it ran).
_LATER, _PENDING, _RUNNING, _DONE, _CANCELLED = "later", "pending", "running", "done", "cancelled"
#: Made by `Pool.task` and not started yet: not queued until `Task.start`.
_UNSTARTED = "unstarted"


#: What `Task._set_killed` leaves to report: the exception and the task's context.
_KillReport = tuple[BaseException, "contextvars.Context | None"]


def _check_wait_timeout(timeout: object) -> float | Timeout | None:
    if isinstance(timeout, Timeout):
        return timeout  # started by the wait, raised when it expires: gevent's meaning
    return check_timeout(timeout)


def _exception_of(exception: object) -> object:
    # A ``(type, value, tb)`` triple (what ``__exit__`` passes on) stands for its value, or
    # its type when the value is None, as gevent's kill reads it.
    if isinstance(exception, tuple) and len(exception) == 3:
        return exception[1] if exception[1] is not None else exception[0]
    return exception


def _is_exception(exception: object) -> bool:
    return isinstance(exception, BaseException) or (
        isinstance(exception, type) and issubclass(exception, BaseException)
    )


def check_exception(exception: object) -> None:
    """Refuse, with TypeError, what no kill can raise: gevent's ``kill`` takes an exception
    class or instance (or a ``(type, value, tb)`` triple)."""
    if not _is_exception(_exception_of(exception)):
        raise TypeError(
            "exception must be an exception class or instance, or a (type, value, traceback) "
            f"triple, got {short_repr(exception)}"
        )


def as_exception(exception: object) -> BaseException:
    """What ``kill(exception)`` raises: gevent's reading of its argument (a class, an
    instance, or a ``(type, value, tb)`` triple; checked by `check_exception`)."""
    exception = _exception_of(exception)
    if isinstance(exception, type) and issubclass(exception, BaseException):
        return exception()
    if isinstance(exception, BaseException):
        return exception
    return BaseException(exception)  # unreachable once checked: never raises here


def forget_frames(exc: BaseException) -> None:
    """Cut the reference cycles a task's exception sits in, so that what its frames held
    (sockets, files, connections) goes as soon as nothing holds the task or the exception,
    not when the cyclic GC next runs (``concurrent.futures`` breaks the same cycle).

    The exception's traceback holds the frames it went through, and each frame its locals
    and its caller (``f_back``): the task's runner (``Task._run``, which holds the task that
    holds the exception), an instrument's `TaskInfo` call, and the worker loop, whose locals
    hold the task until its next one. The worker's frames are taken off the front of the
    traceback, and the pool's frames that have returned are cleared (their locals dropped).
    The task's own frames are left as they are: a debugger or a report still reads their
    locals. For a worker whose frames have all returned (one that was killed); never raises.
    """
    _clear_pool_frames(_drop_worker_frames(exc))


def forget_frames_soon(exc: BaseException, loop: Any) -> None:
    """`forget_frames`, for a worker that goes on: its frames that hold the task (the task's
    runner, its loop's when it leaves after this task) are cleared from the hub, once they
    have returned. Never raises."""
    tb = _drop_worker_frames(exc)
    if loop is not None:  # None: the hub was destroyed; the cyclic GC frees them then
        loop.run_callback(_clear_pool_frames, tb)


def _drop_worker_frames(exc: BaseException) -> TracebackType | None:
    """Take the worker's frames off the front of ``exc``'s traceback; return the rest."""
    worker = _pool_codes()[1]
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code in worker:
        tb = tb.tb_next
    if tb is not exc.__traceback__:
        exc.__traceback__ = tb
    return tb


def _clear_pool_frames(tb: TracebackType | None) -> None:
    """Clear the pool's frames at the front of ``tb`` and the pool's frames that called them
    (clearing a frame drops its locals but not its caller, which the task's frames reach),
    and, further on, those of a task that killed itself (``Task.kill`` holds the task)."""
    own, _, called = _pool_codes()
    frame = None
    while tb is not None and tb.tb_frame.f_code in own:
        frame = tb.tb_frame
        tb = tb.tb_next
    while frame is not None and frame.f_code in own:
        with contextlib.suppress(RuntimeError):  # still running: the worker went on
            frame.clear()
        frame = frame.f_back
    while tb is not None:
        if tb.tb_frame.f_code in called:
            with contextlib.suppress(RuntimeError):
                tb.tb_frame.clear()
        tb = tb.tb_next


_codes: tuple[frozenset[CodeType], frozenset[CodeType], frozenset[CodeType]] | None = None


def _pool_codes() -> tuple[frozenset[CodeType], frozenset[CodeType], frozenset[CodeType]]:
    """The code of the pool's frames a task's traceback may hold: those that call the task
    (and of them, the worker loop's), and the methods a task may call to kill itself.
    Imported late, as those modules import this one."""
    global _codes
    if _codes is None:
        from ggopool._instrument import TaskInfo
        from ggopool._worker import _run, work

        worker = frozenset((work.__code__, _run.__code__))
        own = worker | {Task._run.__code__, TaskInfo.__call__.__code__}
        called = frozenset((Task.kill.__code__, Task.throw.__code__, Task._aim_kill.__code__))
        _codes = (own, worker, called)
    return _codes


class _Spawned:
    """A `Task.link` callback: called in a greenlet of its own (gevent's SpawnedLink),
    if the task's outcome is the one it waits for. Equal to its callback, so that
    ``unlink(callback)`` finds it."""

    __slots__ = ("callback", "when")

    def __init__(self, callback: Callable[[Any], object], when: str) -> None:
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        self.callback = callback
        self.when = when  # "done", "value" or "exception"

    def __call__(self, task: Task[Any]) -> None:
        when = self.when
        if when == "done" or (when == "value") == task.successful():
            RawGreenlet(self.callback, get_hub()).switch(task)

    def __eq__(self, other: object) -> bool:
        return bool(self.callback == getattr(other, "callback", other))

    def __hash__(self) -> int:
        return hash(self.callback)

    def __repr__(self) -> str:
        return repr(self.callback)


class Task(_TaskBase, Generic[T]):
    """A task queued with `Pool.spawn`, `Pool.submit` (or `ggopool.spawn`): wait for it,
    read its result, link to it, cancel it or kill it, as a ``gevent.Greenlet``.

    Example::

        task = ggopool.spawn(fetch, url)     # gevent.spawn(fetch, url)
        body = task.get(timeout=5)            # or gevent.joinall([task]); task.value

    Rules:

    * A task is queued when it is made, except one made by `Pool.task`, which is queued
      by ``start()`` or ``start_later(seconds)``, as an unstarted ``gevent.Greenlet``
      (see `Pool.task`). ``start()`` of a task already started does nothing.
    * ``get(block=True, timeout=None)`` returns the task's return value or raises its
      exception (with its traceback); on timeout it raises ``gevent.Timeout``. ``join``
      and ``wait`` never raise the task's exception. ``timeout`` is seconds, None, or a
      ``gevent.Timeout`` (started by the wait and raised when it expires), as gevent's.
    * A task is true while queued or running, and ``dead`` once it finished, failed,
      was killed or was cancelled, as a greenlet is.
    * Failures: a `Pool.spawn` task (and ``ggopool.spawn``'s) that raises is reported as
      gevent reports a greenlet's: to the pool's panic handler if one is set, else
      through ``hub.handle_error`` with the task as context; ``get()`` raises it as well.
      A `Pool.submit` task's exception goes only to whoever reads it, as a Future's.
    * ``kill(exception=GreenletExit, block=True, timeout=None)``: a queued task never
      runs and its outcome is ``exception``, as for a greenlet killed before it started
      (the default ``GreenletExit`` becomes its value, so ``successful()`` is True); a
      running one gets ``exception`` raised inside it, and its worker goes on with the
      next task. Each kill is a new one: a task that caught the first kill's exception
      and went on gets the second kill's, as a greenlet does. ``exception`` is an
      exception class or instance (or a ``(type, value, tb)`` triple), as gevent's;
      anything else raises TypeError at the call and kills nothing.
    * A task that raised or was killed keeps its exception and traceback, and with them
      its frames' locals, for as long as something holds the task (or the exception); no
      reference cycle keeps them longer, so a connection it held closes as soon as the
      task is dropped, as a ``concurrent.futures`` Future's would.
    * ``cancel()`` (a Future's): a queued task never runs, and ``get()`` raises
      `TaskCancelled`. ``cancelled()`` is True for a task stopped before it ran by either.
    * ``link``/``link_value``/``link_exception`` call ``callback(task)`` in a greenlet of
      its own once the task is done; ``rawlink`` calls it in the hub. Both also apply to
      a task already done.
    * Threads: a task belongs to its pool's thread; wait on it, link to it and kill it
      from there. A thread that hands work to a pool and needs the result back should
      use a thread-safe queue.
    """

    __slots__ = (
        "__weakref__",
        "_args",
        "_ctx",
        "_exc",
        "_fn",
        "_greenlet",
        "_hooks",
        "_ident",
        "_kill_exc",
        "_kwargs",
        "_later",
        "_links",
        "_name",
        "_notifier",
        "_pool",
        "_spawned",
        "_state",
        "_tb",
        "_value",
    )

    def __init__(
        self,
        pool: Pool,
        fn: Callable[..., T],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        ctx: contextvars.Context | None = None,
    ) -> None:
        self._pool = pool
        self._fn = fn
        self._args = args
        self._kwargs = kwargs if kwargs is not None else {}
        # The context it runs in: a report of a kill before it ran runs the panic handler
        # there too. Dropped once the task is done.
        self._ctx = ctx
        self._state = _PENDING
        # The outcome, once done: a value (a GreenletExit for a killed task, as gevent
        # gives), or an exception and the traceback it was raised with.
        self._value: Any = None
        self._exc: BaseException | None = None
        self._tb: TracebackType | None = None
        self._greenlet: RawGreenlet | None = None
        # What the latest kill() raised inside the running task: only that instance ends
        # the task and not its worker (a Pool.kill's exit must end the worker).
        self._kill_exc: BaseException | None = None
        self._spawned = False  # gevent-style: a failure is reported (see Pool.spawn)
        # What to call as it finishes: None, one hook, or a list of them (most tasks have
        # one, their pool's membership): no list for each task.
        self._hooks: Callable[[Task[T]], object] | list[Callable[[Task[T]], object]] | None = None
        self._links: list[Callable[[Any], object]] | None = None  # made by the first rawlink
        self._notifier: object = None
        self._name: str | None = None
        self._ident: int | None = None
        self._later: Any = None  # spawn_later's timer, while the task waits for its time

    def __repr__(self) -> str:
        name = "" if self._name is None else f" {short_repr(self._name)}"  # never raises
        call = describe_call(self._fn, self._args, self._kwargs)  # never raises
        pool = self._pool.name  # a str, checked when the pool was made
        return f"<ggopool.Task{name} of pool {pool!r} {self._state} at {id(self):#x}: {call}>"

    # -- run by the worker -------------------------------------------------------------

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._state is not _PENDING:
            # Cancelled or killed while queued: the worker skips it.
            pool = self._pool
            counts = pool._counts
            counts.skipped += 1
            counts.cancelled_queued -= 1
            if pool._slots is not None:
                # cancel() gave this task's slot back already; the worker, taking the
                # entry off the queue, has just given it back a second time.
                pool._slots.acquire(blocking=False)
            return
        self._state = _RUNNING
        self._greenlet = getcurrent()
        try:
            # A call with a fixed count of arguments: CPython 3.11 and 3.12 run fn(*args)
            # in a C-level interpreter frame of its own, which the greenlet of every task
            # blocked in fn keeps on its saved stack (about 420 B each).
            fn = self._fn
            if kwargs:
                value = fn(*args, **kwargs)
            elif not args:
                value = fn()
            elif len(args) == 1:
                value = fn(args[0])
            elif len(args) == 2:
                value = fn(args[0], args[1])
            else:
                value = fn(*args)
        except GreenletExit as exc:
            self._finish(exc, None, None)
            if exc is self._kill_exc:
                # A kill aimed at this task, not at the worker: the worker goes on.
                self._forget_frames_soon(exc)
                return
            raise  # the worker forgets the frames (work())
        except BaseException as exc:
            reported = self._spawned or isinstance(exc, get_hub().SYSTEM_ERROR)
            # A reported task keeps its arguments until the report is made, so that the
            # report names the call, as gevent's does (report_failure forgets them).
            self._finish(None, exc, exc.__traceback__, keep_call=reported)
            if reported:
                # The worker counts it and reports it (the pool's panic handler, or the
                # hub with this task as context), as gevent reports a greenlet's failure,
                # then forgets the frames (_task_failed).
                raise
            pool = self._pool
            if getcurrent() in pool._greenlets:  # not a worker inherited across a fork
                pool._counts.failed += 1
            self._forget_frames_soon(exc)
            return
        self._finish(value, None, None)

    def _forget_frames_soon(self, exc: BaseException) -> None:
        # This frame (Task._run's) is still running: it is cleared once it has returned,
        # which it has by the time the hub runs its callbacks.
        forget_frames_soon(exc, self._pool._hub.loop)

    def _finish(
        self,
        value: object,
        exc: BaseException | None,
        tb: TracebackType | None,
        keep_call: bool = False,
    ) -> None:
        self._state = _DONE
        self._set_outcome(value, exc, tb, keep_call)

    def _set_outcome(
        self,
        value: object,
        exc: BaseException | None,
        tb: TracebackType | None,
        keep_call: bool = False,
    ) -> None:
        # Plain assignments that cannot fail, so the handle always becomes ready.
        # keep_call: the arguments stay until the failure's report calls _forget_call.
        self._greenlet = None
        self._value = value
        self._exc = exc
        self._tb = tb
        if not keep_call:
            self._forget_call()
        self._ctx = None
        try:
            if self._links:
                self._schedule_notify()
        finally:
            self._run_hooks()

    def _forget_call(self) -> None:
        """Drop the call's arguments (a done task's ``args`` and ``kwargs`` are empty, as a
        dead greenlet's)."""
        self._args = ()
        self._kwargs = {}

    def _add_hook(self, hook: Callable[[Task[T]], object]) -> None:
        """Call ``hook(self)`` synchronously when the task finishes or is cancelled."""
        if self.ready():
            hook(self)
        elif self._hooks is None:
            self._hooks = hook
        elif isinstance(self._hooks, list):
            self._hooks.append(hook)
        else:
            self._hooks = [self._hooks, hook]

    def _run_hooks(self) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            for hook in hooks if isinstance(hooks, list) else (hooks,):
                try:
                    hook(self)
                except BaseException as exc:  # noqa: BLE001 - one hook must not stop the rest
                    get_hub().handle_error(self, type(exc), exc, exc.__traceback__)

    # -- the outcome -------------------------------------------------------------------

    def ready(self) -> bool:
        """True once the task has finished, raised, been killed or been cancelled."""
        return self._state is _DONE or self._state is _CANCELLED

    def successful(self) -> bool:
        """True if the task finished without raising (a killed task counts, as in gevent)."""
        return self.ready() and self._exc is None

    @property
    def dead(self) -> bool:
        """True once the task will not run any more: `ready`, as a greenlet's ``dead``."""
        return self.ready()

    @property
    def started(self) -> bool:
        """True while the task is queued or running, as a greenlet's (see ``__bool__``)."""
        return not self.ready() and self._state is not _UNSTARTED

    def __bool__(self) -> bool:
        """True while queued or running; false before `start` and once dead, as a
        ``gevent.Greenlet``."""
        return not self.ready() and self._state is not _UNSTARTED

    @property
    def value(self) -> T | None:
        """The return value (a ``GreenletExit`` if it was killed), or None if the task is not
        done or raised."""
        return cast("T | None", self._value)

    @property
    def exception(self) -> BaseException | None:
        """The exception the task raised (`TaskCancelled` if cancelled), or None: a
        property, as gevent's (a Future's ``exception()`` is a method)."""
        return self._exc

    @property
    def exc_info(self) -> tuple[type[BaseException], BaseException, TracebackType | None] | None:
        """``(type, exception, traceback)`` if the task raised, else None."""
        exc = self._exc
        return None if exc is None else (type(exc), exc, self._tb)

    def _raise_exception(self) -> None:
        # gevent.joinall(raise_error=True) and Pool.join call this when it exists. Each
        # raise starts from the traceback the task raised with, so repeated get()s do not
        # pile up frames.
        exc = self._exc
        assert exc is not None
        tb = self._tb
        # This frame goes into the traceback: it must hold neither the task, which holds the
        # exception, nor the exception (cycles, as concurrent.futures' Future breaks too).
        del self
        try:
            raise exc.with_traceback(tb)
        finally:
            del exc, tb

    @property
    def args(self) -> tuple[Any, ...]:
        """The positional arguments of the call (``()`` once it is done, as gevent's)."""
        return self._args

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the call (``{}`` once it is done, as gevent's)."""
        return self._kwargs

    @property
    def minimal_ident(self) -> int:
        """A small integer unique among the live tasks and greenlets of the hub."""
        if self._ident is None:
            self._ident = self._pool._hub.ident_registry.get_ident(self)
        return self._ident

    @property
    def name(self) -> str:
        """``Task-<minimal_ident>`` unless assigned; shown in the repr once assigned."""
        return self._name if self._name is not None else f"Task-{self.minimal_ident}"

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def loop(self) -> _Loop:
        """The event loop of the pool's hub (``gevent.killall`` schedules its kills there)."""
        return self._pool._hub.loop

    # -- waiting -----------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | Timeout | None = None) -> T:
        """The task's value, or raise its exception; see the class docstring."""
        timeout = _check_wait_timeout(timeout)
        if not self.ready():
            if not block:
                raise Timeout()
            self._wait(timeout, swallow_own_timeout=False)
        exc = self._exc
        if exc is None:
            return cast(T, self._value)
        tb = self._tb
        del self  # as in _raise_exception: this frame goes into the traceback
        try:
            raise exc.with_traceback(tb)
        finally:
            del exc, tb

    def join(self, timeout: float | Timeout | None = None) -> None:
        """Wait until the task is done or ``timeout`` passes, like ``Greenlet.join``."""
        timeout = _check_wait_timeout(timeout)
        if not self.ready():
            self._wait(timeout, swallow_own_timeout=True)

    def wait(self, timeout: float | Timeout | None = None) -> T | None:
        """Wait until the task is done or ``timeout`` passes; return its value (None if not
        ready or it raised), like ``AsyncResult.wait``."""
        self.join(timeout)
        return self.value

    def _wait(self, timeout: float | Timeout | None, swallow_own_timeout: bool) -> None:
        # gevent's Greenlet.get/join: park on a link until the task is done.
        switch = getcurrent().switch
        self.rawlink(switch)
        timer = None
        try:
            timer = None if timeout is None else Timeout.start_new(timeout)
            try:
                result = self._pool._hub.switch()
                if result is not self:
                    raise InvalidSwitchError(f"invalid switch into Task.get(): {result!r}")
            finally:
                if timer is not None:
                    timer.cancel()
        except Timeout as ex:
            self.unlink(switch)
            if not swallow_own_timeout or ex is not timer:
                raise
        except BaseException:
            self.unlink(switch)
            raise

    # -- links -------------------------------------------------------------------------

    def rawlink(self, callback: Callable[[Any], object]) -> None:
        """Call ``callback(self)`` in the hub once the task is done (at once if it is).

        The callback must not block or raise (what it raises is reported through the hub).
        ``gevent.wait``, ``gevent.iwait`` and ``gevent.joinall`` wait with it.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if self._links is None:
            self._links = [callback]
        else:
            self._links.append(callback)
        if self.ready():
            self._schedule_notify()

    def link(self, callback: Callable[[Any], object]) -> None:
        """Call ``callback(self)`` in a new greenlet once the task is done."""
        self.rawlink(_Spawned(callback, "done"))

    def link_value(self, callback: Callable[[Any], object]) -> None:
        """Like `link`, only if the task succeeded (a killed task counts, as in gevent)."""
        self.rawlink(_Spawned(callback, "value"))

    def link_exception(self, callback: Callable[[Any], object]) -> None:
        """Like `link`, only if the task raised."""
        self.rawlink(_Spawned(callback, "exception"))

    def unlink(self, callback: Callable[[Any], object]) -> None:
        """Undo `rawlink` or `link` (the first link of ``callback`` still to be called)."""
        if self._links:
            with contextlib.suppress(ValueError):
                self._links.remove(callback)

    def unlink_all(self) -> None:
        """Remove every link still to be called."""
        if self._links:
            del self._links[:]  # in place: a link running now stops the rest

    def has_links(self) -> int:
        """How many links are still to be called (a true value if any)."""
        return len(self._links) if self._links else 0

    def _schedule_notify(self) -> None:
        if self._notifier is None:
            self._notifier = self._pool._hub.loop.run_callback(self._notify_links)

    def _notify_links(self) -> None:
        # Runs in the hub. A link may unlink a later one, or add one, as gevent's may.
        try:
            links = self._links
            while links:  # None, or a list a link may change as it runs
                link = links.pop(0)
                try:
                    link(self)
                except BaseException:  # noqa: BLE001 - reported, and the next link runs
                    get_hub().handle_error((link, self), *sys.exc_info())
        finally:
            self._notifier = None

    # -- Future ------------------------------------------------------------------------

    def result(self, timeout: float | None = None) -> T:
        """Same as ``get(timeout=timeout)``."""
        try:
            return self.get(True, timeout)
        finally:
            del self  # as in _raise_exception: this frame goes into the traceback

    def done(self) -> bool:
        """Same as `ready`."""
        return self.ready()

    def add_done_callback(self, fn: Callable[[Task[T]], object]) -> None:
        """Call ``fn(self)`` in the hub once the task is done or cancelled.

        An exception from ``fn`` is reported through the hub.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        self.rawlink(fn)

    def cancel(self) -> bool:
        """Cancel the task if it has not started: True if it will never run."""
        if self._state is _CANCELLED:
            return True
        if self._state is _UNSTARTED:
            pass  # never queued: nothing to take back
        elif self._state is _LATER:
            self._stop_later()
        elif self._state is _PENDING:
            self._uncount_queued()
        else:
            return False
        self._mark_cancelled()
        return True

    def _uncount_queued(self) -> None:
        pool = self._pool
        counts = pool._counts
        counts.cancelled += 1
        counts.cancelled_queued += 1
        if pool._slots is not None:
            pool._slots.release()  # its room under max_pending is free again at once

    def _mark_cancelled(self, why: str = "was cancelled") -> None:
        """The handle's side of a cancel: it will never run, and it is ready now."""
        self._state = _CANCELLED
        self._set_outcome(None, TaskCancelled(f"{self!r} {why}"), None)

    def _mark_killed(self, exception: object) -> None:
        """The handle's side of a kill before it ran: it will never run, and its outcome
        is ``exception`` (a GreenletExit as its value), as for a greenlet killed before it
        started."""
        self._report_kill(self._set_killed(exception))

    def _set_killed(self, exception: object) -> _KillReport | None:
        """`_mark_killed` without its report: what is still to report, or None.

        `Pool.kill` marks every queued task first and reports after, because a report may
        run a panic handler that yields, and nothing may find a task it kills half-killed
        meanwhile."""
        exc = as_exception(exception)
        self._state = _CANCELLED
        if isinstance(exc, GreenletExit):
            self._set_outcome(exc, None, None)
            return None
        ctx = self._ctx  # the outcome drops it; the report runs the handler in it
        # A spawned task keeps its arguments for the report (which forgets them).
        self._set_outcome(None, exc, exc.__traceback__, keep_call=self._spawned)
        return (exc, ctx) if self._spawned else None

    def _report_kill(self, report: _KillReport | None) -> None:
        """Report a spawned task killed before it ran (`_set_killed`'s report) as gevent
        reports a greenlet killed so: as if it had raised the exception. Never raises."""
        if report is not None:
            from ggopool._panic import report_task_failure  # _panic imports this module

            exc, ctx = report
            report_task_failure(self, ctx, self._args, self._kwargs, exc)

    # -- spawn_later ---------------------------------------------------------------------

    def _queue_later(self, seconds: float) -> None:
        """Queue the task on its pool in ``seconds`` (``ggopool.spawn_later``). On a closed
        pool, or from another thread after the exit drain: PoolClosed, and the task stays as
        it was."""
        pool = self._pool
        with pool._accepting_from_any_thread():
            if pool._closed:
                pool._refuse_closed()  # as start() and spawn() on a closed pool
            # Accepted work from now on: the drain waits for it (or reports it), a forked
            # child leaves it to the parent, and a close() before its time does not
            # refuse it.
            pool._later[self] = time.monotonic() + seconds
            self._state = _LATER
        pool._in_own_thread(self._start_later, seconds)

    def _start_later(self, seconds: float) -> None:
        if self._state is not _LATER:
            return  # killed or cancelled before the hub got to it
        timer = self._pool._hub.loop.timer(seconds)
        self._later = timer
        timer.start(self._queue_now)

    def _queue_now(self) -> None:
        # Runs in the hub, when the timer fires.
        self._stop_later()
        if self._state is not _LATER:
            return
        self._state = _PENDING
        try:
            self._pool._enqueue(self, accepted=True)
        except BaseException as exc:  # noqa: BLE001 - its caller is gone: report, as a failure
            self._state = _DONE
            ctx = self._ctx
            self._set_outcome(None, exc, exc.__traceback__, keep_call=self._spawned)
            self._report_kill((exc, ctx) if self._spawned else None)

    def _stop_later(self) -> None:
        timer, self._later = self._later, None
        self._pool._later.pop(self, None)
        if timer is not None:
            timer.close()

    def _left_in_parent(self) -> None:
        """In a forked child: this task was queued (or waiting for its time) in the
        parent, and runs there."""
        if self._state is _LATER:
            self._stop_later()  # the child's copy of its timer never fires
            self._mark_cancelled("was waiting for its time at fork(): it runs in the parent")
        elif self._state is _PENDING:
            self._mark_cancelled("was queued before fork(): it runs in the parent, not here")

    def cancelled(self) -> bool:
        """True if the task was stopped before it ran: by `cancel` (``get()`` raises
        `TaskCancelled`), by `kill` or by the pool's ``kill`` (its outcome is the kill's)."""
        return self._state is _CANCELLED

    # -- killing -----------------------------------------------------------------------

    def kill(
        self,
        exception: object = GreenletExit,
        block: bool = True,
        timeout: float | Timeout | None = None,
    ) -> None:
        """Stop the task with ``exception`` (see the class docstring); with ``block``, wait
        up to ``timeout`` seconds until it is done. Never raises, as gevent's (but for a
        bad ``timeout``: TypeError, before anything happens). An ``exception`` that is not
        an exception class or instance is read as gevent's ``kill`` reads it: the task
        dies, unsuccessful, and the hub reports it."""
        timeout = _check_wait_timeout(timeout)
        exc = self._aim_kill(exception)
        if exc is None:
            return
        self._pool._hub.loop.run_callback(self._throw_kill, exc)
        if block:
            self.join(timeout)

    def _aim_kill(self, exception: object) -> BaseException | None:
        """The part `kill` and `throw` share: a queued task is killed now; a running one
        is to get ``exception``, raised at once if the task is killing itself. The
        exception still to throw into the task's greenlet, or None.

        Each kill is a new kill with its own exception, as each of gevent's is: a task
        that survived one gets the next one's."""
        if self._maybe_kill_before_start(exception) or self._state is not _RUNNING:
            return None
        exc = as_exception(exception)
        if getcurrent() is self._greenlet:
            self._kill_exc = exc
            raise exc
        return exc

    def _maybe_kill_before_start(self, exception: object) -> bool:
        """Kill the task now if it is still queued (``gevent.killall`` calls this first, so
        no task it kills starts in between). True if the task is now dead. An ``exception``
        that is no exception is read as gevent reads it, for gevent's own tests pin that a
        greenlet killed with one dies, unsuccessful (`Pool.kill` and `Pool.killone` refuse
        it instead)."""
        if self._state is _UNSTARTED:
            self._mark_killed(exception)  # never queued: it never runs, as gevent's
        elif self._state is _LATER:
            self._stop_later()
            self._mark_killed(exception)
        elif self._state is _PENDING:
            self._uncount_queued()
            self._mark_killed(exception)
        return self.ready()

    def _throw_kill(self, exc: BaseException) -> None:
        # Runs in the hub. Only if the task is still running: the worker may have moved on
        # to another task since kill() was called, and that one must not get the exit.
        if self._state is _RUNNING and self._greenlet is not None:
            self._kill_exc = exc  # the one this task may end with and its worker go on
            self._greenlet.throw(exc)

    def throw(self, *args: Any) -> None:
        """Raise an exception in the task now (from the hub, as ``gevent.killall`` does):
        a queued task is killed before it starts, a running one gets it at once."""
        exception: object = args if len(args) == 3 else (args[0] if args else GreenletExit)
        exc = self._aim_kill(exception)
        if exc is not None:
            self._throw_kill(exc)

    def start(self) -> None:
        """Queue a task made by `Pool.task` on its pool, as a member (``spawn`` queues one
        at once). Does nothing if it was started already, or killed or cancelled before it
        started, as ``gevent.Greenlet.start``. On a closed pool it raises `PoolClosed`
        and the task stays unstarted."""
        if self._state is not _UNSTARTED:
            return
        self._state = _PENDING
        try:
            self._pool._enqueue(self)
        except BaseException:
            self._state = _UNSTARTED
            raise

    def start_later(self, seconds: float) -> None:
        """Queue a task made by `Pool.task` in ``seconds`` (its pool's hub keeps the
        timer); until then it is true and `started`, as ``gevent.Greenlet.start_later``.
        Does nothing if it was started already, or killed or cancelled before it started."""
        if type(seconds) is bool or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a finite number >= 0, got {seconds!r}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        if self._state is not _UNSTARTED:
            return
        self._queue_later(seconds)

    def __enter__(self) -> Task[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # gevent's: wait for the task, then kill it (a no-op once done); if the block
        # raised, kill the task with that exception instead.
        if exc_type is None:
            try:
                self.join()
            finally:
                self.kill()
        else:
            self.kill((exc_type, exc, tb))


def is_task_runner(fn: object, pool: Pool) -> bool:
    """Whether a queued callable is the runner of a `Task` submitted to ``pool`` (and not,
    say, ``pool.go(task.kill)``, another bound method of a Task)."""
    # type() first: a proxy's __getattr__ (werkzeug's LocalProxy outside its context) may
    # raise anything, and this runs in reports, kills and a forked child's reset.
    return (
        type(fn) is MethodType and fn.__func__ is Task._run and fn.__self__._pool is pool  # type: ignore[attr-defined]
    )
