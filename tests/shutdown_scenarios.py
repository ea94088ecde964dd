"""Stopping the load-test app the ordinary ways, counted from outside: orders accepted (202
read by the client) against audit records written and webhooks received, and the tasks the
processes logged as abandoned.

The tests in ``tests/test_shutdown_*.py`` run these with small loads; run as a module it
measures every stop path under a steady load instead::

    python -m tests.shutdown_scenarios            # background cap 2, 0.1 s per audit
    python -m tests.shutdown_scenarios --help

Everything binds and connects to 127.0.0.1; processes are signalled by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from tests.deploy_helpers import (
    LOOPBACK,
    Proc,
    audit_records,
    client,
    gunicorn_args,
    gunicorn_booted,
    request_json,
    subprocess_env,
    wait_until,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: A line of ggopool's report of one pool's abandoned tasks.
ABANDONED = re.compile(
    r"ggopool: pool '([^']+)': (\d+) tasks abandoned at exit \((\d+) queued, (\d+) running\)"
)


def abandoned(output: str, pool: str = "background") -> list[int]:
    """The counts of abandoned tasks ``pool`` reported in ``output``, one per process."""
    return [int(m.group(2)) for m in ABANDONED.finditer(output) if m.group(1) == pool]


class Receiver:
    """The webhook receiver the app notifies, in the test process: it counts each order's
    notification when it answers it.

    It can hold notifications unanswered (and uncounted): all of them from `hold` until
    `release`, or every one after the first ``hold_after``, for good. A downstream that
    stalls: held notifications keep the app's background workers busy, so everything
    queued after them is still queued when the test stops the app.
    """

    def __init__(self, hold_after: int | None = None) -> None:
        self.answered: Counter[str] = Counter()
        self.held = 0
        self._hold_after = hold_after
        self._arrived = 0
        self._open = Event()
        self._open.set()
        self.server = WSGIServer((LOOPBACK, 0), self._app, log=None, error_log=None)

    def __enter__(self) -> Receiver:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Held notifications are not answered: their handlers are killed.
        self.server.stop(timeout=0.1)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server.server_port}/hooks/orders"

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        order = json.loads(environ["wsgi.input"].read(length))
        self._arrived += 1
        if self._hold_after is not None and self._arrived > self._hold_after:
            self.held += 1
            Event().wait()  # for good: killed when the receiver stops
        if not self._open.is_set():
            self.held += 1
            try:
                self._open.wait()
            finally:
                self.held -= 1
        self.answered[order["order_id"]] += 1
        start_response("204 No Content", [])
        return []


@dataclass
class Orders:
    """What the clients sent."""

    acks: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0

    @property
    def ids(self) -> set[str]:
        return {ack["order_id"] for ack in self.acks}


def place_orders(
    url: str,
    orders: Orders,
    count: int,
    clients: int,
    *,
    stop: Event | None = None,
    pace: float = 0.0,
) -> None:
    """Send up to ``count`` orders from ``clients`` greenlets, a fresh connection each (so
    gunicorn spreads them over its workers), until ``stop`` is set; an order counts as
    accepted when the client has read its 202. ``pace``: seconds each client waits
    between two orders."""
    sent = 0

    def shopper() -> None:
        nonlocal sent
        while sent < count and not (stop is not None and stop.is_set()):
            sent += 1
            http = client(url)
            try:
                status, ack = request_json(http, "POST", "/orders", {"sku": "S", "qty": 1})
            except Exception:  # noqa: BLE001 - a refused or reset connection: not accepted
                orders.errors += 1
            else:
                if status == 202:
                    orders.acks.append(ack)
                else:
                    orders.errors += 1
            finally:
                http.close()
            if pace:
                gevent.sleep(pace)

    gevent.joinall([gevent.spawn(shopper) for _ in range(clients)], raise_error=True)


def app_env(tmp: Path, receiver: Receiver, **settings: str) -> dict[str, str]:
    """The app's environment: audit file and webhook URL, a control socket of its own
    for gunicorn (XDG_RUNTIME_DIR), and ``LOADTESTS_*`` settings."""
    env = subprocess_env(
        LOADTESTS_AUDIT_FILE=str(tmp / "audit.jsonl"),
        LOADTESTS_WEBHOOK_URL=receiver.url,
        XDG_RUNTIME_DIR=str(tmp),
    )
    env.update({f"LOADTESTS_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class Gunicorn:
    proc: Proc
    url: str
    master: int
    workers: set[int]


EXITED = re.compile(r"Worker exiting \(pid: (\d+)\)")
AUTORESTARTING = re.compile(r"\[(\d+)\] \[INFO\] Autorestarting worker")


READY = re.compile(r"Worker ready \(pid: (\d+)\)")


def wait_serving(g: Gunicorn, timeout: float = 30) -> set[int]:
    """Wait until two workers are ready (``loadtests/gunicorn_conf.py``'s
    ``post_worker_init`` says so) and neither is leaving; their pids.

    A worker installs its signal handlers just before it is ready: until then a signal the
    master forwards meets the handlers copied from the master, which only queue it for the
    master, and the worker never stops. So a test signals the master only once every
    worker is ready.
    """

    def ready() -> set[int] | None:
        output = g.proc.output
        live = {int(p) for p in READY.findall(output)} - {int(p) for p in EXITED.findall(output)}
        live -= {int(p) for p in AUTORESTARTING.findall(output)}
        return live if len(live) == 2 else None

    return wait_until(ready, timeout, "two workers ready")


def start_gunicorn(env: dict[str, str], *options: str) -> Gunicorn:
    """``gunicorn -k gevent -w 2 --preload`` with the load-test app and its config, once
    both workers serve."""
    proc = Proc(gunicorn_args(*options), env)
    try:
        url, master, workers = gunicorn_booted(proc)
    except BaseException:
        proc.stop()
        raise
    g = Gunicorn(proc, url, master, workers)
    try:
        wait_serving(g)
    except BaseException:
        proc.stop()
        raise
    return g


def start_pywsgi(env: dict[str, str], *options: str) -> tuple[Proc, str]:
    """``python -m loadtests.app`` on gevent's pywsgi."""
    proc = Proc([sys.executable, "-m", "loadtests.app", "--port", "0", *options], env)
    try:
        [match] = proc.wait_for(r"listening on (http://127\.0\.0\.1:\d+)", timeout=15)
    except BaseException:
        proc.stop()
        raise
    return proc, match.group(1)


@dataclass
class Outcome:
    """The counts once every process of the app has exited."""

    accepted: int  # orders whose 202 the client read
    audited: int  # of those, audit records written
    notified: int  # of those, webhooks answered
    lost: int  # accepted orders whose audit or webhook never happened
    duplicates: int  # audit records or webhooks beyond one per order
    warmups: int  # gunicorn workers' warm-up audit records
    abandoned: int  # tasks the processes logged as abandoned
    errors: int  # orders not accepted (refused or reset while the app stopped)

    @property
    def tasks(self) -> int:
        """Background tasks accepted: two per order, one per warm-up."""
        return 2 * self.accepted + self.warmups

    @property
    def ran(self) -> int:
        return self.audited + self.notified + self.warmups


def outcome(tmp: Path, orders: Orders, receiver: Receiver, output: str) -> Outcome:
    records = audit_records(tmp / "audit.jsonl")
    audits = Counter(str(r["order_id"]) for r in records if r["event"] == "order")
    ids = orders.ids
    return Outcome(
        accepted=len(orders.acks),
        audited=len(ids & set(audits)),
        notified=len(ids & set(receiver.answered)),
        lost=sum(1 for i in ids if not (audits[i] and receiver.answered[i])),
        duplicates=sum(n - 1 for n in audits.values() if n > 1)
        + sum(n - 1 for n in receiver.answered.values() if n > 1)
        + len(set(audits) - ids)
        + len(set(receiver.answered) - ids),
        warmups=sum(1 for r in records if r["event"] == "warmup"),
        abandoned=sum(abandoned(output)),
        errors=orders.errors,
    )


# -- scripts and Locust ---------------------------------------------------------------------

#: A script that queues ``argv[2]`` tasks each with ``ggopool.go``, a pool's ``go`` and
#: ``ggopool.spawn`` (each writes a line to ``argv[1]``), one DNS lookup through gevent's
#: threadpool, and ends.
SCRIPT_ENDS = """
    import os, sys
    import gevent, gevent.socket
    import ggopool

    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write_line(kind, i):
        gevent.sleep(0.001)
        os.write(fd, f"{kind} {i}\\n".encode())

    def resolve():
        # The first use of gevent's threadpool, at exit: DNS through the default resolver.
        host = gevent.socket.getaddrinfo("localhost", 80)[0][4][0]
        os.write(fd, f"dns {host}\\n".encode())

    pool = ggopool.new_pool("lines", 4)
    for i in range(int(sys.argv[2])):
        ggopool.go(write_line, "go", i)
        pool.go(write_line, "pool", i)
        ggopool.spawn(write_line, "spawn", i)
    ggopool.go(resolve)
    print("queued", flush=True)
"""

#: A locustfile whose users queue a 10 ms task every 20 ms on an untracked pool of cap 1
#: (4 users queue about twice what it finishes) and 25 more as each stops, and, then, one
#: on a tracked pool whose drain at test_stop is shorter than they take.
#: Every task writes a line to ``$SHUTDOWN_LINES`` when queued and when done.
LOCUSTFILE = """
    import os
    import gevent
    import ggopool
    from locust import User, constant, events, task
    from ggopool.locust import track

    fd = os.open(os.environ["SHUTDOWN_LINES"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    jobs = ggopool.new_pool("jobs", 1)  # untracked: nothing drains it at test_stop
    slow = track(ggopool.new_pool("slow", 1), drain_timeout=0.2)

    def job(kind, i, seconds):
        gevent.sleep(seconds)
        os.write(fd, f"done {kind} {i}\\n".encode())

    n = 0

    class Worker(User):
        wait_time = constant(0.02)

        @task
        def queue(self):
            global n
            n += 1
            os.write(fd, f"queued jobs {n}\\n".encode())
            jobs.go(job, "jobs", n, 0.01)

        def on_stop(self):
            global n
            for _ in range(25):  # the last tasks a user queues, as it stops
                n += 1
                os.write(fd, f"queued jobs {n}\\n".encode())
                jobs.go(job, "jobs", n, 0.01)
            n += 1
            os.write(fd, f"queued slow {n}\\n".encode())
            slow.go(job, "slow", n, 0.1)

    @events.quitting.add_listener
    def backlog(environment, **kwargs):
        os.write(fd, f"pending at quit {jobs.stats().pending}\\n".encode())
"""


def write_script(tmp: Path, text: str, name: str = "script.py") -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def run_locust(tmp: Path, users: int, seconds: int) -> tuple[Proc, list[list[str]]]:
    """`LOCUSTFILE`, headless, ``users`` users for ``seconds``; the exited process and the
    lines its tasks wrote, split."""
    locustfile = write_script(tmp, LOCUSTFILE, "locustfile.py")
    out = tmp / "lines.txt"
    args = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u"]
    args += [str(users), "-r", str(users), "-t", f"{seconds}s", "-H", "http://127.0.0.1:9"]
    proc = Proc([*args, "--only-summary"], subprocess_env(SHUTDOWN_LINES=str(out)))
    try:
        proc.wait(30 + 2 * seconds)
    finally:
        proc.stop()
    return proc, [line.split() for line in lines(out)]


# -- the measurement: every stop path under a steady load -----------------------------------


@dataclass(frozen=True)
class Load:
    cap: int = 2  # the app's background pool, per process
    work_delay: float = 0.1  # seconds per audit write
    load: float = 1.2  # orders sent per second, over what the pools finish
    stop_after: float = 4.0
    drain_timeout: float = 5.0
    max_requests: int = 200

    def rate(self, processes: int) -> float:
        # An order's audit takes work_delay on one of cap workers, its webhook next to
        # nothing: each process finishes about cap / work_delay orders a second.
        return self.load * processes * self.cap / self.work_delay


SIGNALS = {
    "gunicorn SIGTERM": signal.SIGTERM,
    "gunicorn SIGQUIT": signal.SIGQUIT,
    "gunicorn SIGHUP": signal.SIGHUP,
    "pywsgi SIGTERM": signal.SIGTERM,
    "pywsgi SIGINT": signal.SIGINT,
}
RECYCLING = "gunicorn --max-requests"
PATHS = [*SIGNALS, RECYCLING, "script", "locust"]


def settle(tmp: Path, receiver: Receiver, timeout: float = 60) -> None:
    """Wait until audit records and answered webhooks stop growing for 2 s."""
    last, still = -1, 0.0
    deadline = time.monotonic() + timeout
    while still < 2.0 and time.monotonic() < deadline:
        done = len(audit_records(tmp / "audit.jsonl")) + sum(receiver.answered.values())
        still = still + 0.5 if done == last else 0.0
        last = done
        gevent.sleep(0.5)


def measure_server(path: str, load: Load, tmp: Path) -> Outcome:
    """Orders sent at a steady rate; the stop ``stop_after`` seconds in. A reload and
    recycling are stops of their own: the load then goes on (for ``stop_after`` more
    seconds after a reload), the backlog settles, and only then SIGTERM ends the run."""
    settings = {
        "background_cap": str(load.cap),
        "work_delay": str(load.work_delay),
        "drain_timeout": str(load.drain_timeout),
    }
    with Receiver() as receiver:
        env = app_env(tmp, receiver, **settings)
        if path.startswith("gunicorn"):
            options = ["--max-requests", str(load.max_requests)] if path == RECYCLING else []
            g = start_gunicorn(env, *options)
            proc, url, pid, processes = g.proc, g.url, g.master, 2
        else:
            proc, url = start_pywsgi(env)
            pid, processes = proc.pid, 1
        try:
            orders, stop, clients = Orders(), Event(), 8
            pace = clients / load.rate(processes)
            sender = gevent.spawn(place_orders, url, orders, 10**9, clients, stop=stop, pace=pace)
            gevent.sleep(load.stop_after)
            sig = SIGNALS.get(path)
            if sig is not None:
                os.kill(pid, sig)
            if sig == signal.SIGHUP:
                gevent.sleep(load.stop_after)
            stop.set()
            sender.join()
            if sig in (signal.SIGHUP, None):
                settle(tmp, receiver)
                os.kill(pid, signal.SIGTERM)
            proc.wait(120)
        finally:
            proc.stop()
        return outcome(tmp, orders, receiver, proc.output)


@dataclass(frozen=True)
class Measured:
    accepted: int  # orders (202 read), or tasks queued by a script or Locust
    lost: int  # of those, not fully done
    not_run: int  # tasks accepted and not run
    logged: int  # tasks logged as abandoned


def measure(path: str, load: Load, tmp: Path) -> Measured:
    """One run of one stop path."""
    if path in SIGNALS or path == RECYCLING:
        r = measure_server(path, load, tmp)
        return Measured(r.accepted, r.lost, r.tasks - r.ran, r.abandoned)
    if path == "script":
        out = tmp / "lines.txt"
        proc = Proc([sys.executable, str(write_script(tmp, SCRIPT_ENDS)), str(out), "1000"])
        try:
            proc.wait(60)
        finally:
            proc.stop()
        lost = 3001 - len(lines(out))
        return Measured(3001, lost, lost, sum(abandoned(proc.output, "lines")))
    proc, written = run_locust(tmp, users=4, seconds=int(load.stop_after))
    queued = {tuple(w[1:]) for w in written if w[0] == "queued"}
    lost = len(queued - {tuple(w[1:]) for w in written if w[0] == "done"})
    logged = sum(abandoned(proc.output, "jobs") + abandoned(proc.output, "slow"))
    return Measured(len(queued), lost, lost, logged)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.shutdown_scenarios",
        description="Measure what each stop path loses: the app's background cap, its "
        "time per audit write, a load above what the pools finish, the stop some seconds "
        "in; one run each. Orders for the servers, tasks for the script and Locust.",
    )
    parser.add_argument("--cap", type=int, default=Load.cap)
    parser.add_argument("--work-delay", type=float, default=Load.work_delay)
    parser.add_argument("--load", type=float, default=Load.load, help="x what the pools finish")
    parser.add_argument("--stop-after", type=float, default=Load.stop_after)
    parser.add_argument("--drain-timeout", type=float, default=Load.drain_timeout)
    parser.add_argument("--max-requests", type=int, default=Load.max_requests)
    parser.add_argument("paths", nargs="*", default=PATHS, help=f"of {PATHS}")
    args = parser.parse_args(argv)
    load = Load(
        args.cap,
        args.work_delay,
        args.load,
        args.stop_after,
        args.drain_timeout,
        args.max_requests,
    )
    print(load)
    print("| how the process stopped | accepted | lost | tasks not run | logged as abandoned |")
    print("|---|---:|---:|---:|---:|")
    for path in args.paths:
        with tempfile.TemporaryDirectory() as tmp:
            m = measure(path, load, Path(tmp))
        label = f"{path} {load.max_requests}" if path == RECYCLING else path
        print(
            f"| {label} | {m.accepted:,} | {m.lost:,} | {m.not_run:,} | {m.logged:,} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
