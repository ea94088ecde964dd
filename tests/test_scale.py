"""Many tasks: 100,000 short ones each run once, and 2,000 real TCP round trips under
monkey-patching through a pool of cap 200."""

from __future__ import annotations

import textwrap

import gevent

import ggopool
from tests.subprocess_helpers import run_python


def test_100k_short_tasks_each_run_exactly_once() -> None:
    n = 100_000
    pool = ggopool.new_pool("many", 50)
    runs = bytearray(n)
    remaining = n
    done = gevent.event.Event()

    def task(i: int) -> None:
        nonlocal remaining
        runs[i] += 1
        remaining -= 1
        if not remaining:
            done.set()

    for i in range(n):
        pool.go(task, i)
    assert pool.worker_count() <= 50
    assert done.wait(60)
    assert runs == bytearray(b"\x01") * n


TCP_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import socket
    import gevent
    from gevent.server import StreamServer
    import ggopool

    def echo(sock, addr):
        with sock:
            data = sock.recv(64)
            sock.sendall(data)

    server = StreamServer(("127.0.0.1", 0), echo, backlog=1024)
    server.start()
    port = server.server_port

    pool = ggopool.new_pool("tcp", 200)
    running = 0
    peak = 0
    ok = []
    done = gevent.event.Event()

    def round_trip(i):
        global running, peak
        running += 1
        peak = max(peak, running)
        try:
            with socket.create_connection(("127.0.0.1", port)) as c:
                msg = b"%d" % i
                c.sendall(msg)
                assert c.recv(64) == msg
            ok.append(i)
        finally:
            running -= 1
            if len(ok) == 2000:
                done.set()

    for i in range(2000):
        pool.go(round_trip, i)
        assert pool.worker_count() <= 200
    with gevent.Timeout(120):
        done.wait()
    server.stop()
    assert sorted(ok) == list(range(2000)), len(ok)
    print("completed", len(ok), "peak", peak, "cap", pool.cap)
    """
)


def test_2000_tcp_round_trips_under_monkey_patching_through_cap_200() -> None:
    out = run_python(TCP_SCRIPT, timeout=55)  # under the conftest's 60 s
    words = out.stdout.split()
    assert words[:2] == ["completed", "2000"]
    peak = int(words[3])
    assert 1 < peak <= 200
