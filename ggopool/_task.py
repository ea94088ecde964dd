"""The handle of a submitted task: gevent's AsyncResult and concurrent.futures' Future in one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from gevent import get_hub
from gevent.event import AsyncResult
from greenlet import GreenletExit, getcurrent
from greenlet import greenlet as Greenlet

from ggopool._config import check_timeout
from ggopool._describe import callable_name
from ggopool._errors import TaskCancelled

if TYPE_CHECKING:
    from ggopool._pool import Pool

T = TypeVar("T")

_PENDING, _RUNNING, _DONE, _CANCELLED = "pending", "running", "done", "cancelled"


class Task(Generic[T]):
    """A task queued with `Pool.submit` (or `ggopool.spawn`): wait for it, read its result,
    cancel it or kill it.

    Example::

        task = pool.submit(fetch, url)
        body = task.get(timeout=5)        # or task.result(5), as with a Future

    Rules:

    * ``get(block=True, timeout=None)`` returns the task's return value or raises its
      exception (with its traceback); on timeout it raises ``gevent.Timeout``, as
      ``AsyncResult.get`` does. The exception goes to the caller of ``get``, not to the
      pool's panic handler.
    * ``wait(timeout=None)`` and ``join(timeout=None)`` never raise the task's exception;
      ``wait`` returns the value (None if not ready), like ``AsyncResult.wait``.
    * ``cancel()`` succeeds (True) only while the task is queued: it will never run, and
      ``get()`` raises `TaskCancelled` (a ``concurrent.futures.CancelledError``).
    * ``kill(block=True, timeout=None)``: a queued task is cancelled; a running one gets
      ``GreenletExit`` raised inside it, its value becomes that ``GreenletExit`` (as for a
      killed ``gevent.Greenlet``) and the worker goes on with the next task.
    * ``rawlink``/``unlink`` make a task usable with ``gevent.wait`` and
      ``gevent.joinall``.
    * Threads: a task belongs to its pool's thread, like the ``AsyncResult`` it wraps;
      wait on it, cancel it and kill it from there. A thread that hands work to a pool
      and needs the result back should use a thread-safe queue.
    """

    __slots__ = (
        "__weakref__",
        "_fn",
        "_greenlet",
        "_hooks",
        "_kill_exc",
        "_links",
        "_pool",
        "_result",
        "_state",
    )

    def __init__(self, pool: Pool, fn: Callable[..., T]) -> None:
        self._pool = pool
        self._fn = fn
        # Any: a killed task's value is its GreenletExit, as for a killed gevent.Greenlet.
        self._result: AsyncResult[Any] = AsyncResult()
        self._state = _PENDING
        self._greenlet: Greenlet | None = None
        # The GreenletExit that kill() throws: only that one instance ends the task and
        # not its worker (a Pool.kill's exit landing first must end the worker).
        self._kill_exc: GreenletExit | None = None
        self._hooks: list[Callable[[Task[T]], object]] | None = None
        self._links: dict[Callable[[Any], object], Callable[[Any], object]] | None = None

    def __repr__(self) -> str:
        return f"<ggopool.Task {callable_name(self._fn)} of pool {self._pool.name!r} {self._state}>"

    # -- run by the worker -------------------------------------------------------------

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._state is not _PENDING:
            # Cancelled while queued: the worker skips it.
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
            value = self._fn(*args, **kwargs)
        except GreenletExit as exc:
            self._finish(exc, None)
            if exc is self._kill_exc:
                return  # a kill aimed at this task, not at the worker: the worker goes on
            raise
        except BaseException as exc:
            self._finish(None, exc)
            if isinstance(exc, get_hub().SYSTEM_ERROR):
                raise  # the worker reports it to the hub, as gevent does, and counts it
            self._pool._counts.failed += 1
            return
        self._finish(value, None)

    def _finish(self, value: object, exc: BaseException | None) -> None:
        self._state = _DONE
        self._greenlet = None
        try:
            if exc is None:
                self._result.set(value)
            else:
                try:
                    self._result.set_exception(exc, (type(exc), exc, exc.__traceback__))
                except BaseException:  # noqa: BLE001
                    # gevent could not keep the traceback (one thousands of frames deep
                    # fails to serialise): keep the exception, which still carries it.
                    self._result.set_exception(exc)
        finally:
            self._run_hooks()

    def _add_hook(self, hook: Callable[[Task[T]], object]) -> None:
        """Call ``hook(self)`` synchronously when the task finishes or is cancelled."""
        if self.ready():
            hook(self)
        elif self._hooks is None:
            self._hooks = [hook]
        else:
            self._hooks.append(hook)

    def _run_hooks(self) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks:
            for hook in hooks:
                try:
                    hook(self)
                except BaseException as exc:  # noqa: BLE001 - one hook must not stop the rest
                    get_hub().handle_error(self, type(exc), exc, exc.__traceback__)

    # -- AsyncResult -------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """The task's value, or raise its exception; see the class docstring."""
        return cast(T, self._result.get(block, check_timeout(timeout)))

    def wait(self, timeout: float | None = None) -> T | None:
        """Wait until the task is done; return its value (None if not ready or it raised)."""
        return cast("T | None", self._result.wait(check_timeout(timeout)))

    def join(self, timeout: float | None = None) -> None:
        """Wait until the task is done or ``timeout`` passes, like ``Greenlet.join``."""
        self._result.wait(check_timeout(timeout))

    def ready(self) -> bool:
        """True once the task has finished, raised, been killed or been cancelled."""
        return bool(self._result.ready())

    def successful(self) -> bool:
        """True if the task finished without raising (a killed task counts, as in gevent)."""
        return bool(self._result.successful())

    @property
    def value(self) -> T | None:
        """The return value, or None if the task is not done or raised."""
        return cast("T | None", self._result.value)

    @property
    def exception(self) -> BaseException | None:
        """The exception the task raised (`TaskCancelled` if cancelled), or None."""
        return self._result.exception

    def rawlink(self, callback: Callable[[Any], object]) -> None:
        """Call ``callback(self)`` in the hub once the task is done (for ``gevent.wait``)."""
        if self._links is None:
            self._links = {}

        def link(_: object) -> None:
            callback(self)

        self._links[callback] = link
        self._result.rawlink(link)

    def unlink(self, callback: Callable[[Any], object]) -> None:
        """Undo `rawlink`."""
        if self._links is not None:
            link = self._links.pop(callback, None)
            if link is not None:
                self._result.unlink(link)

    # -- Future ------------------------------------------------------------------------

    def result(self, timeout: float | None = None) -> T:
        """Same as ``get(timeout=timeout)``."""
        return self.get(True, timeout)

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
        if self._state is not _PENDING:
            return False
        pool = self._pool
        counts = pool._counts
        counts.cancelled += 1
        counts.cancelled_queued += 1
        if pool._slots is not None:
            pool._slots.release()  # its room under max_pending is free again at once
        self._mark_cancelled()
        return True

    def _mark_cancelled(self, why: str = "was cancelled") -> None:
        """The handle's side of a cancel: it will never run, and it is ready now."""
        self._state = _CANCELLED
        try:
            self._result.set_exception(TaskCancelled(f"{self!r} {why}"))
        finally:
            self._run_hooks()

    def _left_in_parent(self) -> None:
        """In a forked child: this task was queued in the parent, and runs there."""
        if self._state is _PENDING:
            self._mark_cancelled("was queued before fork(): it runs in the parent, not here")

    def cancelled(self) -> bool:
        """True if `cancel` (or `kill`, or the pool's ``kill``) stopped it before it ran."""
        return self._state is _CANCELLED

    def kill(self, block: bool = True, timeout: float | None = None) -> None:
        """Cancel the task if queued; raise ``GreenletExit`` inside it if running.

        With ``block`` it waits (up to ``timeout`` seconds) until the task is done.
        """
        timeout = check_timeout(timeout)
        if self._state is _PENDING:
            self.cancel()
            return
        if self._state is not _RUNNING:
            return
        if self._kill_exc is None:
            self._kill_exc = GreenletExit()
        if getcurrent() is self._greenlet:
            raise self._kill_exc
        self._pool._hub.loop.run_callback(self._throw)
        if block:
            self._result.wait(timeout)

    def _throw(self) -> None:
        # Runs in the hub. Only if the task is still running: the worker may have moved on
        # to another task since kill() was called, and that one must not get the exit.
        exc = self._kill_exc
        if self._state is _RUNNING and self._greenlet is not None and exc is not None:
            self._greenlet.throw(exc)


def is_task_runner(fn: object, pool: Pool) -> bool:
    """Whether a queued callable is the runner of a `Task` submitted to ``pool`` (and not,
    say, ``pool.go(task.kill)``, another bound method of a Task)."""
    return getattr(fn, "__func__", None) is Task._run and fn.__self__._pool is pool  # type: ignore[attr-defined]
