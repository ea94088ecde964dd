"""The module-level functions on the default pool, and the registry of named pools."""

from __future__ import annotations

import contextvars
import sys
import types

import gevent
import pytest
from gevent.event import Event

import ggopool
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
    # Submodules (ggopool.locust, ggopool.prometheus) appear once imported; they are not
    # names of the package itself.
    public = {
        n
        for n in dir(ggopool)
        if not n.startswith("_") and not isinstance(getattr(ggopool, n), types.ModuleType)
    }
    assert set(ggopool.__all__) == public - {"annotations"}
