"""The TCP workload: each task makes one round trip to a loopback gevent server.

It runs in a subprocess that monkey-patches before anything else is imported (`BOOT`), as
a gevent application does, so the task uses the standard ``socket`` module.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from typing import Any

from gevent.server import StreamServer

from ggopool.bench.fresh_process import run_json
from ggopool.bench.progress import Progress
from ggopool.bench.rounds import ThroughputRow, throughput

#: The child's whole program: patch first, then import the bench.
BOOT = (
    "from gevent import monkey; monkey.patch_all()\n"
    "import sys\n"
    "from ggopool.bench.tcp import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)

PING = b"ping\n"

#: Seconds a task may spend on its connection before it counts as an error.
TASK_TIMEOUT = 10.0

#: Seconds the whole TCP subprocess may take before the bench gives up on it.
PROCESS_LIMIT = 900.0


def _echo(sock: socket.socket, address: object) -> None:
    try:
        data = sock.recv(len(PING))
        sock.sendall(data)
        # Wait for the client to hang up first: the side that closes first holds the
        # TIME_WAIT, and Linux reuses a client's TIME_WAIT ports on loopback, so a
        # bench of tens of thousands of connections does not run out of ports.
        sock.recv(len(PING))
    except OSError:
        pass  # the client gave up (timeout); its task already counted the error


def tcp(
    n: int,
    cap: int,
    names: Sequence[str],
    rounds: int,
    progress: Progress,
    *,
    warmup: int,
) -> list[ThroughputRow]:
    """The TCP workload's rows, measured in a monkey-patched subprocess."""
    request = json.dumps(
        {
            "n": n,
            "cap": cap,
            "names": list(names),
            "rounds": rounds,
            "warmup": warmup,
            "progress_done": progress.done,
            "progress_total": progress.total,
        }
    )
    rows: list[ThroughputRow] = run_json(["-c", BOOT, request], PROCESS_LIMIT)
    progress.done += (rounds + (1 if warmup else 0)) * len(names)
    return rows


def main(argv: list[str]) -> int:
    """The subprocess: serve on 127.0.0.1, run the rounds, print the rows as JSON."""
    request: dict[str, Any] = json.loads(argv[0])
    n = int(request["n"])
    progress = Progress(int(request["progress_total"]), done=int(request["progress_done"]))
    server = StreamServer(("127.0.0.1", 0), _echo, backlog=min(max(n, 128), 4096))
    server.start()
    bound = server.address
    assert isinstance(bound, tuple)  # a TCP server's address is (host, port)
    address = (str(bound[0]), int(bound[1]))
    failures = 0

    def round_trip() -> None:
        nonlocal failures
        try:
            with socket.create_connection(address, timeout=TASK_TIMEOUT) as sock:
                sock.sendall(PING)
                reply = b""
                while len(reply) < len(PING):
                    chunk = sock.recv(len(PING))
                    if not chunk:
                        break
                    reply += chunk
            if reply != PING:
                failures += 1
        except OSError:
            failures += 1

    try:
        rows = throughput(
            "tcp",
            round_trip,
            n,
            int(request["cap"]),
            list(request["names"]),
            int(request["rounds"]),
            progress,
            warmup=int(request["warmup"]),
            errors=lambda: failures,
        )
    finally:
        server.stop()
    print(json.dumps(rows))
    return 0
