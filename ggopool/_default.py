"""The default pool behind the module-level functions (one per thread that runs a hub of its
own), and the registry of named pools."""

from __future__ import annotations

import contextvars
import logging
import math
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from gevent._hub_local import get_hub_if_exists

from ggopool._config import Config
from ggopool._entry import Entry
from ggopool._panic import PanicHandler
from ggopool._pool import NO_THREAD, Pool, all_pools
from ggopool._task import Task, is_task_runner
from ggopool._threads import get_ident as _get_ident
from ggopool._threads import local as _thread_local

P = ParamSpec("P")
T = TypeVar("T")

#: The cap of the default pool: unlimited in practice (gopool uses math.MaxInt32).
UNLIMITED = sys.maxsize

#: The most workers the default pool keeps parked (see `Config.max_idle`).
DEFAULT_POOL_MAX_IDLE = 1000


class _DefaultPool(Pool):
    """The default pool: a pool, whose ``go`` and ``ctx_go`` from another thread with a hub
    of its own queue the task on that thread's default pool (see `go`)."""

    __slots__ = ()

    def _queue(self, task: Entry) -> None:
        # go()'s general way in: from this pool's thread it is taken only by a closed or
        # bounded pool or one with an instrument, so go()'s fast path pays nothing here.
        if _get_ident() != self._ident and not is_task_runner(task[1], self):
            pool = _thread_default(False)
            if pool is not self:
                pool._queue(task)
                return
        super()._queue(task)


_default_pool = _DefaultPool(
    "ggopool.DefaultPool", UNLIMITED, Config(max_idle=DEFAULT_POOL_MAX_IDLE)
)

#: The thread that imported ggopool, whose hub runs the default pool.
_home = _default_pool._ident

# The default pool of each other thread that runs a hub of its own, held in a real
# thread-local (monkey-patched, threading.local is per greenlet): it goes when its thread
# ends, and says what it leaves (_ThreadDefault.__del__).
_thread_defaults = _thread_local()

log = logging.getLogger("ggopool")


class _ThreadDefault:
    """Holds a thread's default pool for as long as the thread lives."""

    __slots__ = ("pid", "pool")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.pid = os.getpid()

    def __del__(self) -> None:
        # The thread has ended: its hub will never run what its default pool still holds.
        # The pool leaves every pool's list now: a later thread may get the same id, and
        # its drain() must not wait for this one.
        pool = self.pool
        all_pools.discard(pool)
        pool._ident = pool._fast_ident = NO_THREAD
        if self.pid != os.getpid():
            return  # a forked child dropping the other threads: what they hold is the parent's
        try:
            stats = pool.stats()
            left = stats.pending + stats.running
            later = len(pool._later)
            if left or later:
                log.warning(
                    "ggopool: pool %r: %d tasks abandoned (%d queued, %d running, %d "
                    "spawn_later) when its thread ended",
                    stats.name,
                    left + later,
                    stats.pending,
                    stats.running,
                    later,
                )
        except Exception:  # noqa: BLE001 - a report must never raise
            pass


def _thread_default(make_hub: bool) -> Pool:
    """The default pool for a call from a thread other than `_home`: the thread's own if
    it has a hub (or ``make_hub``: made now if it has none, as ``gevent.spawn`` does),
    else the default pool, which hands the task over to its hub."""
    if get_hub_if_exists() is None and not make_hub:
        return _default_pool
    held: _ThreadDefault | None = getattr(_thread_defaults, "held", None)
    if held is None:
        # Pool() takes this thread's hub, and makes it if there is none.
        pool = Pool(
            f"ggopool.DefaultPool (thread {_get_ident()})",
            _default_pool.cap,
            Config(max_idle=DEFAULT_POOL_MAX_IDLE),
        )
        pool.set_panic_handler(_default_pool._panic_handler)
        held = _thread_defaults.held = _ThreadDefault(pool)
    return held.pool


def default_pool() -> Pool:
    """The pool behind the module-level `go`, `ctx_go`, `set_cap`, ... functions.

    It is named ``"ggopool.DefaultPool"``, its cap is unlimited (``sys.maxsize``) and it
    is not in the registry, as in gopool. It belongs to the thread that imported ggopool;
    see `go` for the default pools of other threads that run a hub of their own.

    Its ``go`` and ``ctx_go`` are `go`'s and `ctx_go`'s: from another thread that has a hub
    of its own they queue the task on that thread's default pool (which keeps ``go`` from
    the thread that imported ggopool as cheap as any pool's). Its other methods, called
    from another thread, hand the call over as every pool's do: ``submit`` and ``spawn``
    on it are the way to hand a task to the thread that imported ggopool from a thread
    that has a hub of its own.
    """
    return _default_pool


def go(fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
    """Run ``fn(*args, **kwargs)`` on the default pool: the drop-in for ``gevent.spawn``.

    Threads: from the thread that imported ggopool, the task goes on `default_pool`.
    From another thread that has a gevent hub of its own (it has blocked in gevent, or
    called ``gevent.get_hub()``), it goes on that thread's default pool, whose workers run
    on that thread's hub, as ``gevent.spawn`` runs a greenlet there: a pool named
    ``"ggopool.DefaultPool (thread <id>)"``, made on the thread's first such call with
    `default_pool`'s cap and panic handler at that moment. From a thread with no hub,
    which would never run it, the task is handed over to `default_pool` and runs on its
    thread. (`spawn` and `spawn_later` instead make the calling thread's hub, as
    ``gevent.spawn`` does.)

    A thread's default pool runs its tasks while the thread runs its hub (blocks in
    gevent). ``ggopool.drain()`` in that thread waits for them; the exit drain covers
    only the thread that imported ggopool. If the thread ends first, what its pool still
    holds never runs, and one line on the ``ggopool`` logger at WARNING says how many
    tasks it abandoned. If the thread's hub is destroyed (``hub.destroy()``), what its
    pool had queued stays queued and runs on the thread's next hub, from the pool's next
    ``go``, ``join`` or ``ggopool.drain()`` there.
    """
    # Another thread's way (_DefaultPool._queue) is taken in the pool's general way in, so
    # that a call from this thread costs no more than Pool.go.
    _default_pool.go(fn, *args, **kwargs)


def ctx_go(
    ctx: contextvars.Context, fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs
) -> None:
    """`Pool.ctx_go` on the default pool (from other threads, the pool `go` chooses)."""
    _default_pool.ctx_go(ctx, fn, *args, **kwargs)


def set_cap(cap: int) -> None:
    """`Pool.set_cap` on the default pool (of the thread that imported ggopool, from
    any thread)."""
    _default_pool.set_cap(cap)


def set_panic_handler(handler: PanicHandler | None) -> None:
    """`Pool.set_panic_handler` on the default pool (of the thread that imported
    ggopool, from any thread)."""
    _default_pool.set_panic_handler(handler)


def worker_count() -> int:
    """`Pool.worker_count` of the default pool (of the thread that imported ggopool)."""
    return _default_pool.worker_count()


def new_pool(name: str, cap: int, config: Config | None = None) -> Pool:
    """Make a pool named ``name`` that runs at most ``cap`` tasks at once.

    ``cap`` is an int >= 1 and ``name`` a non-empty str; ``config`` defaults to
    ``Config()``. The pool is not registered: see `register_pool`.
    """
    return Pool(name, cap, config)


_registry: dict[str, Pool] = {}


def register_pool(pool: Pool) -> None:
    """Make ``pool`` findable by its name with `get_pool`.

    A second pool under a name already registered raises ValueError and changes nothing.
    """
    if not isinstance(pool, Pool):
        raise TypeError(f"pool must be a ggopool.Pool, got {pool!r}")
    # setdefault is one step under the GIL, so two threads cannot both register a name.
    if _registry.setdefault(pool.name, pool) is not pool:
        raise ValueError(f"a pool named {pool.name!r} is already registered")


def get_pool(name: str) -> Pool | None:
    """The registered pool named ``name``, or None."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r}")
    return _registry.get(name)


def spawn(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]:
    """`Pool.spawn` on the default pool: ``gevent.spawn(fn)`` -> ``ggopool.spawn(fn)``.

    The `Task` it returns works as the greenlet did (``get``, ``join``, ``link``, ``kill``,
    ``gevent.joinall``...), and a failure is reported through the hub as gevent reports a
    greenlet's (or to the default pool's panic handler, if one is set).

    Threads: from the thread that imported ggopool, the task goes on `default_pool`. From
    any other thread it goes on that thread's default pool (see `go`), as ``gevent.spawn``
    runs a greenlet on the calling thread's hub; a thread with no hub gets one made, as
    ``gevent.spawn`` makes it. The handle belongs to that thread: wait on it there (the
    task runs while the thread blocks in gevent, in ``join``, say). To hand a task to the
    thread that imported ggopool instead, call ``pool.spawn`` on a pool of that thread
    (``ggopool.default_pool().spawn(fn)``).
    """
    if _get_ident() == _home:
        return _default_pool.spawn(fn, *args, **kwargs)
    return _thread_default(True).spawn(fn, *args, **kwargs)


def spawn_later(
    seconds: float, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> Task[T]:
    """``gevent.spawn_later``: `spawn` ``fn(*args, **kwargs)`` on the default pool in
    ``seconds`` (a finite number >= 0). Until then the task is waiting: killing or
    cancelling it stops it from ever being queued.

    It is accepted work from the call on: `drain` and the drain at exit wait for it if its
    time comes within their deadline, and log it as left otherwise. In a child forked
    meanwhile it is cancelled at once, and runs only in the parent.

    From a thread other than the one that imported ggopool, its pool is that thread's
    default pool, as for `spawn`."""
    if type(seconds) is bool or not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a finite number >= 0, got {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    pool = _default_pool if _get_ident() == _home else _thread_default(True)
    task: Task[T] = Task(pool, fn, args, kwargs, contextvars.copy_context())
    task._spawned = True
    task._queue_later(seconds)
    return task
