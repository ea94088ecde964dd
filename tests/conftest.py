"""Test discipline, as in gevent's own suite: every test runs under a gevent.Timeout, and an
error that reaches the hub fails the test unless the test takes it from `hub_errors`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event

import ggopool
from ggopool import _pool, _shutdown

TEST_TIMEOUT = 60.0


class HubErrors:
    """The errors reported to ``hub.handle_error`` during one test.

    A test that expects errors calls `take()`; whatever is left at the end fails the test.
    System errors (KeyboardInterrupt, SystemExit, SystemError) are recorded and then
    handled by the real hub, so they still reach the main greenlet.
    """

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.errors: list[tuple[Any, type[BaseException], BaseException]] = []

    def handle_error(self, context: Any, type_: Any, value: Any, tb: Any) -> None:
        if value is None:
            value = type_()
        self.errors.append((context, type_, value))
        if issubclass(type_, self.hub.SYSTEM_ERROR):
            self.hub.handle_system_error(type_, value, tb)

    def take(self) -> list[tuple[Any, type[BaseException], BaseException]]:
        taken, self.errors = self.errors, []
        return taken


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    # The loop reads its clock once per turn, and it has not turned while the test's
    # fixtures were set up (which can take tens of ms on a busy machine): a timer the test
    # starts on that stale clock (``spawn_later(0.05)``) would be due at once.
    gevent.get_hub().loop.update_now()


@pytest.fixture(autouse=True)
def hub_errors(request: pytest.FixtureRequest) -> Iterator[HubErrors]:
    hub = gevent.get_hub()
    recorder = HubErrors(hub)
    # An instance attribute overrides the method, as gevent documents for applications.
    hub.handle_error = recorder.handle_error  # type: ignore[method-assign,assignment]
    # A module whose tests are long by design (the hypothesis model) sets its own bound.
    timeout = gevent.Timeout(getattr(request.module, "TEST_TIMEOUT", TEST_TIMEOUT))
    timeout.start()
    try:
        yield recorder
    finally:
        timeout.close()
        del hub.handle_error
    if recorder.errors:
        pytest.fail(f"unexpected errors reached the hub: {recorder.errors!r}")


@pytest.fixture(autouse=True)
def fresh_default_pool() -> Iterator[None]:
    """Each test starts with the default pool's cap and handler as they ship."""
    pool = ggopool.default_pool()
    cap = pool.cap
    yield
    pool.set_cap(cap)
    pool.set_panic_handler(None)


@pytest.fixture(autouse=True)
def exit_drain_as_shipped() -> Iterator[None]:
    """A test that runs the exit drain in this process leaves it as it was: not run, with
    its deadline, and other threads' hand-overs accepted (the drain refuses them after)."""
    deadline, drained = _shutdown._exit_deadline, _shutdown._exit_drained_pid
    yield
    _shutdown._exit_deadline, _shutdown._exit_drained_pid = deadline, drained
    _shutdown._after_exit_drain = None
    _pool._hand_overs_refused_in = None


# -- helpers the test modules share ----------------------------------------------------------


def wait_then_worker(gate: Event) -> Any:
    """A task: wait for ``gate``, then return the worker greenlet it ran on."""
    gate.wait()
    return gevent.getcurrent()


@pytest.fixture
def short_switch_interval() -> Iterator[None]:
    """gevent's switch interval at 1 ms instead of 5 for the test (the fairness tests)."""
    before = gevent.getswitchinterval()
    gevent.setswitchinterval(0.001)
    yield
    gevent.setswitchinterval(before)


def parked_in_order(pool: ggopool.Pool, n: int) -> list[Any]:
    """Park ``n`` workers one after the other; their greenlets, longest parked first."""
    gates = [Event() for _ in range(n)]
    tasks = [pool.submit(wait_then_worker, gate) for gate in gates]
    gevent.idle()
    for gate in gates:
        gate.set()
        gevent.idle()
    workers = [task.get(block=False) for task in tasks]
    assert len(set(workers)) == n
    assert pool.stats().idle == n
    return workers
