"""The module-level functions on the default pool, and the registry of named pools."""

from __future__ import annotations

import contextvars
import re
import sys
import types
from collections.abc import Callable
from typing import Any

import gevent
import greenlet
import pytest
from gevent.event import Event

import ggopool
from ggopool import Config
from ggopool._default import DEFAULT_POOL_MAX_IDLE
from ggopool._worker import Worker
from tests.conftest import HubErrors

var: contextvars.ContextVar[int] = contextvars.ContextVar("var", default=0)


def test_default_pool_is_named_unlimited_and_unregistered() -> None:
    pool = ggopool.default_pool()
    assert isinstance(pool, ggopool.Pool)
    assert pool.name == "ggopool.DefaultPool"
    assert pool.cap == sys.maxsize
    assert ggopool.get_pool("ggopool.DefaultPool") is None


def test_module_functions_act_on_the_default_pool(hub_errors: HubErrors) -> None:
    gate = Event()
    got: list[int] = []
    ggopool.set_cap(2)
    assert ggopool.default_pool().cap == 2
    for _ in range(5):
        ggopool.go(gate.wait)
    assert ggopool.worker_count() == 2
    ctx = contextvars.Context()
    ctx.run(var.set, 9)
    ggopool.ctx_go(ctx, lambda: got.append(var.get()))
    handled: list[object] = []
    ggopool.set_panic_handler(lambda c, e: handled.append(type(e)))
    ggopool.go(lambda: 1 / 0)
    gate.set()
    gevent.idle()
    gevent.idle()
    assert got == [9]
    assert handled == [ZeroDivisionError]
    with pytest.raises(ValueError, match=r"^cap must be an int >= 1, got 0$"):
        ggopool.set_cap(0)
    assert ggopool.default_pool().cap == 2


def test_register_and_get_pool() -> None:
    pool = ggopool.new_pool("registry-test-a", 3)
    assert ggopool.get_pool("registry-test-a") is None  # new_pool does not register
    ggopool.register_pool(pool)
    assert ggopool.get_pool("registry-test-a") is pool
    other = ggopool.new_pool("registry-test-a", 5)
    with pytest.raises(ValueError, match=r"^a pool named 'registry-test-a' is already registered$"):
        ggopool.register_pool(other)
    assert ggopool.get_pool("registry-test-a") is pool
    assert ggopool.get_pool("no-such-pool") is None


def test_registry_bad_input() -> None:
    with pytest.raises(TypeError, match=r"^pool must be a ggopool.Pool, got 'p'$"):
        ggopool.register_pool("p")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^name must be a str, got 3$"):
        ggopool.get_pool(3)  # type: ignore[arg-type]


def test_public_names() -> None:
    # Submodules (ggopool.bench, ggopool.locust) become attributes once imported: not names.
    public = {
        n
        for n in dir(ggopool)
        if not n.startswith("_") and not isinstance(getattr(ggopool, n), types.ModuleType)
    }
    assert set(ggopool.__all__) == public - {"annotations"}


# -- what the default pool costs after a burst -----------------------------------------------


def workers_switched_to(run: Callable[[], object]) -> set[int]:
    """The ids of the distinct ggopool worker greenlets that ran while ``run()`` ran."""
    seen: set[int] = set()

    def trace(event: str, args: Any) -> None:
        if event in ("switch", "throw") and isinstance(args[1], Worker):
            seen.add(id(args[1]))

    old = greenlet.settrace(trace)
    try:
        run()
    finally:
        greenlet.settrace(old)
    return seen


def test_a_burst_that_never_yields_counts_gopools_workers_but_makes_one_greenlet() -> None:
    pool = ggopool.default_pool()
    gevent.idle()  # whatever earlier tests left parked settles first
    parked_before = pool.stats().idle
    done: list[int] = []
    n = 10_000

    def burst() -> None:
        for i in range(n):
            ggopool.go(done.append, i)
        # gopool's count: threshold 1, unlimited cap, so every go() counted one more worker
        # (or woke a parked one).
        assert ggopool.worker_count() == max(n, parked_before)
        assert pool.join(10)

    # A worker lets the loop run once it is a switch interval overdue, and another worker then
    # takes the next tasks (test_fairness.py covers that). A long interval keeps this burst
    # within one turn of the loop however slow the machine, so what is counted here is the
    # spawn rule alone.
    interval = gevent.getswitchinterval()
    gevent.setswitchinterval(60)
    try:
        switched = workers_switched_to(burst)
    finally:
        gevent.setswitchinterval(interval)
    assert len(done) == n
    # Only the workers that actually ran are greenlets: the first one took every task, and
    # each woken parked worker found the queue empty; no new one was made for the other
    # starts. Afterwards the pool holds what the load used, not what the burst counted.
    assert len(switched) <= 1 + parked_before
    stats = pool.stats()
    assert stats.running == 0
    assert stats.workers == stats.idle <= 1 + parked_before
    assert len(pool._greenlets) == stats.workers


def test_the_default_pool_keeps_at_most_max_idle_workers_parked() -> None:
    pool = ggopool.default_pool()
    assert pool.config.max_idle == DEFAULT_POOL_MAX_IDLE == 1000
    gate = Event()
    n = DEFAULT_POOL_MAX_IDLE + 200
    for _ in range(n):
        ggopool.go(gate.wait)
    gevent.idle()
    assert pool.stats().running == n  # every task runs at once, as with gevent.spawn
    gate.set()
    gevent.idle()
    gevent.idle()
    stats = pool.stats()
    assert stats.running == 0
    # The 200 workers that found the free list full left instead of parking.
    assert stats.idle == stats.workers == DEFAULT_POOL_MAX_IDLE
    assert len(pool._greenlets) == DEFAULT_POOL_MAX_IDLE


def test_max_idle_bounds_a_capped_pool_and_zero_keeps_none() -> None:
    for max_idle in (0, 3):
        pool = ggopool.new_pool("idle-bound", 8, Config(max_idle=max_idle))
        gate = Event()
        for _ in range(8):
            pool.go(gate.wait)
        gevent.idle()
        assert pool.worker_count() == 8
        gate.set()
        gevent.idle()
        gevent.idle()
        assert pool.stats().idle == pool.worker_count() == max_idle
        ran: list[int] = []
        pool.go(ran.append, 1)  # a parked worker is woken, or one is started
        gevent.idle()
        assert ran == [1]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (-1, ValueError, "max_idle must be an int >= 0, got -1"),
        (1.5, TypeError, "max_idle must be an int >= 0, got 1.5"),
        (True, TypeError, "max_idle must be an int >= 0, got True"),
    ],
)
def test_max_idle_is_checked(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=rf"^{re.escape(message)}$"):
        Config(max_idle=value)  # type: ignore[arg-type]
