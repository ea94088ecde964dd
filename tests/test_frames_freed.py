"""A task that raised or was killed frees what its frames held as soon as nothing holds the
task: no reference cycle runs through its exception's traceback (through the pool's own
frames, the task handle or the worker loop), so the locals of its frames (sockets, files,
connections) go at once, not when the cyclic GC next runs. concurrent.futures breaks the same
cycle on purpose; gevent's Cython frames hold no locals.

Every test here runs with the cyclic GC disabled, and checks through weak references."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.pool
import pytest
from gevent import socket
from gevent.event import Event
from gevent.server import StreamServer

import ggopool
from ggopool import Config
from tests.conftest import HubErrors


@pytest.fixture(autouse=True)
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Resource:
    """What a task's frame holds: a socket, a file, a connection."""


class Held:
    """Each task makes a Resource, keeps it in a local and waits on ``gate``; ``refs`` are
    weak references to them."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref[Resource]] = []
        self.gate = Event()

    def wait_then_raise(self) -> None:
        resource = Resource()
        self.refs.append(weakref.ref(resource))
        self.gate.wait()
        raise ValueError("the task failed")

    def wait(self) -> None:
        resource = Resource()
        self.refs.append(weakref.ref(resource))
        self.gate.wait()

    def alive(self) -> list[weakref.ref[Resource]]:
        for _ in range(3):
            gevent.idle()
        return [ref for ref in self.refs if ref() is not None]


class Watcher(ggopool.Instrument):
    """An instrument of tasks: the pool runs each through its hooks."""

    def task_finished(self, task: Any, outcome: str, exc: BaseException | None) -> None:
        pass


def new_pool(name: str, instrumented: bool) -> ggopool.Pool:
    pool = ggopool.new_pool(name, 2, Config(idle_timeout=None))
    if instrumented:
        pool.add_instrument(Watcher())
    return pool


INSTRUMENTED = pytest.mark.parametrize("instrumented", [False, True], ids=["plain", "watched"])


@INSTRUMENTED
@pytest.mark.parametrize("how", ["submit", "spawn", "go"])
def test_a_task_that_raised_frees_its_frames(
    how: str, instrumented: bool, hub_errors: HubErrors
) -> None:
    pool = new_pool("raised", instrumented)
    held = Held()
    pool.set_panic_handler(lambda ctx, exc: None)  # spawn's and go's report: kept by none
    start: Callable[..., Any] = getattr(pool, how)
    task = start(held.wait_then_raise)
    gevent.idle()
    held.gate.set()
    assert pool.join(5)
    if task is not None:
        assert isinstance(task.exception, ValueError)
    del task
    assert held.alive() == []
    assert hub_errors.take() == []


@INSTRUMENTED
def test_a_spawned_task_reported_to_the_hub_frees_its_frames_once_the_report_is_dropped(
    instrumented: bool, hub_errors: HubErrors
) -> None:
    pool = new_pool("reported", instrumented)
    held = Held()
    pool.spawn(held.wait_then_raise)
    gevent.idle()
    held.gate.set()
    assert pool.join(5)
    # The recorder lets go of the exception, as gevent's hub does once it has printed it.
    assert [type_ for _, type_, _ in hub_errors.take()] == [ValueError]
    assert held.alive() == []


@INSTRUMENTED
@pytest.mark.parametrize("how", ["task.kill", "pool.kill", "pool.kill(ValueError)"])
@pytest.mark.parametrize("start", ["submit", "spawn"])
def test_a_killed_task_frees_its_frames(
    start: str, how: str, instrumented: bool, hub_errors: HubErrors
) -> None:
    pool = new_pool("killed", instrumented)
    pool.set_panic_handler(lambda ctx, exc: None)
    held = Held()
    task = getattr(pool, start)(held.wait)
    gevent.idle()
    assert len(held.refs) == 1
    if how == "task.kill":
        task.kill(timeout=5)
    elif how == "pool.kill":
        assert pool.kill(timeout=5)
    else:
        assert pool.kill(timeout=5, exception=ValueError)
    assert task.dead
    del task
    assert held.alive() == []
    assert hub_errors.take() == []


@pytest.mark.parametrize("read", ["get", "result", "joinall"])
def test_reading_a_failed_tasks_exception_adds_no_cycle(read: str) -> None:
    pool = new_pool("read", instrumented=False)
    held = Held()
    task = pool.submit(held.wait_then_raise)
    gevent.idle()
    held.gate.set()
    task.join(5)
    for _ in range(2):  # each raise starts from the task's own traceback
        try:
            if read == "joinall":
                gevent.joinall([task], raise_error=True)
            else:
                getattr(task, read)()
        except ValueError:
            pass
    del task
    assert held.alive() == []


# -- a gevent server: the client sees its connection closed at once -------------------------


def serving(pool: Any) -> Any:
    """A ggopool pool as ``spawn=`` (gevent's stubs name only gevent.pool.Pool there)."""
    return pool


def new_server_pool(kind: str) -> Any:
    if kind == "gevent.pool.Pool":
        return gevent.pool.Pool(4)  # what ggopool must match
    return ggopool.new_pool("connections", 4, Config(spawn_waits_when_full=True))


SERVER_POOLS = pytest.mark.parametrize("kind", ["gevent.pool.Pool", "ggopool.Pool"])


def connect(server: StreamServer) -> socket.socket:
    port = server.server_port
    assert port is not None
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(5000):
        if predicate():
            return
        gevent.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def closed_by_the_server(client: socket.socket) -> bool:
    """True once the client reads the end of the connection; False if it has not come
    within a few seconds (the server's socket is still open)."""
    client.settimeout(3)
    try:
        return client.recv(10) == b""
    except TimeoutError:
        return False
    finally:
        client.close()


@SERVER_POOLS
def test_a_handler_that_raises_closes_the_connection_at_once(
    kind: str, hub_errors: HubErrors
) -> None:
    def handle(sock: socket.socket, address: Any) -> None:
        # The server closes its socket as the handler ends, but a file made from it keeps
        # the connection open (as pywsgi's handler's rfile does) until the file goes.
        rfile = sock.makefile("rb")
        rfile.readline()
        raise ValueError("the handler failed")

    server = StreamServer(("127.0.0.1", 0), handle, spawn=serving(new_server_pool(kind)))
    server.start()
    try:
        client = connect(server)
        client.sendall(b"hello\n")
        wait_for(lambda: bool(hub_errors.errors), "the failure's report")
        # The hub prints its report and lets go of it: so does the recorder.
        assert [type_ for _, type_, _ in hub_errors.take()] == [ValueError]
        assert closed_by_the_server(client)
    finally:
        server.stop(timeout=5)


@SERVER_POOLS
def test_a_handler_killed_by_stop_closes_the_connection_at_once(kind: str) -> None:
    entered = Event()

    def handle(sock: socket.socket, address: Any) -> None:
        rfile = sock.makefile("rb")  # as in the test above
        entered.set()
        rfile.readline()  # a client that never sends its request

    server = StreamServer(("127.0.0.1", 0), handle, spawn=serving(new_server_pool(kind)))
    server.start()
    client = connect(server)
    assert entered.wait(5)
    server.stop(timeout=0.01)  # waits, then kills the handler
    assert closed_by_the_server(client)


@pytest.mark.parametrize("how", ["kill", "throw", "kill(KeyError)"])
def test_a_task_that_killed_itself_frees_its_frames(how: str) -> None:
    pool = new_pool("self-killed", instrumented=False)
    held = Held()
    handle: list[Any] = []

    def kills_itself() -> None:
        resource = Resource()
        held.refs.append(weakref.ref(resource))
        # Not in a local: this frame, which the task's traceback keeps, must not hold it.
        if how == "kill":
            handle[0].kill()
        elif how == "throw":
            handle[0].throw()
        else:
            handle[0].kill(KeyError("itself"))

    task = pool.submit(kills_itself)
    handle.append(task)
    task.join(5)
    assert task.dead
    handle.clear()
    del task
    assert held.alive() == []
