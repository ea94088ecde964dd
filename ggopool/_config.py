"""A pool's configuration: the spawn threshold and how long a parked worker waits for work."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Seconds a parked worker waits for a new task before it exits (see `Config.idle_timeout`).
DEFAULT_IDLE_TIMEOUT = 10.0


def check_int_at_least(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) >= ``minimum``; raise otherwise."""
    if type(value) is bool or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_timeout(timeout: object) -> float | None:
    """A ``timeout`` argument: None (wait as long as it takes) or seconds >= 0.

    Checked before anything happens, so a bad one changes nothing. NaN is refused: a NaN
    timer stops every gevent timer in the process. Infinity means no timeout.
    """
    if timeout is None:
        return None
    if type(timeout) is bool or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    return None if math.isinf(timeout) else timeout


@dataclass(frozen=True)
class Config:
    """How a pool decides to start workers and when its parked workers exit.

    Example::

        pool = ggopool.new_pool("audit", 50, ggopool.Config(scale_threshold=10))

    Rules:

    * ``scale_threshold`` (int >= 1, default 1): after a task is queued, one more worker
      is woken or started when at least this many tasks are queued and fewer than ``cap``
      workers are awake, or when no worker is awake at all. This is gopool's
      ``ScaleThreshold``. With 1, a burst starts up to ``cap`` workers at once, as
      ``gevent.spawn`` would; with 10, ten queued tasks are needed per extra worker.
    * ``idle_timeout`` (seconds, a finite number >= 0, or None; default 10.0): how long a
      worker whose queue ran empty stays parked on the pool's free list, waiting for the
      next task, before it exits. ``0`` makes workers exit as soon as the queue is empty,
      as gopool's goroutines do; ``None`` keeps parked workers forever. The default of 10 s
      keeps a pool's workers warm under any steady load (a task at least every ten
      seconds means no worker is ever started twice), while a one-off burst that started
      thousands of workers gives their memory back within seconds of going quiet.

    * ``max_idle`` (int >= 0 or None; default None, bounded only by ``cap``): the most
      workers the pool keeps parked. A worker whose queue ran empty while this many are
      parked exits instead of parking, so the memory parked workers hold after a burst is
      bounded by this, not by the burst. ``0`` keeps none. The default pool, whose cap is
      unlimited, ships with ``max_idle=DEFAULT_POOL_MAX_IDLE``.

    * ``max_pending`` (int >= 1 or None; default None, unbounded): the most tasks the
      pool holds queued. When it is reached, ``go``/``submit`` from an ordinary greenlet
      wait cooperatively for room (backpressure); from the hub or from one of the
      pool's own workers, where waiting could deadlock, they raise ``PoolFull``.
      ``try_go`` never waits. Without a bound, each queued task costs memory until it
      runs.

    * ``spawn_waits_when_full`` (bool, default False): ``spawn`` (and ``map``, ``imap``,
      ``add``...) wait while the pool already holds ``cap`` spawned tasks, queued or
      running, as ``gevent.pool.Pool.spawn`` does; from the hub, where nothing can
      wait, it raises `PoolFull`. With False, ``spawn`` never waits: its task is queued
      like any other. ``go`` and ``submit`` never wait for this (see the migration guide).

    A Config is validated when it is built and is immutable, so it can be shared between
    pools.
    """

    scale_threshold: int = 1
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    max_pending: int | None = None
    max_idle: int | None = None
    spawn_waits_when_full: bool = False

    def __post_init__(self) -> None:
        check_int_at_least("scale_threshold", self.scale_threshold, 1)
        if self.max_idle is not None:
            check_int_at_least("max_idle", self.max_idle, 0)
        if self.max_pending is not None:
            check_int_at_least("max_pending", self.max_pending, 1)
        if not isinstance(self.spawn_waits_when_full, bool):
            raise TypeError(
                f"spawn_waits_when_full must be a bool, got {self.spawn_waits_when_full!r}"
            )
        timeout = self.idle_timeout
        if timeout is None:
            return
        if type(timeout) is bool or not isinstance(timeout, (int, float)):
            raise TypeError(
                f"idle_timeout must be a number of seconds >= 0 or None, got {timeout!r}"
            )
        if not math.isfinite(timeout) or timeout < 0:
            raise ValueError(
                f"idle_timeout must be a finite number of seconds >= 0 or None, got {timeout!r}"
            )
