"""A ggopool pool as a gevent server's ``spawn=``: real StreamServer and WSGIServer on
127.0.0.1, real sockets. The server stops accepting while the pool is full, resumes when a
connection ends, and ``stop(timeout)`` waits for the connections and then kills them;
nothing reaches the hub (the conftest fixture fails the test if anything does)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer
from greenlet import GreenletExit

import ggopool
from ggopool import Config, PoolClosed

WAITS = Config(spawn_waits_when_full=True)


class Handlers:
    """A StreamServer handler that counts connections in, holds each on ``gate``, and
    answers ``done`` when let go; ``exits`` records how each ended."""

    def __init__(self) -> None:
        self.entered = 0
        self.gate = Semaphore(0)
        self.exits: list[str] = []
        self.changed = Event()

    def __call__(self, sock: socket.socket, address: Any) -> None:
        self.entered += 1
        self.changed.set()
        try:
            self.gate.acquire()
            sock.sendall(b"done")
            self.exits.append("done")
        except GreenletExit:
            self.exits.append("killed")
            raise
        finally:
            self.changed.set()

    def wait_for(self, predicate: Any, what: str) -> None:
        deadline = time.monotonic() + 10
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.changed.clear()
            self.changed.wait(0.5)


def connect(port: int | None) -> socket.socket:
    assert port is not None
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def serving(pool: ggopool.Pool) -> Any:
    """``pool`` as ``spawn=``: gevent's type stubs name only ``gevent.pool.Pool`` there."""
    return pool


def settle() -> None:
    """Let the hub run its callbacks and any I/O ready now, several times over."""
    for _ in range(20):
        gevent.idle()
        gevent.sleep(0.001)


@pytest.fixture
def stream() -> Iterator[tuple[StreamServer, Handlers, ggopool.Pool]]:
    handlers = Handlers()
    pool = ggopool.new_pool("connections", 2, WAITS)
    server = StreamServer(("127.0.0.1", 0), handlers, spawn=serving(pool))
    server.start()
    try:
        yield server, handlers, pool
    finally:
        for _ in range(10):
            handlers.gate.release()
        server.stop(timeout=5)
        pool.close()


def test_stops_accepting_while_full_and_resumes_when_a_connection_ends(
    stream: tuple[StreamServer, Handlers, ggopool.Pool],
) -> None:
    server, handlers, pool = stream
    socks = [connect(server.server_port) for _ in range(4)]
    handlers.wait_for(lambda: handlers.entered == 2, "two connections in")
    assert pool.full()
    assert len(pool) == 2
    settle()
    # Connected by the kernel, but not accepted: the server waits for room.
    assert handlers.entered == 2
    handlers.gate.release()
    handlers.wait_for(lambda: handlers.entered == 3, "the third connection in")
    settle()
    assert handlers.entered == 3  # one ended, one more in: full again
    assert pool.full()
    for _ in range(3):
        handlers.gate.release()
    handlers.wait_for(lambda: handlers.exits.count("done") == 4, "all four answered")
    assert [s.recv(10) for s in socks] == [b"done"] * 4
    for s in socks:
        s.close()


def test_stop_waits_for_connections_then_kills_them(
    stream: tuple[StreamServer, Handlers, ggopool.Pool],
) -> None:
    server, handlers, pool = stream
    port = server.server_port
    socks = [connect(port) for _ in range(2)]
    handlers.wait_for(lambda: handlers.entered == 2, "two connections in")
    # One connection ends during stop's wait: stop waits for it...
    gevent.spawn_later(0.05, handlers.gate.release)
    started = time.monotonic()
    server.stop(timeout=0.5)
    elapsed = time.monotonic() - started
    # ...and kills the other when the timeout passes.
    assert sorted(handlers.exits) == ["done", "killed"]
    assert elapsed >= 0.5
    assert len(pool) == 0
    assert server.closed
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    assert sorted(s.recv(10) for s in socks) == [b"", b"done"]
    for s in socks:
        s.close()


def test_stop_called_in_a_handler_waits_for_then_kills_the_others_and_itself() -> None:
    # An admin endpoint that stops its own server, as with gevent's pool: stop() waits out
    # its timeout (the calling connection is a member too), kills the other connections,
    # and the calling handler ends with the GreenletExit of that kill.
    pool = ggopool.new_pool("connections", 4, WAITS)
    hanging = Handlers()
    outcome: list[str] = []

    def handle(sock: socket.socket, address: Any) -> None:
        if sock.recv(4) != b"stop":
            hanging(sock, address)
            return
        try:
            server.stop(timeout=0.2)
            outcome.append("returned")
        except GreenletExit:
            outcome.append("GreenletExit")
            raise

    server = StreamServer(("127.0.0.1", 0), handle, spawn=serving(pool))
    server.start()
    held = connect(server.server_port)
    held.sendall(b"hold")
    hanging.wait_for(lambda: hanging.entered == 1, "a held connection in")
    stopper = connect(server.server_port)
    started = time.monotonic()
    stopper.sendall(b"stop")
    assert pool.join(5) is True  # the kill ended both connections
    assert time.monotonic() - started >= 0.2
    assert outcome == ["GreenletExit"]
    assert hanging.exits == ["killed"]
    assert server.closed
    assert len(pool) == 0
    for sock in (held, stopper):
        sock.close()


def test_stop_returns_once_connections_end_before_the_timeout(
    stream: tuple[StreamServer, Handlers, ggopool.Pool],
) -> None:
    server, handlers, _ = stream
    sock = connect(server.server_port)
    handlers.wait_for(lambda: handlers.entered == 1, "a connection in")
    gevent.spawn_later(0.05, handlers.gate.release)
    started = time.monotonic()
    server.stop(timeout=10)
    assert time.monotonic() - started < 5
    assert handlers.exits == ["done"]
    assert sock.recv(10) == b"done"
    sock.close()


def test_wsgi_server_with_a_pool_of_1000_serves() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    pool = ggopool.new_pool("connections", 1000, WAITS)
    server = WSGIServer(("127.0.0.1", 0), app, spawn=serving(pool), log=None)
    server.start()
    try:
        for _ in range(3):
            sock = connect(server.server_port)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            sock.close()
            assert data.startswith(b"HTTP/1.1 200 OK")
            assert data.endswith(b"hello")
    finally:
        server.stop(timeout=5)
        pool.close()


def test_a_pool_whose_spawn_does_not_wait_serves_with_back_pressure_too() -> None:
    handlers = Handlers()
    pool = ggopool.new_pool("connections", 1)
    server = StreamServer(("127.0.0.1", 0), handlers, spawn=serving(pool))
    server.start()
    try:
        socks = [connect(server.server_port) for _ in range(2)]
        handlers.wait_for(lambda: handlers.entered == 1, "one connection in")
        settle()
        assert handlers.entered == 1
        handlers.gate.release()
        handlers.wait_for(lambda: handlers.entered == 2, "the second connection in")
        handlers.gate.release()
        handlers.wait_for(lambda: len(handlers.exits) == 2, "both answered")
        assert [s.recv(10) for s in socks] == [b"done", b"done"]
        for s in socks:
            s.close()
    finally:
        server.stop(timeout=5)
        pool.close()


@pytest.mark.parametrize("raised_by", [1, 3])
def test_raising_the_cap_of_a_full_pool_resumes_accepting(
    stream: tuple[StreamServer, Handlers, ggopool.Pool], raised_by: int
) -> None:
    # Not only when a connection ends: the higher cap is room the server takes at once,
    # whether it is one more place or several.
    server, handlers, pool = stream
    socks = [connect(server.server_port) for _ in range(2 + raised_by + 1)]
    handlers.wait_for(lambda: handlers.entered == 2, "two connections in")
    settle()
    assert handlers.entered == 2
    assert pool.full()
    pool.set_cap(2 + raised_by)
    handlers.wait_for(lambda: handlers.entered == 2 + raised_by, "the new places taken")
    settle()
    assert handlers.entered == 2 + raised_by  # full again: the last one waits
    assert handlers.exits == []  # no connection ended meanwhile
    assert pool.full()
    for s in socks:
        s.close()


@pytest.mark.parametrize("server_class", [StreamServer, WSGIServer])
def test_a_closed_pool_is_refused_at_construction(server_class: Any) -> None:
    pool = ggopool.new_pool("connections", 10, WAITS)
    pool.close()
    with pytest.raises(PoolClosed) as raised:
        server_class(("127.0.0.1", 0), lambda *args: None, spawn=serving(pool))
    assert str(raised.value) == (
        "pool 'connections' is closed: a closed pool cannot take a server's "
        "connections (give the server an open pool)"
    )


def test_room_signal_rules() -> None:
    pool = ggopool.new_pool("connections", 1, WAITS)
    signal = pool._semaphore
    assert pool._semaphore is signal  # one per pool
    with pytest.raises(TypeError, match=r"^callback must be callable, got 3$"):
        signal.rawlink(3)  # type: ignore[arg-type]
    assert signal.linkcount() == 0
    calls: list[Any] = []
    signal.rawlink(calls.append)
    signal.rawlink(calls.append)  # linked once
    assert signal.linkcount() == 1
    gevent.idle()
    assert calls == [signal]  # there was room when it was linked
    gate = Event()
    task = pool.spawn(gate.wait)
    gevent.idle()
    assert pool.full()
    assert calls == [signal]
    gate.set()
    task.join()
    gevent.idle()
    assert calls == [signal, signal]  # the pool stopped being full
    signal.unlink(calls.append)
    signal.unlink(calls.append)  # not linked: nothing
    assert signal.linkcount() == 0
    pool.close()
    pool.close()
    signal.unlink(calls.append)  # a closed pool still unlinks (a server's close())
    with pytest.raises(PoolClosed):
        signal.rawlink(calls.append)
    assert signal.linkcount() == 0


def test_a_failing_link_goes_to_the_hub_and_the_others_still_run(hub_errors: Any) -> None:
    pool = ggopool.new_pool("connections", 1, WAITS)
    calls: list[Any] = []

    def failing(_: Any) -> None:
        raise ValueError("boom")

    pool._semaphore.rawlink(failing)
    pool._semaphore.rawlink(calls.append)
    gevent.idle()
    assert calls == [pool._semaphore]
    [(context, type_, _)] = hub_errors.take()
    assert context is failing
    assert type_ is ValueError
    pool.close()


def test_a_pool_closed_while_serving_stops_the_server_accepting(
    stream: tuple[StreamServer, Handlers, ggopool.Pool],
) -> None:
    server, handlers, pool = stream
    first = connect(server.server_port)
    handlers.wait_for(lambda: handlers.entered == 1, "a connection in")
    pool.close()
    assert pool.full()  # a closed pool takes no new member
    second = connect(server.server_port)
    handlers.gate.release()
    handlers.wait_for(lambda: handlers.exits == ["done"], "the first answered")
    settle()
    # Not accepted (nothing reached the hub: no PoolClosed from spawn), and still queued
    # in the kernel's backlog until the server stops.
    assert handlers.entered == 1
    assert first.recv(10) == b"done"
    first.close()
    second.close()
