"""The default pool behind the module-level functions, and the registry of named pools."""

from __future__ import annotations

import contextvars
import math
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from ggopool._config import Config
from ggopool._panic import PanicHandler
from ggopool._pool import Pool
from ggopool._task import Task

P = ParamSpec("P")
T = TypeVar("T")

#: The cap of the default pool: unlimited in practice (gopool uses math.MaxInt32).
UNLIMITED = sys.maxsize

#: The most workers the default pool keeps parked (see `Config.max_idle`).
DEFAULT_POOL_MAX_IDLE = 1000

_default_pool = Pool("ggopool.DefaultPool", UNLIMITED, Config(max_idle=DEFAULT_POOL_MAX_IDLE))


def default_pool() -> Pool:
    """The pool behind the module-level `go`, `ctx_go`, `set_cap`, ... functions.

    It is named ``"ggopool.DefaultPool"``, its cap is unlimited (``sys.maxsize``) and it
    is not in the registry, as in gopool.
    """
    return _default_pool


def go(fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
    """Run ``fn(*args, **kwargs)`` on the default pool: the drop-in for ``gevent.spawn``."""
    _default_pool.go(fn, *args, **kwargs)


def ctx_go(
    ctx: contextvars.Context, fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs
) -> None:
    """`Pool.ctx_go` on the default pool."""
    _default_pool.ctx_go(ctx, fn, *args, **kwargs)


def set_cap(cap: int) -> None:
    """`Pool.set_cap` on the default pool."""
    _default_pool.set_cap(cap)


def set_panic_handler(handler: PanicHandler | None) -> None:
    """`Pool.set_panic_handler` on the default pool."""
    _default_pool.set_panic_handler(handler)


def worker_count() -> int:
    """`Pool.worker_count` of the default pool."""
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
    """
    return _default_pool.spawn(fn, *args, **kwargs)


def spawn_later(
    seconds: float, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> Task[T]:
    """``gevent.spawn_later``: `spawn` ``fn(*args, **kwargs)`` on the default pool in
    ``seconds`` (a finite number >= 0). Until then the task is waiting: killing or
    cancelling it stops it from ever being queued.

    It is accepted work from the call on: `drain` and the drain at exit wait for it if its
    time comes within their deadline, and log it as left otherwise. In a child forked
    meanwhile it is cancelled at once, and runs only in the parent."""
    if type(seconds) is bool or not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a finite number >= 0, got {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    task: Task[T] = Task(_default_pool, fn, args, kwargs, contextvars.copy_context())
    task._spawned = True
    task._queue_later(seconds)
    return task
