"""What happens when a task raises: the pool's panic handler, or gevent's hub."""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gevent import get_hub
from greenlet import GreenletExit

from ggopool._describe import describe_call
from ggopool._instrument import unwrap
from ggopool._task import Task, is_task_runner

if TYPE_CHECKING:
    from ggopool._pool import Pool

PanicHandler = Callable[[contextvars.Context, Exception], object]
"""A panic handler, ``handler(ctx, exc)``: ctx is the failed task's ``contextvars.Context``."""


class FailedTask:
    """The ``context`` passed to ``hub.handle_error`` for a task that raised.

    Its repr names the call and the pool, so gevent's report reads
    ``<task fetch('bad') of pool 'name'> failed with ValueError``; it never raises,
    whatever the callable's or the arguments' ``repr()`` does. An application that
    overrides ``handle_error`` can read ``pool``, ``task`` (the callable), ``args`` and
    ``kwargs`` from it.
    """

    __slots__ = ("args", "kwargs", "pool", "task", "what")

    def __init__(
        self,
        pool: Pool,
        task: object,
        what: str = "task",
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.pool = pool
        self.task = task
        self.what = what
        self.args = args
        self.kwargs = kwargs if kwargs is not None else {}

    @property
    def call(self) -> str:
        """The call, short: ``fetch('bad', retries=3)``, arguments' reprs bounded."""
        return describe_call(self.task, self.args, self.kwargs)

    def __repr__(self) -> str:
        return f"<{self.what} {self.call} of pool {self.pool.name!r}>"


_failed_task: contextvars.ContextVar[FailedTask | None] = contextvars.ContextVar(
    "ggopool.failed_task", default=None
)


def failed_task() -> FailedTask | None:
    """Inside a panic handler: the failed task (its pool, callable and arguments), else None.

    A handler that logs can name the call without being passed it::

        def log_failure(ctx, exc):
            failed = ggopool.failed_task()
            logger.error("%s failed", failed.call, exc_info=exc)
    """
    return _failed_task.get()


def _call_handler(
    handler: PanicHandler, failed: FailedTask, ctx: contextvars.Context, exc: Exception
) -> None:
    token = _failed_task.set(failed)
    try:
        handler(ctx, exc)
    finally:
        _failed_task.reset(token)


class _Worker:
    """The ``context`` for an exception that ended a worker outside any task."""

    __slots__ = ("pool",)

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def __repr__(self) -> str:
        return (
            f"<worker of pool {self.pool.name!r}, not running a task (an exception thrown "
            "into a worker between tasks: a gevent.Timeout or a kill that an earlier task "
            "left behind?)>"
        )


def report_failure(
    pool: Pool,
    ctx: contextvars.Context,
    fn: object,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    exc: BaseException,
) -> None:
    """Send a task's exception to the pool's panic handler, or to the hub. Never raises
    (but a GreenletExit that kills the worker while it is in the handler).

    Only an ``Exception`` goes to the handler. The hub's ``SYSTEM_ERROR``s
    (KeyboardInterrupt, SystemExit, SystemError) and other ``BaseException``s go to the
    hub exactly as gevent reports them for its own greenlets, so a KeyboardInterrupt in a
    task still reaches the main greenlet. The hub is looked up at each call, so an
    application that replaced ``handle_error`` on it sees every failure. If reporting
    itself fails (a broken stderr, a ``handle_error`` that raises), one line goes to
    ``sys.__stderr__`` if it can, and the worker goes on.
    """
    handle = None  # a Task's: it kept its arguments for this report (Task._run)
    try:
        hub = get_hub()
        handler = pool._panic_handler
        spawned = None  # a spawned Task: the hub gets it as context, as gevent a greenlet
        fn = unwrap(fn)  # an instrument's entry: what it ran
        if is_task_runner(fn, pool):
            # Name the callable the caller submitted and its arguments, not the runner.
            handle = fn.__self__  # type: ignore[attr-defined]
            spawned = handle if handle._spawned else None
            fn, args, kwargs = handle._fn, args[0], args[1]
        failed = FailedTask(pool, fn, args=args, kwargs=kwargs)
        if handler is None or not isinstance(exc, Exception) or isinstance(exc, hub.SYSTEM_ERROR):
            # (A submitted task that is not spawned reaches here only with a system error.)
            context = failed if spawned is None else spawned
            hub.handle_error(context, type(exc), exc, exc.__traceback__)
            return
        try:
            # In a copy of the task's context, so a handler that logs sees the task's request
            # id. A copy: the context itself may be entered meanwhile, if the handler yields
            # (a task killed while queued is reported from the killer, and a worker that
            # skips it enters its context), and a context can be entered only once at a time.
            ctx.copy().run(_call_handler, handler, failed, ctx, exc)
        except GreenletExit:
            raise  # the worker was killed while in the handler: it ends, as in a task
        except BaseException as handler_exc:  # noqa: BLE001 - a handler must never kill its worker
            hub.handle_error(
                FailedTask(pool, handler, "panic handler"),
                type(handler_exc),
                handler_exc,
                handler_exc.__traceback__,
            )
    except GreenletExit:
        raise
    except BaseException as report_exc:  # noqa: BLE001 - reporting must not end the worker
        _last_resort(pool, "a task failed", exc, report_exc)
    finally:
        if handle is not None:
            handle._forget_call()  # a done task's args are empty, as a dead greenlet's


def report_task_failure(
    task: Task[Any],
    ctx: contextvars.Context | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    exc: BaseException,
) -> None:
    """A spawned task killed before it ran, with an exception that is not a GreenletExit:
    report it as if it had raised that (gevent reports a greenlet killed so). Never raises."""
    if ctx is None:
        ctx = contextvars.Context()
    report_failure(task._pool, ctx, task._run, (args, kwargs), {}, exc)


def report_worker_failure(pool: Pool, exc: BaseException) -> None:
    """An exception ended a worker between tasks: report it through the hub. Never raises."""
    try:
        get_hub().handle_error(_Worker(pool), type(exc), exc, exc.__traceback__)
    except BaseException as report_exc:  # noqa: BLE001 - reporting must not raise
        _last_resort(pool, "a worker ended between tasks", exc, report_exc)


def _last_resort(pool: Pool, what: str, exc: BaseException, report_exc: BaseException) -> None:
    # Nowhere left to say it if this fails too.
    with contextlib.suppress(BaseException):
        sys.__stderr__.write(  # type: ignore[union-attr]
            f"ggopool: pool {pool.name!r}: {what} with {type(exc).__name__}, and "
            f"reporting it failed with {type(report_exc).__name__}\n"
        )
