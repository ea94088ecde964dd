"""The server workload: a pywsgi server in one process, a load generator in another.

For each way of spawning the server's connections (`SPAWNS`) and each kind of client
(`MODES`), a fresh server process serves a tiny WSGI app on 127.0.0.1 (TCP_NODELAY on each
connection, see `_no_delay_handler`), and a fresh client
process sends it ``requests`` requests from `CONCURRENCY` greenlets: one request per
connection (``close``), or every request of a greenlet on one connection (``keep-alive``).
The client times the whole load and, just before and after it, reads the server's CPU time
and RSS from the server itself (``GET /__stats``). The runs are interleaved over rounds;
each figure is the median over rounds, and each ratio the median over rounds of the ratio
to ``spawn='default'`` in the same round.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any, TypedDict

from ggopool.bench.fresh_process import run_json
from ggopool.bench.progress import Progress

#: The server's ``spawn=``, by the name the report gives it.
SPAWNS = ("default", "gevent.pool.Pool", "ggopool.Pool")

#: One request per connection, or every request of a client greenlet on one connection.
MODES = ("close", "keep-alive")

#: The pools' size, as gunicorn's default ``worker_connections``.
POOL_SIZE = 1000

#: Client greenlets sending at once (each waits for its response before the next request).
CONCURRENCY = 50

#: Seconds a server may take to start, and a client run to finish, before the bench gives up.
START_LIMIT = 30.0
RUN_LIMIT = 600.0

BODY = b"hello, world\n"

#: The subprocesses' whole program.
BOOT = "import sys\nfrom ggopool.bench.server import main\nsys.exit(main(sys.argv[1:]))\n"


class ServerRow(TypedDict):
    """One spawn and one mode: the JSON row and the table's line."""

    spawn: str
    mode: str
    requests: int  # per run
    served: list[int]  # responses the client read, one per round; each must equal requests
    complete: bool
    requests_per_s: float  # median over rounds
    cpu_us_per_request: float  # the server's user+system CPU over the load, per request
    peak_rss: int  # the server's peak RSS, bytes, median over rounds
    ratio_requests_per_s: float | None  # median over rounds of this / spawn='default'
    ratio_cpu: float | None
    ratio_rss: float | None


# -- the server process ---------------------------------------------------------------------


def _stats() -> bytes:
    import resource  # Unix only: imported here so that the rest of the bench runs anywhere

    from ggopool.bench.rss import peak_rss, rss

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return json.dumps(
        {"cpu": usage.ru_utime + usage.ru_stime, "rss": rss(), "peak_rss": peak_rss()}
    ).encode()


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = _stats() if environ["PATH_INFO"] == "/__stats" else BODY
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _no_delay_handler() -> type[Any]:
    """pywsgi's handler, with TCP_NODELAY on each connection.

    pywsgi sends a response's headers and its body in two writes. Without TCP_NODELAY,
    Nagle's algorithm holds the body until the client ACKs the headers, and the client
    delays that ACK (40 ms on Linux): every keep-alive response would wait 40 ms, and the
    keep-alive rows would measure that timer, not the server.
    """
    import socket

    from gevent.pywsgi import WSGIHandler

    class NoDelayHandler(WSGIHandler):
        def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().__init__(sock, *args, **kwargs)

    return NoDelayHandler


def serve(spawn: str) -> int:
    """The server process: serve `_app` with ``spawn``; print the port; serve until killed."""
    from gevent.pywsgi import WSGIServer

    spawn_arg: Any
    if spawn == "default":
        spawn_arg = "default"
    elif spawn == "gevent.pool.Pool":
        from gevent.pool import Pool

        spawn_arg = Pool(POOL_SIZE)
    elif spawn == "ggopool.Pool":
        import ggopool

        config = ggopool.Config(spawn_waits_when_full=True)
        spawn_arg = ggopool.new_pool("connections", POOL_SIZE, config)
    else:
        raise ValueError(f"spawn must be one of {', '.join(SPAWNS)}, got {spawn!r}")
    server = WSGIServer(
        ("127.0.0.1", 0),
        _app,
        spawn=spawn_arg,
        log=None,
        backlog=1024,
        handler_class=_no_delay_handler(),
    )
    server.start()
    print(server.server_port, flush=True)
    server.serve_forever()
    return 0


# -- the client process ---------------------------------------------------------------------


def _read_response(sock: Any, buffer: bytearray) -> bytes:
    """One response's body off ``sock`` (Content-Length framed); what follows stays in
    ``buffer``."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            length = 0
            for header in bytes(buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = end + 4 + length
            if len(buffer) >= total:
                body = bytes(buffer[end + 4 : total])
                del buffer[:total]
                return body
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-response")
        buffer += chunk


def _get(port: int, path: str) -> bytes:
    from gevent import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        return _read_response(sock, bytearray())


def load(port: int, mode: str, requests: int) -> dict[str, Any]:
    """The client process: send ``requests`` requests; return the timing and the server's
    stats before and after."""
    import gevent
    from gevent import socket

    served = 0
    errors = 0
    per_client = [requests // CONCURRENCY + (1 if i < requests % CONCURRENCY else 0)
                  for i in range(CONCURRENCY)]  # fmt: skip
    close_request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    keep_request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    def one_per_connection(n: int) -> None:
        nonlocal served, errors
        for _ in range(n):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                    sock.sendall(close_request)
                    if _read_response(sock, bytearray()) == BODY:
                        served += 1
            except OSError:
                errors += 1

    def keep_alive(n: int) -> None:
        nonlocal served, errors
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                buffer = bytearray()
                for _ in range(n):
                    sock.sendall(keep_request)
                    if _read_response(sock, buffer) == BODY:
                        served += 1
        except OSError:
            errors += 1

    client = one_per_connection if mode == "close" else keep_alive
    before = json.loads(_get(port, "/__stats"))
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(client, n) for n in per_client if n])
    seconds = time.perf_counter() - started
    after = json.loads(_get(port, "/__stats"))
    return {
        "seconds": seconds,
        "served": served,
        "errors": errors,
        "cpu": after["cpu"] - before["cpu"],
        "peak_rss": after["peak_rss"],
    }


# -- the parent ---------------------------------------------------------------------------


def _run_one(spawn: str, mode: str, requests: int) -> dict[str, Any]:
    """Start a server with ``spawn``, load it from a client process, stop it."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    server = subprocess.Popen(
        [sys.executable, "-c", BOOT, "serve", spawn], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], START_LIMIT)
        line = server.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            raise RuntimeError(f"the {spawn} server did not start: {line!r}")
        port = int(line)
        result: dict[str, Any] = run_json(
            ["-c", BOOT, "load", str(port), mode, str(requests)], RUN_LIMIT
        )
        return result
    finally:
        server.kill()
        server.wait()


def server(requests: int, rounds: int, progress: Progress) -> list[ServerRow]:
    """The server workload's rows: every spawn and mode, interleaved over ``rounds``."""
    entries = [(spawn, mode) for mode in MODES for spawn in SPAWNS]
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {e: [] for e in entries}
    for r in range(rounds):
        for mode in MODES:
            # Each round starts at a different spawn, so that none always runs first.
            for j in range(len(SPAWNS)):
                spawn = SPAWNS[(r + j) % len(SPAWNS)]
                progress.step(f"server round {r + 1}/{rounds}: {spawn}, {mode}")
                samples[(spawn, mode)].append(_run_one(spawn, mode, requests))
    rows: list[ServerRow] = []
    for spawn, mode in entries:
        runs = samples[(spawn, mode)]
        base = samples[("default", mode)]

        def ratio(
            key: str,
            per_request: bool,
            runs: list[dict[str, Any]] = runs,
            base: list[dict[str, Any]] = base,
        ) -> float | None:
            values = []
            for mine, theirs in zip(runs, base, strict=True):
                a, b = mine[key], theirs[key]
                if per_request:
                    a, b = a / max(mine["served"], 1), b / max(theirs["served"], 1)
                if b > 0:
                    values.append(a / b)
            return median(values) if values else None

        rps = [run["served"] / run["seconds"] for run in runs]
        base_rps = [run["served"] / run["seconds"] for run in base]
        rows.append(
            ServerRow(
                spawn=spawn,
                mode=mode,
                requests=requests,
                served=[run["served"] for run in runs],
                complete=all(run["served"] == requests and not run["errors"] for run in runs),
                requests_per_s=median(rps),
                cpu_us_per_request=median(1e6 * run["cpu"] / max(run["served"], 1) for run in runs),
                peak_rss=int(median(run["peak_rss"] for run in runs)),
                ratio_requests_per_s=median(a / b for a, b in zip(rps, base_rps, strict=True)),
                ratio_cpu=ratio("cpu", True),
                ratio_rss=ratio("peak_rss", False),
            )
        )
    return rows


def steps(rounds: int) -> int:
    """How many progress steps the server workload takes."""
    return rounds * len(MODES) * len(SPAWNS)


def render(rows: Sequence[ServerRow]) -> list[str]:
    """The server table, ratios to spawn='default' in the same run."""
    from ggopool.bench.report import _mib, _ratio, _table

    n = rows[0]["requests"] if rows else 0
    lines = [
        f"server: pywsgi on 127.0.0.1 in its own process, {n:,} requests per run from "
        f"{CONCURRENCY} client greenlets in another; pools of {POOL_SIZE}; "
        "x = ratio to spawn='default'",
    ]
    body = [
        [
            r["mode"],
            r["spawn"],
            f"{r['requests_per_s']:,.0f}",
            _ratio(r["ratio_requests_per_s"]),
            f"{r['cpu_us_per_request']:.1f} µs",
            _ratio(r["ratio_cpu"]),
            _mib(r["peak_rss"]),
            _ratio(r["ratio_rss"]),
            f"{sum(r['served']):,}"
            + ("" if r["complete"] else f" of {r['requests'] * len(r['served']):,} (MISCOUNT)"),
        ]
        for r in rows
    ]
    headers = [
        "mode",
        "spawn",
        "requests/s",
        "x",
        "server CPU/request",
        "x",
        "server peak RSS",
        "x",
        "served",
    ]
    lines.append(_table(headers, body, {2, 3, 4, 5, 6, 7, 8}))
    return lines


def main(argv: list[str]) -> int:
    """The subprocesses: ``serve SPAWN`` or ``load PORT MODE REQUESTS``."""
    if argv[0] == "serve":
        return serve(argv[1])
    print(json.dumps(load(int(argv[1]), argv[2], int(argv[3]))))
    return 0
