"""The load-test app: a plain WSGI app that answers at once and hands slow work to ggopool pools.

Routes:

* ``POST /orders`` with ``{"sku": "A1", "qty": 2}``: answers 202 at once with the order id;
  the slow parts, an audit write and a webhook notification, run afterwards on the
  ``background`` pool.
* ``GET /dashboard?widgets=4``: gathers that many ``GET /widgets/<i>`` sub-requests through
  the ``fanout`` pool (a pool's cap bounds how many run at once over all requests).
* ``GET /`` an HTML page linking to ``/assets/<i>`` (a browser, or Locust's Browser user,
  loads them at once); ``GET /assets/<i>``, ``GET /widgets/<i>``: slow-ish leaves.
* ``POST /events``: answers 202 at once; an audit write and a webhook call (a
  ``gevent.sleep`` of ``webhook_delay`` seconds, 0.5 by default, standing for the network)
  run afterwards, each
  a blocking background task started with ``ggopool.go`` or ``gevent.spawn``
  (``LOADTESTS_SPAWN``). Each task's start delay (from the call to its first line) is kept
  and, with ``LOADTESTS_DELAYS_DIR`` set, written there when the process stops
  (`dump_start_delays`).
* ``POST /webhooks``: the webhook receiver the app notifies when no other is configured.
* ``GET /stats``: this process's pools and counters as JSON (under gunicorn each worker
  answers for itself; ``pid`` says which).
* ``GET /metrics``: the pools in Prometheus's text format (`ggopool.prometheus`), the two
  pools measured with ``instrument``. With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn),
  any worker answers for every worker process.

Run it::

    python -m loadtests.app --port 8000
    gunicorn -k gevent -w 2 --preload -b 127.0.0.1:8000 \\
        -c python:loadtests.gunicorn_conf loadtests.app:app

All I/O is gevent's own (pywsgi, geventhttpclient, gevent.sleep), so the app needs no
monkey-patching; gunicorn's gevent worker patches anyway. Pools and clients are made per
process on first use (see `process`), so ``--preload`` leaves nothing queued in the master.
Settings come from ``LOADTESTS_*`` environment variables (see `Settings.from_env`), because
gunicorn has no way to pass options to an app.
"""

from __future__ import annotations

import argparse
import array
import contextvars
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import gevent
import gevent.socket
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from geventhttpclient import HTTPClient
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import ggopool
from ggopool.prometheus import MultiProcessPublisher, PoolCollector, instrument, multiprocess_mode

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("loadtests.app")

#: The assets the HTML page at ``/`` links to.
PAGE_ASSETS = 6
#: The most widgets one dashboard request may ask for.
MAX_WIDGETS = 16
#: The largest request body read, in bytes.
MAX_BODY = 64 * 1024
#: Seconds a dashboard waits for its widgets before it answers 504.
GATHER_TIMEOUT = 10.0
#: Seconds the pools get, once the server stopped, to finish their tasks (ggopool's exit
#: drain); half of Docker's 10 s between SIGTERM and SIGKILL.
DRAIN_TIMEOUT = 5.0
#: What starts the background tasks of ``POST /events``, by ``LOADTESTS_SPAWN``.
SPAWNS: dict[str, Callable[..., object]] = {"ggopool.go": ggopool.go, "gevent.spawn": gevent.spawn}
#: The most start delays a process keeps (8 bytes each); later ones are only counted.
MAX_START_DELAYS = 1_000_000


@dataclass(frozen=True)
class Settings:
    """What a process of the app is built with."""

    background_cap: int = 16
    fanout_cap: int = 32
    #: Seconds each slow part (audit write, widget, asset) takes, as a database would.
    work_delay: float = 0.005
    #: Where audit records go, one JSON line each (O_APPEND, so processes can share it).
    audit_file: str | None = None
    #: Where order notifications are POSTed; None: this app's own ``/webhooks``.
    webhook_url: str | None = None
    #: Seconds the webhook call of ``POST /events`` takes (a ``gevent.sleep``).
    webhook_delay: float = 0.5
    #: CPU seconds each ``POST /events`` spends before it answers, as a framework's routing,
    #: validation and serialisation would (a busy loop on this thread's CPU clock).
    event_cpu: float = 0.0
    #: What starts the background tasks of ``POST /events``: a key of `SPAWNS`.
    spawn: str = "ggopool.go"
    #: Where each process writes its start delays when it stops (`dump_start_delays`).
    delays_dir: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read ``LOADTESTS_BACKGROUND_CAP``, ``_FANOUT_CAP``, ``_WORK_DELAY``, ``_AUDIT_FILE``,
        ``_WEBHOOK_URL``, ``_WEBHOOK_DELAY``, ``_EVENT_CPU``, ``_SPAWN``, ``_DELAYS_DIR``; unset
        ones keep their defaults."""
        env = dict(os.environ) if env is None else env
        settings = cls()
        if "LOADTESTS_BACKGROUND_CAP" in env:
            settings = replace(settings, background_cap=int(env["LOADTESTS_BACKGROUND_CAP"]))
        if "LOADTESTS_FANOUT_CAP" in env:
            settings = replace(settings, fanout_cap=int(env["LOADTESTS_FANOUT_CAP"]))
        if "LOADTESTS_WORK_DELAY" in env:
            settings = replace(settings, work_delay=float(env["LOADTESTS_WORK_DELAY"]))
        if env.get("LOADTESTS_AUDIT_FILE"):
            settings = replace(settings, audit_file=env["LOADTESTS_AUDIT_FILE"])
        if env.get("LOADTESTS_WEBHOOK_URL"):
            settings = replace(settings, webhook_url=env["LOADTESTS_WEBHOOK_URL"])
        if env.get("LOADTESTS_WEBHOOK_DELAY"):
            settings = replace(settings, webhook_delay=float(env["LOADTESTS_WEBHOOK_DELAY"]))
        if env.get("LOADTESTS_EVENT_CPU"):
            settings = replace(settings, event_cpu=float(env["LOADTESTS_EVENT_CPU"]))
        if env.get("LOADTESTS_SPAWN"):
            settings = replace(settings, spawn=env["LOADTESTS_SPAWN"])
        if env.get("LOADTESTS_DELAYS_DIR"):
            settings = replace(settings, delays_dir=env["LOADTESTS_DELAYS_DIR"])
        return settings


class CountedPool:
    """A ggopool pool plus the counts ``/stats`` reports, so a test can check the cap held
    (``peak_running``, ``peak_workers``) and nothing was lost (``submitted`` ==
    ``completed + failed`` once ``task_count`` and ``running`` are 0)."""

    def __init__(self, name: str, cap: int) -> None:
        # Every task measured (queue wait and peaks in /metrics), whatever method queued it.
        self.pool = instrument(ggopool.new_pool(name, cap))
        self.pool.set_panic_handler(self._on_panic)
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.running = 0
        self.peak_running = 0
        self.peak_workers = 0

    def go(self, fn: Callable[..., object], /, *args: object) -> None:
        self.submitted += 1
        self.pool.go(self._run, fn, args)
        # Workers start only inside go() (or set_cap), so sampling here sees every peak.
        self.peak_workers = max(self.peak_workers, self.pool.worker_count())

    def _run(self, fn: Callable[..., object], args: tuple[object, ...]) -> None:
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        try:
            fn(*args)
        finally:
            self.running -= 1
        self.completed += 1

    def _on_panic(self, ctx: contextvars.Context, exc: Exception) -> None:
        # A failed notification must not go unnoticed, nor crash anything: count and log.
        self.failed += 1
        log.error("task of pool %r failed", self.pool.name, exc_info=exc)

    def stats(self) -> dict[str, int]:
        return {
            "cap": self.pool.cap,
            "worker_count": self.pool.worker_count(),
            "task_count": self.pool.task_count(),
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "running": self.running,
            "peak_running": self.peak_running,
            "peak_workers": self.peak_workers,
        }


class RunLedger:
    """Which orders a kind of background task has run, in memory bounded by how far runs
    get out of order (not by how many orders there were, so a soak stays flat): order
    numbers are handed out in sequence, so every number below ``_below`` has run, and
    ``_early`` holds the ones above it that ran first."""

    def __init__(self) -> None:
        self.runs = 0
        self.duplicates = 0
        self._below = 1
        self._early: set[int] = set()

    def record(self, number: int) -> None:
        self.runs += 1
        if number < self._below or number in self._early:
            self.duplicates += 1
            return
        self._early.add(number)
        while self._below in self._early:
            self._early.discard(self._below)
            self._below += 1


def _sequence_number(order: dict[str, object]) -> int:
    # order_id is "<pid>-<n>", n from the process's itertools.count(1).
    return int(str(order["order_id"]).rsplit("-", 1)[1])


class Process:
    """Everything one process of the app owns: its pools, HTTP clients and counters.

    Made on first use in each process (see `process`), never at import: under
    ``gunicorn --preload`` the module is imported by the master, and anything queued there
    would stay in the master, which serves no requests and would never run it.
    """

    def __init__(self, settings: Settings) -> None:
        if settings.spawn not in SPAWNS:
            raise ValueError(f"spawn must be one of {sorted(SPAWNS)}, got {settings.spawn!r}")
        self.pid = os.getpid()
        self.settings = settings
        self.spawn = SPAWNS[settings.spawn]
        #: Seconds from each ``POST /events`` task's spawn to its first line, in start order.
        self.start_delays = array.array("d")
        self.start_delays_dropped = 0
        self.events = 0
        self.background = CountedPool("background", settings.background_cap)
        self.fanout = CountedPool("fanout", settings.fanout_cap)
        self.clients: dict[tuple[str, int], HTTPClient] = {}
        self.self_port: int | None = None
        self.order_ids = itertools.count(1)
        self.orders_accepted = 0
        # Which orders each kind of background task has run: "exactly once" is no
        # duplicates and as many runs as orders accepted.
        self.audited = RunLedger()
        self.notified = RunLedger()
        self.webhooks_received = 0
        self.dashboards = 0
        self.warmups = 0
        self._audit_fd: int | None = None
        # /metrics: this process's pools (with PROMETHEUS_MULTIPROC_DIR set, PUBLISHER's).
        self.registry = CollectorRegistry()
        self.registry.register(PoolCollector(self.pools))

    def pools(self) -> list[ggopool.Pool]:
        return [self.background.pool, self.fanout.pool]

    def client(self, host: str, port: int, concurrency: int) -> HTTPClient:
        key = (host, port)
        client = self.clients.get(key)
        if client is None:
            client = HTTPClient(
                host,
                port,
                concurrency=concurrency,
                connection_timeout=5.0,
                network_timeout=10.0,
            )
            self.clients[key] = client
        return client

    def self_client(self, concurrency: int) -> HTTPClient:
        if self.self_port is None:
            raise RuntimeError("the app's own port is known only after its first request")
        # Loopback: the app calls itself, whatever interface it is bound to.
        return self.client("127.0.0.1", self.self_port, concurrency)

    def audit(self, record: dict[str, object]) -> None:
        """Write one audit record: a JSON line, in one write() on an O_APPEND descriptor so
        lines from gunicorn's worker processes never interleave."""
        gevent.sleep(self.settings.work_delay)  # the storage round trip
        path = self.settings.audit_file
        if path is None:
            return
        if self._audit_fd is None:
            self._audit_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._audit_fd, (json.dumps(record, sort_keys=True) + "\n").encode())

    def record_start(self, submitted: float) -> None:
        if len(self.start_delays) < MAX_START_DELAYS:
            self.start_delays.append(time.perf_counter() - submitted)
        else:
            self.start_delays_dropped += 1

    def stats(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "pools": {"background": self.background.stats(), "fanout": self.fanout.stats()},
            # What each pool's stats() says, as /metrics reports it.
            "pool_stats": {
                pool.name: asdict(pool.stats())
                for pool in (self.background.pool, self.fanout.pool, ggopool.default_pool())
            },
            "orders": {
                "accepted": self.orders_accepted,
                "audited": self.audited.runs,
                "notified": self.notified.runs,
                "duplicates": self.audited.duplicates + self.notified.duplicates,
            },
            "webhooks_received": self.webhooks_received,
            "events": self.events,
            "start_delays": len(self.start_delays) + self.start_delays_dropped,
            "dashboards": self.dashboards,
            "warmups": self.warmups,
        }


_settings: Settings | None = None
_process: Process | None = None


def configure(settings: Settings) -> None:
    """Use ``settings`` instead of the environment's for the processes made from now on."""
    global _settings, _process
    _settings = settings
    _process = None


def process() -> Process:
    """This process's `Process`, made on first use, and made afresh in a forked child."""
    global _process
    if _process is None or _process.pid != os.getpid():
        _process = Process(_settings if _settings is not None else Settings.from_env())
    return _process


def _pools_of_this_process() -> list[ggopool.Pool]:
    return process().pools()


#: With PROMETHEUS_MULTIPROC_DIR set (gunicorn), /metrics answers for every process: each
#: publishes its pools every second and at each scrape. Made and started at import, as an
#: application would. Under ``--preload`` the master imports this module too, but it never
#: runs gevent's hub, so it never publishes; each worker publishes from its hub's first turn.
PUBLISHER = (
    MultiProcessPublisher(PoolCollector(_pools_of_this_process)) if multiprocess_mode() else None
)
if PUBLISHER is not None:
    PUBLISHER.start()


def start_worker_process() -> None:
    """Build this process's pools now and queue a warm-up audit record.

    Meant for gunicorn's ``post_fork`` hook (see ``loadtests/gunicorn_conf.py``): it runs
    in each worker after the fork, so the record is written once per worker and never by
    the master.
    """
    proc = process()

    def warm_up() -> None:
        proc.warmups += 1
        proc.audit({"event": "warmup", "pid": proc.pid})

    proc.background.go(warm_up)


def dump_start_delays() -> None:
    """Write this process's ``POST /events`` start delays to ``<delays_dir>/<pid>.delays``
    (native doubles, in seconds), if it made its `Process` and has a ``delays_dir``.

    Meant for gunicorn's ``worker_exit`` hook (see ``loadtests/gunicorn_conf.py``), which
    runs in the worker under either worker class.
    """
    proc = _process
    if proc is None or proc.pid != os.getpid() or proc.settings.delays_dir is None:
        return
    with open(os.path.join(proc.settings.delays_dir, f"{proc.pid}.delays"), "wb") as out:
        proc.start_delays.tofile(out)


# -- background work of an event: blocking tasks, timed from their spawn -----------------


def audit_event(proc: Process, submitted: float, event: dict[str, object]) -> None:
    proc.record_start(submitted)
    proc.audit({"event": "event", **event})


def call_webhook(proc: Process, submitted: float) -> None:
    proc.record_start(submitted)
    gevent.sleep(proc.settings.webhook_delay)  # the webhook's round trip


# -- background work of an order ----------------------------------------------------------


def audit_order(proc: Process, order: dict[str, object]) -> None:
    proc.audited.record(_sequence_number(order))
    proc.audit({"event": "order", **order})


def notify_order(proc: Process, order: dict[str, object]) -> None:
    proc.notified.record(_sequence_number(order))
    body = json.dumps(order).encode()
    headers = {"Content-Type": "application/json"}
    url = proc.settings.webhook_url
    cap = proc.background.pool.cap
    if url is None:
        client, path = proc.self_client(cap), "/webhooks"
    else:
        parts = urlsplit(url)
        client = proc.client(parts.hostname or "127.0.0.1", parts.port or 80, cap)
        path = parts.path or "/"
    with client.post(path, body=body, headers=headers) as response:
        response.read()
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"webhook {path} answered {response.status_code}")


# -- routes ------------------------------------------------------------------------------

Response = tuple[str, bytes, str]


class HTTPError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(status: str, payload: object) -> Response:
    return status, json.dumps(payload).encode(), "application/json"


def _read_json(environ: WSGIEnvironment) -> Any:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HTTPError("400 Bad Request", "Content-Length must be an int") from None
    if length > MAX_BODY:
        raise HTTPError("413 Content Too Large", f"body must be <= {MAX_BODY} bytes, got {length}")
    try:
        return json.loads(environ["wsgi.input"].read(length) or b"null")
    except ValueError:
        raise HTTPError("400 Bad Request", "body must be JSON") from None


def post_order(proc: Process, environ: WSGIEnvironment) -> Response:
    body = _read_json(environ)
    if not isinstance(body, dict):
        raise HTTPError("400 Bad Request", f"body must be a JSON object, got {body!r}")
    sku, qty = body.get("sku"), body.get("qty")
    if not isinstance(sku, str) or not sku:
        raise HTTPError("400 Bad Request", f"sku must be a non-empty str, got {sku!r}")
    if type(qty) is not int or not 1 <= qty <= 100:
        raise HTTPError("400 Bad Request", f"qty must be an int in 1..100, got {qty!r}")
    order: dict[str, object] = {
        "order_id": f"{proc.pid}-{next(proc.order_ids)}",
        "pid": proc.pid,
        "sku": sku,
        "qty": qty,
    }
    proc.orders_accepted += 1
    # Acknowledge now; the slow parts run after this response is on its way.
    proc.background.go(audit_order, proc, order)
    proc.background.go(notify_order, proc, order)
    return _json("202 Accepted", order)


def post_event(proc: Process, environ: WSGIEnvironment) -> Response:
    body = _read_json(environ)
    if not isinstance(body, dict):
        raise HTTPError("400 Bad Request", f"body must be a JSON object, got {body!r}")
    busy_until = time.thread_time() + proc.settings.event_cpu
    while time.thread_time() < busy_until:
        pass
    proc.events += 1
    event: dict[str, object] = {"pid": proc.pid, "number": proc.events, **body}
    submitted = time.perf_counter()
    proc.spawn(audit_event, proc, submitted, event)
    proc.spawn(call_webhook, proc, time.perf_counter())
    return _json("202 Accepted", {"pid": proc.pid, "number": proc.events})


def get_dashboard(proc: Process, environ: WSGIEnvironment) -> Response:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    raw = query.get("widgets", ["4"])[0]
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_WIDGETS:
        raise HTTPError(
            "400 Bad Request", f"widgets must be an int in 1..{MAX_WIDGETS}, got {raw!r}"
        )
    client = proc.self_client(proc.fanout.pool.cap)
    results: list[object] = [None] * n
    pending = n
    done = Event()

    def fetch(i: int) -> None:
        nonlocal pending
        try:
            with client.get(f"/widgets/{i}") as response:
                if response.status_code == 200:
                    results[i] = json.loads(response.read())
        finally:
            pending -= 1
            if pending == 0:
                done.set()

    for i in range(n):
        proc.fanout.go(fetch, i)
    if not done.wait(GATHER_TIMEOUT):
        raise HTTPError("504 Gateway Timeout", f"widgets not gathered in {GATHER_TIMEOUT} s")
    if any(r is None for r in results):
        raise HTTPError("502 Bad Gateway", "a widget request failed")
    proc.dashboards += 1
    return _json("200 OK", {"pid": proc.pid, "widgets": results})


def get_metrics(proc: Process) -> Response:
    body = PUBLISHER.scrape() if PUBLISHER is not None else generate_latest(proc.registry)
    return "200 OK", body, CONTENT_TYPE_LATEST


def get_leaf(proc: Process, kind: str, name: str) -> Response:
    gevent.sleep(proc.settings.work_delay)
    if kind == "widgets":
        return _json("200 OK", {"widget": name, "value": len(name)})
    return "200 OK", b"/* asset " + name.encode() + b" */\n" + b"x" * 512, "text/css"


def get_page() -> Response:
    links = "".join(f'<link rel="stylesheet" href="/assets/{i}.css">\n' for i in range(PAGE_ASSETS))
    html = f"<!doctype html>\n<html><head>\n{links}</head><body>shop</body></html>\n"
    return "200 OK", html.encode(), "text/html"


def post_webhook(proc: Process, environ: WSGIEnvironment) -> Response:
    _read_json(environ)
    proc.webhooks_received += 1
    return _json("200 OK", {"ok": True})


def route(proc: Process, environ: WSGIEnvironment) -> Response:
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
    parts = path.strip("/").split("/")
    if method == "POST" and path == "/orders":
        return post_order(proc, environ)
    if method == "POST" and path == "/events":
        return post_event(proc, environ)
    if method == "GET" and path == "/dashboard":
        return get_dashboard(proc, environ)
    if method == "GET" and path == "/stats":
        return _json("200 OK", proc.stats())
    if method == "GET" and path == "/metrics":
        return get_metrics(proc)
    if method == "GET" and path == "/":
        return get_page()
    if method == "GET" and len(parts) == 2 and parts[0] in ("assets", "widgets") and parts[1]:
        return get_leaf(proc, parts[0], parts[1])
    if method == "POST" and path == "/webhooks":
        return post_webhook(proc, environ)
    raise HTTPError("404 Not Found", f"no route for {method} {path}")


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application."""
    proc = process()
    if proc.self_port is None:
        proc.self_port = int(environ["SERVER_PORT"])
    try:
        status, body, content_type = route(proc, environ)
    except HTTPError as exc:
        status, body, content_type = _json(exc.status, {"error": str(exc)})
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


# -- python -m loadtests.app ---------------------------------------------------------------


def listen(host: str, port: int) -> gevent.socket.socket:
    """A listening socket whose connections have TCP_NODELAY, as gunicorn's have.

    pywsgi sends a response's headers and body in two writes; with Nagle's algorithm on,
    the body of every response after the first on a keep-alive connection waits for the
    client's delayed ACK, some 40 ms. (Linux copies the option to accepted sockets.)
    """
    sock = gevent.socket.socket(gevent.socket.AF_INET, gevent.socket.SOCK_STREAM)
    try:
        sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEADDR, 1)
        sock.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    defaults = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.app",
        description="Serve the load-test app on gevent's pywsgi.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind; 0: any free one")
    parser.add_argument("--background-cap", type=int, default=defaults.background_cap)
    parser.add_argument("--fanout-cap", type=int, default=defaults.fanout_cap)
    parser.add_argument("--work-delay", type=float, default=defaults.work_delay)
    parser.add_argument("--audit-file", default=defaults.audit_file)
    parser.add_argument("--webhook-url", default=defaults.webhook_url)
    parser.add_argument("--webhook-delay", type=float, default=defaults.webhook_delay)
    parser.add_argument("--event-cpu", type=float, default=defaults.event_cpu)
    parser.add_argument("--spawn", choices=sorted(SPAWNS), default=defaults.spawn)
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=float(os.environ.get("LOADTESTS_DRAIN_TIMEOUT") or DRAIN_TIMEOUT),
        help="seconds the pools get to finish their tasks once the server stopped "
        f"(LOADTESTS_DRAIN_TIMEOUT, default {DRAIN_TIMEOUT})",
    )
    args = parser.parse_args(argv)
    if args.background_cap < 1 or args.fanout_cap < 1:
        parser.error(
            "--background-cap and --fanout-cap must be ints >= 1, "
            f"got {args.background_cap} and {args.fanout_cap}"
        )
    if not args.drain_timeout >= 0:
        parser.error(f"--drain-timeout must be seconds >= 0, got {args.drain_timeout}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    configure(
        Settings(
            background_cap=args.background_cap,
            fanout_cap=args.fanout_cap,
            work_delay=args.work_delay,
            audit_file=args.audit_file,
            webhook_url=args.webhook_url,
            webhook_delay=args.webhook_delay,
            event_cpu=args.event_cpu,
            spawn=args.spawn,
        )
    )
    # No access log: at load-test rates it would cost more than the requests.
    server = WSGIServer(listen(args.host, args.port), app, log=None)
    server.start()
    # What the pools hold when the server stops runs at exit: ggopool's exit drain waits
    # up to this long for it, and logs what it abandons.
    ggopool.set_exit_drain(args.drain_timeout)
    stop = Stopper(server)
    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    # The line tests and scripts wait for; with --port 0 it is how they learn the port.
    print(f"listening on http://{args.host}:{server.server_port} pid {os.getpid()}", flush=True)
    started = time.monotonic()
    server.serve_forever()
    log.info(
        "stopped after %.1f s; the pools' tasks get up to %.1f s more",
        time.monotonic() - started,
        args.drain_timeout,
    )
    return 0


class Stopper:
    """The SIGTERM and SIGINT handler of ``python -m loadtests.app``, the pattern for any
    gevent server.

    The first signal stops the server: it stops accepting, gives the requests it serves
    up to its ``stop_timeout`` to finish, and ``serve_forever()`` returns; ``main``
    returns, and while the interpreter exits ggopool's exit drain runs what the pools
    still hold. (Python's default for SIGTERM would end the process at once, dropping
    them.) A second signal raises KeyboardInterrupt in the main greenlet, as a second
    Ctrl-C does: during the exit drain, that ends the drain at once, and what it
    abandons is logged.
    """

    def __init__(self, server: WSGIServer) -> None:
        self.server = server
        self.signals = 0

    def __call__(self) -> None:
        self.signals += 1
        if self.signals > 1:
            # Raised in the greenlet gevent runs this handler in; the hub passes it on
            # to the main greenlet.
            raise KeyboardInterrupt
        self.server.stop()


if __name__ == "__main__":
    sys.exit(main())
