"""What happens when a task raises: the pool's panic handler, or gevent's hub."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING

from gevent import get_hub
from greenlet import GreenletExit

from ggopool._task import Task

if TYPE_CHECKING:
    from ggopool._pool import Pool

#: ``handler(ctx, exc)``: ctx is the failed task's ``contextvars.Context``.
PanicHandler = Callable[[contextvars.Context, Exception], object]


def _describe(fn: object) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else repr(fn)


class FailedTask:
    """The ``context`` passed to ``hub.handle_error`` for a task that raised.

    Its repr names the pool and the task, so gevent's report reads
    ``<task f of pool 'name'> failed with ZeroDivisionError``. An application that
    overrides ``handle_error`` can read ``pool`` and ``task`` from it.
    """

    __slots__ = ("pool", "task", "what")

    def __init__(self, pool: Pool, task: object, what: str = "task") -> None:
        self.pool = pool
        self.task = task
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what} {_describe(self.task)} of pool {self.pool.name!r}>"


def report_failure(pool: Pool, ctx: contextvars.Context, fn: object, exc: BaseException) -> None:
    """Send a task's exception to the pool's panic handler, or to the hub.

    Only an ``Exception`` goes to the handler. The hub's ``SYSTEM_ERROR``s
    (KeyboardInterrupt, SystemExit, SystemError) and other ``BaseException``s go to the
    hub exactly as gevent reports them for its own greenlets, so a KeyboardInterrupt in a
    task still reaches the main greenlet. The hub is looked up at each call, so an
    application that replaced ``handle_error`` on it sees every failure.
    """
    hub = get_hub()
    handler = pool._panic_handler
    if handler is None or not isinstance(exc, Exception) or isinstance(exc, hub.SYSTEM_ERROR):
        # A submitted task reaches here only with a system error; name the callable the
        # caller submitted, not the handle's runner.
        handle = getattr(fn, "__self__", None)
        task = handle._fn if isinstance(handle, Task) else fn
        hub.handle_error(FailedTask(pool, task), type(exc), exc, exc.__traceback__)
        return
    try:
        # In the task's own context, so a handler that logs sees the task's request id.
        ctx.run(handler, ctx, exc)
    except GreenletExit:
        raise  # the worker was killed while in the handler: it ends, as in a task
    except BaseException as handler_exc:  # noqa: BLE001 - a handler must never kill its worker
        get_hub().handle_error(
            FailedTask(pool, handler, "panic handler"),
            type(handler_exc),
            handler_exc,
            handler_exc.__traceback__,
        )
