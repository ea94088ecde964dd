"""The pool: its task list, its counts and gopool's rule for when one more worker runs."""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from gevent import spawn_raw
from gevent.lock import Semaphore

from ggopool._config import Config, check_int_at_least
from ggopool._panic import PanicHandler
from ggopool._worker import work

P = ParamSpec("P")
T = TypeVar("T")

#: One queued task: the context it runs in, the callable and its arguments.
Task = tuple[contextvars.Context, Callable[..., object], tuple[Any, ...], dict[str, Any]]


def _check_callable(fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")


def check_cap(cap: object) -> int:
    return check_int_at_least("cap", cap, 1)


class Pool:
    """A pool of reusable worker greenlets that run queued tasks, at most ``cap`` at once.

    Where an application writes ``gevent.spawn(fn, x)`` it writes ``pool.go(fn, x)``::

        pool = ggopool.new_pool("notify", 100)
        pool.go(send_webhook, order_id)

    Rules:

    * ``go()`` never blocks and never switches greenlets: the task is queued and starts
      after the caller yields, as with ``gevent.spawn``. Tasks start in FIFO order.
    * After each ``go()``, gopool's rule decides whether one more worker should run:
      ``(task_count() >= scale_threshold and awake < cap) or awake == 0``, where *awake*
      counts workers that are running a task or already woken. If so, a parked worker is
      woken, or, when none is parked, a new worker greenlet is started.
    * A worker runs tasks until the queue is empty, then parks on the pool's free list
      for ``Config.idle_timeout`` seconds waiting to be woken, then exits.
      ``worker_count()`` (running and parked) never exceeds ``cap``.
    * A task runs in the caller's ``contextvars`` (copied when it is queued), so request
      ids and tracing spans survive, and what it sets never leaks into the next task.
    * An ``Exception`` from a task goes to the panic handler as ``handler(ctx, exc)``, or,
      with none set, to ``gevent.get_hub().handle_error``; the worker survives.
      KeyboardInterrupt, SystemExit and SystemError go to the hub, which raises them in
      the main greenlet. A worker killed with ``GreenletExit`` ends; another takes the
      queue.

    Pools are used from the thread whose hub runs their workers.
    """

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
        self._threshold = config.scale_threshold
        self._idle_timeout = config.idle_timeout
        self._panic_handler: PanicHandler | None = None
        self._tasks: deque[Task] = deque()
        # Live workers, running or parked; and how many of those are parked and not yet
        # granted a wake-up. Workers that are awake: _workers - _idle.
        self._workers = 0
        self._idle = 0
        # The gevent Semaphore that parked workers wait on. Its counter is the number of
        # wake-ups granted by the spawn rule and not yet taken. A wake-up costs one
        # release and one acquire; a task queued while workers are busy costs nothing,
        # because a running worker takes the next task straight off the deque. Any
        # parked worker may take any wake-up: the rule only asks that one more runs.
        self._wakeups = Semaphore(0)
        # Wake-ups granted by set_cap to parked workers above a lowered cap: whoever
        # takes one exits (the count was already lowered).
        self._retiring = 0

    def __repr__(self) -> str:
        return (
            f"<ggopool.Pool {self._name!r} cap={self._cap} workers={self._workers} "
            f"idle={self._idle} queued={len(self._tasks)}>"
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

    def set_cap(self, cap: int) -> None:
        """Change the most workers this pool runs at once; it takes effect at once.

        Raising the cap wakes or starts workers for tasks already queued, as ``go()``
        would have had the cap been this high. Lowering it loses no task: parked workers
        above the new cap exit now, and running ones leave after their current task.
        A bad cap raises and leaves the cap as it was.
        """
        check_cap(cap)
        self._cap = cap
        excess = self._workers - cap
        if excess > 0:
            # Retire parked workers first: they are not running anything. Each takes a
            # wake-up, finds itself over the cap and exits; they are uncounted now.
            retiring = min(excess, self._idle)
            self._idle -= retiring
            self._workers -= retiring
            self._retiring += retiring
            for _ in range(retiring):
                self._wakeups.release()
        else:
            queued = len(self._tasks)
            while queued and self._should_add_worker():
                self._add_worker()
                queued -= 1

    def set_panic_handler(self, handler: PanicHandler | None) -> None:
        """Send the ``Exception``s of this pool's tasks to ``handler(ctx, exc)``.

        ``ctx`` is the task's ``contextvars.Context`` and the handler runs inside it;
        ``exc`` keeps its ``__traceback__``. ``None`` restores the default, which reports
        through ``gevent.get_hub().handle_error``. A handler that raises is itself
        reported through the hub, and the worker goes on.
        """
        if handler is not None and not callable(handler):
            raise TypeError(f"panic handler must be callable or None, got {handler!r}")
        self._panic_handler = handler

    def go(self, fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Queue ``fn(*args, **kwargs)`` to run on one of the pool's workers.

        The task runs in a copy of the caller's ``contextvars.Context``. ``go()`` never
        blocks and never yields; a non-callable ``fn`` raises TypeError and queues nothing.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        self._tasks.append((contextvars.copy_context(), fn, args, kwargs))
        if self._should_add_worker():
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
        self._tasks.append((ctx.copy(), fn, args, kwargs))
        if self._should_add_worker():
            self._add_worker()

    def worker_count(self) -> int:
        """Live workers: those running a task and those parked waiting for one."""
        return self._workers

    def task_count(self) -> int:
        """Tasks queued and not yet started."""
        return len(self._tasks)

    # -- gopool's spawn rule ---------------------------------------------------------

    def _should_add_worker(self) -> bool:
        """gopool's rule, evaluated after a task is queued: should one more worker run?"""
        awake = self._workers - self._idle
        return (len(self._tasks) >= self._threshold and awake < self._cap) or awake == 0

    def _add_worker(self) -> None:
        """Wake a parked worker, or start one if none is parked and the cap allows."""
        # Nothing between the rule's check and these increments can yield, and a pool is
        # used from one thread, so no other greenlet can run in between: two go() calls
        # can never both see room for the last worker below the cap. (gopool checks and
        # increments separately across goroutines and can overshoot; gopkg #231.)
        if self._idle:
            self._idle -= 1
            self._wakeups.release()
        elif self._workers < self._cap:
            self._workers += 1
            spawn_raw(work, self)
