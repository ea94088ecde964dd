"""An errgroup-like fan-out: run tasks on a pool, wait for all, raise the first failure."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from gevent.event import Event

from ggopool._config import check_timeout
from ggopool._task import Task

if TYPE_CHECKING:
    from ggopool._pool import Pool

P = ParamSpec("P")
T = TypeVar("T")


class TaskGroup:
    """Tasks fanned out on a pool, waited for together (Go's ``errgroup``), from
    `Pool.group`.

    Example::

        with pool.group(cancel_on_error=True) as g:
            for url in urls:
                g.go(fetch, url)
        # here every task is done; the first failure, if any, was raised

    Rules:

    * ``g.go(fn, *args, **kwargs)`` submits to the pool, so the group's tasks respect
      the pool's cap, queue and panic-free error handling; it returns the `Task`.
    * ``g.wait(timeout=None)`` returns True when all of the group's tasks are done, then
      raises the first exception (in the order the tasks failed) if one failed; False
      if ``timeout`` passed first.
    * With ``cancel_on_error=True``, the first failure cancels the group's tasks that
      have not started; they never run. Tasks already running go on.
    * As a context manager it waits on exit. If the block itself raised, that
      exception propagates and the group's first failure is not raised over it.
    """

    def __init__(self, pool: Pool, cancel_on_error: bool = False) -> None:
        if not isinstance(cancel_on_error, bool):
            raise TypeError(f"cancel_on_error must be a bool, got {cancel_on_error!r}")
        self._pool = pool
        self._cancel_on_error = cancel_on_error
        self._tasks: list[Task[Any]] = []
        self._running = 0
        self._first_error: BaseException | None = None
        self._all_done = Event()
        self._all_done.set()

    def __repr__(self) -> str:
        return f"<ggopool.TaskGroup of pool {self._pool.name!r} tasks={len(self._tasks)}>"

    @property
    def tasks(self) -> list[Task[Any]]:
        """The group's tasks, in the order they were added."""
        return list(self._tasks)

    def go(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]:
        """Submit ``fn(*args, **kwargs)`` to the pool as one of the group's tasks."""
        task = self._pool.submit(fn, *args, **kwargs)
        self._tasks.append(task)
        self._running += 1
        self._all_done.clear()
        task._add_hook(self._task_done)
        return task

    def _task_done(self, task: Task[Any]) -> None:
        # Called synchronously as the task finishes, so a cancel_on_error cancel lands
        # before a worker can start another of the group's tasks.
        self._running -= 1
        if not task.cancelled() and not task.successful() and self._first_error is None:
            self._first_error = task.exception
            if self._cancel_on_error:
                for other in self._tasks:
                    other.cancel()
        if not self._running:
            self._all_done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for all the group's tasks; raise the first failure; False on timeout."""
        if not self._all_done.wait(check_timeout(timeout)):
            return False
        if self._first_error is not None:
            raise self._first_error
        return True

    def __enter__(self) -> TaskGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.wait()
        else:
            self._all_done.wait()
