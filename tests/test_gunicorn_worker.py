"""ggopool's gunicorn worker class, ``-k ggopool.gunicorn.GeventWorker``, in real gunicorn:
the load-test app stopped every way gunicorn stops a worker, counted from outside (every
order accepted is audited and notified once, or the tasks that were not are exactly the
ones logged as abandoned); the drain's deadline taken from gunicorn's ``graceful_timeout``,
with the class and with the hooks; idle keep-alive connections closed on a stop; the
connection pool in the Prometheus collector; and ``--preload``'s tasks queued in the master.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.event import Event

import ggopool
from ggopool import _shutdown
from ggopool.gunicorn import StopClock
from tests.deploy_helpers import (
    LOOPBACK,
    WORKER_CLASS,
    Proc,
    answer_from_each_worker,
    client,
    fetch,
    gunicorn_booted,
    read_response,
    start_flask_gunicorn,
    subprocess_env,
    wait_until,
)
from tests.patient_receiver import PatientReceiver
from tests.shutdown_scenarios import (
    Gunicorn,
    Orders,
    Outcome,
    Receiver,
    abandoned,
    app_env,
    outcome,
    place_orders,
    start_gunicorn,
    wait_serving,
)

CAP = 2
ORDERS = 24
CLIENTS = 4
SETTINGS = {"background_cap": str(CAP), "work_delay": "0.01", "drain_timeout": "20"}
CLASS = ("-k", WORKER_CLASS)
#: The note the drain logs after one second: how long it may still wait.
WAITING = re.compile(r"ggopool: draining: waiting up to ([\d.]+) s more")
KILLED = "was sent SIGKILL"


def wait_held(receiver: Receiver, orders: Orders) -> int:
    """Wait until every process's workers are all held on notifications; how many are."""
    per_process: dict[int, int] = {}
    for ack in orders.acks:
        per_process[ack["pid"]] = per_process.get(ack["pid"], 0) + 1
    held = sum(min(CAP, n) for n in per_process.values())
    wait_until(lambda: receiver.held == held, 15, f"{held} held notifications")
    return held


def place_orders_on_both(g: Gunicorn, orders: Orders) -> None:
    """`ORDERS` orders, then more in rounds until both workers have taken some (the kernel
    may hand a loaded machine's connections to one worker for a while): each worker then
    has notifications to hold and tasks to drain."""
    place_orders(g.url, orders, ORDERS, CLIENTS)

    def both() -> bool:
        if {ack["pid"] for ack in orders.acks} == g.workers:
            return True
        place_orders(g.url, orders, CLIENTS, CLIENTS)
        return False

    wait_until(both, 30, "orders on both workers")


def assert_nothing_lost(result: Outcome, warmups: int, orders: Orders) -> None:
    assert result.accepted == len(orders.acks) >= ORDERS
    assert result.errors == 0
    assert result.lost == 0
    assert result.duplicates == 0
    assert result.warmups == warmups
    assert result.ran == result.tasks
    assert result.abandoned == 0


def test_importing_ggopool_gunicorn_does_not_import_gunicorn_and_k_finds_the_class() -> None:
    check = textwrap.dedent(
        """
        import sys
        import ggopool.gunicorn
        print("gunicorn" in sys.modules)
        from gunicorn.util import load_class
        from gunicorn.workers.ggevent import GeventWorker
        worker = load_class("ggopool.gunicorn.GeventWorker")
        print(worker.__module__, issubclass(worker, GeventWorker))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", check],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.split("\n")[:2] == ["False", "ggopool.gunicorn._worker True"]


def test_a_missing_name_of_ggopool_gunicorn_raises_attribute_error() -> None:
    import ggopool.gunicorn

    with pytest.raises(
        AttributeError, match=r"^module 'ggopool.gunicorn' has no attribute 'Nope'$"
    ):
        ggopool.gunicorn.Nope  # noqa: B018 - the attribute access is the test


# -- the budget, computed ------------------------------------------------------------------


def config(graceful_timeout: float, timeout: float) -> Any:
    return types.SimpleNamespace(graceful_timeout=graceful_timeout, timeout=timeout)


def test_the_budget_is_graceful_timeout_left_since_the_stop_less_the_margin() -> None:
    clock = StopClock()
    now = time.monotonic()
    clock.began, clock.beat = now - 5.0, now - 2.0
    # The worker class beats while it drains: only graceful_timeout counts.
    assert 23.9 < clock.budget(config(30, 10), beating=True) <= 24.0
    # The hooks cannot: timeout since the last heartbeat counts too (10 - 2 - 1).
    assert 6.9 < clock.budget(config(30, 10), beating=False) <= 7.0
    # timeout 0 is gunicorn's "no heartbeat check".
    assert 23.9 < clock.budget(config(30, 0), beating=False) <= 24.0
    # Never below 0.
    assert clock.budget(config(5, 0), beating=True) == 0.0


@pytest.mark.parametrize(
    ("chosen", "deadline", "budget", "waited"),
    [
        (False, 5.0, 0.2, "0.2"),  # the default: gunicorn's budget instead of 5 s
        (True, 0.1, 10.0, "0.1"),  # set_exit_drain chose: its deadline...
        (True, 30.0, 0.2, "0.2"),  # ...cut to the budget
    ],
)
def test_the_exit_drain_takes_the_budget_unless_set_exit_drain_chose_a_deadline(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    chosen: bool,
    deadline: float,
    budget: float,
    waited: str,
) -> None:
    monkeypatch.setattr(_shutdown, "_exit_deadline", deadline)
    monkeypatch.setattr(_shutdown, "_exit_deadline_chosen", chosen)
    monkeypatch.setattr(_shutdown, "_exit_drained_pid", None)
    gate = Event()
    pool = ggopool.new_pool("budget", 1)
    pool.go(gate.wait)
    gevent.idle()
    with caplog.at_level(logging.WARNING, logger="ggopool"):
        _shutdown.exit_drain(budget=budget)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"ggopool: pool 'budget': 1 tasks abandoned at exit (0 queued, 1 running) "
        f"after the {waited} s deadline"
    ]
    gate.set()
    assert ggopool.drain(5)


def test_the_clock_takes_the_stop_to_begin_at_the_last_heartbeat_that_found_it_alive() -> None:
    clock = StopClock()
    clock.heartbeat(alive=True)
    alive_at = clock.last_alive
    clock.heartbeat(alive=False)
    assert clock.began == alive_at < clock.beat
    clock.heartbeat(alive=False)
    clock.stopping()  # a stop signal after the stop was seen: the first one stands
    assert clock.began == alive_at


def test_a_stop_not_yet_seen_is_taken_to_begin_at_the_last_heartbeat_alive() -> None:
    # gunicorn's gevent worker may learn of a SIGTERM up to a heartbeat late, with no
    # request left to make it beat again: the budget counts from the last heartbeat alive.
    clock = StopClock()
    clock.last_alive = time.monotonic() - 0.8
    assert clock.began is None
    assert 2.1 < clock.budget(config(4, 0), beating=True) <= 2.2


def test_without_post_worker_init_the_hooks_take_the_stop_as_now() -> None:
    assert 28.9 < StopClock().budget(config(30, 30), beating=False) <= 29.0


def test_the_hooks_do_nothing_in_a_worker_of_the_class() -> None:
    from ggopool.gunicorn import post_worker_init, worker_int

    notify = object()
    worker = types.SimpleNamespace(ggopool_drains=True, notify=notify)
    post_worker_init(worker)
    worker_int(worker)  # would hold for graceful_timeout in -k gevent's greenlet
    assert worker.notify is notify


def test_post_worker_init_wraps_the_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    from ggopool import gunicorn

    monkeypatch.setattr(gunicorn, "_clock", None)  # the hook's clock goes with the test
    beats: list[bool] = []
    worker: Any = types.SimpleNamespace(alive=True)
    worker.notify = lambda: beats.append(worker.alive)
    gunicorn.post_worker_init(worker)
    worker.notify()
    worker.alive = False
    worker.notify()
    clock = gunicorn._worker_clock()
    assert clock is not None
    assert beats == [True, False]
    assert clock.began == clock.last_alive <= clock.beat


# -- the stop paths, each counted ------------------------------------------------------------


@pytest.mark.parametrize(
    "stop", [signal.SIGTERM, signal.SIGQUIT, signal.SIGINT], ids=["SIGTERM", "SIGQUIT", "SIGINT"]
)
def test_a_stop_closes_the_server_then_drains_every_worker(
    tmp_path: Path, stop: signal.Signals
) -> None:
    with Receiver() as receiver:
        receiver.hold()
        g = start_gunicorn(app_env(tmp_path, receiver, **SETTINGS), *CLASS)
        try:
            orders = Orders()
            place_orders_on_both(g, orders)
            wait_held(receiver, orders)
            os.kill(g.master, stop)
            g.proc.wait_for(r"ggopool: draining: waiting up to", timeout=15, count=2)
            # While the workers drain, no order is accepted: their servers are closed.
            late = Orders()
            place_orders(g.url, late, 1, 1)
            assert (late.acks, late.errors) == ([], 1)
            receiver.release()
            assert g.proc.wait(30) == 0, g.proc.output
        finally:
            g.proc.stop()
        result = outcome(tmp_path, orders, receiver, g.proc.output)
    assert_nothing_lost(result, warmups=2, orders=orders)
    assert {ack["pid"] for ack in orders.acks} <= g.workers
    assert KILLED not in g.proc.output


def test_a_reload_drains_the_old_workers(tmp_path: Path) -> None:
    with Receiver() as receiver:
        receiver.hold()
        g = start_gunicorn(app_env(tmp_path, receiver, **SETTINGS), *CLASS)
        try:
            orders = Orders()
            place_orders_on_both(g, orders)
            wait_held(receiver, orders)
            os.kill(g.master, signal.SIGHUP)
            g.proc.wait_for(r"ggopool: draining: waiting up to", timeout=15, count=2)
            receiver.release()
            for pid in g.workers:
                g.proc.wait_for(rf"Worker exiting \(pid: {pid}\)", timeout=30)
            assert not wait_serving(g) & g.workers
            os.kill(g.master, signal.SIGTERM)
            assert g.proc.wait(30) == 0, g.proc.output
        finally:
            g.proc.stop()
        result = outcome(tmp_path, orders, receiver, g.proc.output)
    assert_nothing_lost(result, warmups=4, orders=orders)


def test_max_requests_recycling_drains_each_recycled_worker(tmp_path: Path) -> None:
    # The backlog comes from the load: orders back to back, far faster than 2 workers x
    # cap 1 write audits (a held receiver would hold the only workers serving).
    settings = {**SETTINGS, "background_cap": "1", "work_delay": "0.03"}
    with Receiver() as receiver:
        env = app_env(tmp_path, receiver, **settings)
        g = start_gunicorn(env, *CLASS, "--max-requests", "12")
        try:
            orders = Orders()
            place_orders(g.url, orders, ORDERS * 2, CLIENTS)
            wait_serving(g)
            os.kill(g.master, signal.SIGTERM)
            assert g.proc.wait(30) == 0, g.proc.output
        finally:
            g.proc.stop()
        result = outcome(tmp_path, orders, receiver, g.proc.output)
    output = g.proc.output
    assert result.accepted == ORDERS * 2, (result, output)
    assert result.errors == result.lost == result.duplicates == result.abandoned == 0, result
    # At least one worker recycled mid-load (how the requests split between the two, and so
    # how many reach --max-requests, depends on the machine's load).
    assert output.count("Autorestarting worker after current request") >= 1, output
    assert result.warmups == output.count("Booting worker with pid")
    assert result.ran == result.tasks
    assert KILLED not in output


def test_a_second_stop_signal_ends_the_drain_and_reports_it(tmp_path: Path) -> None:
    # Held past the app's 10 s network timeout, a plain Receiver's notification would fail.
    with PatientReceiver() as receiver:
        receiver.hold()  # never released: the drain cannot finish
        g = start_gunicorn(app_env(tmp_path, receiver, **SETTINGS), *CLASS)
        try:
            orders = Orders()
            place_orders_on_both(g, orders)
            wait_held(receiver, orders)
            os.kill(g.master, signal.SIGTERM)
            g.proc.wait_for(r"ggopool: draining: waiting up to", timeout=15, count=2)
            # Ctrl-C: the master turns the stop into a quick one and sends SIGQUIT.
            os.kill(g.master, signal.SIGINT)
            assert g.proc.wait(10) == 0, g.proc.output
        finally:
            g.proc.stop()
        result = outcome(tmp_path, orders, receiver, g.proc.output)
    output = g.proc.output
    assert output.count("when the drain was interrupted by KeyboardInterrupt") == 2, output
    assert output.count("ggopool: a second stop signal ended the drain") == 2, output
    assert len(abandoned(output)) == 2  # one line per worker
    assert result.accepted == len(orders.acks) >= ORDERS
    assert result.notified == 0
    assert result.abandoned == result.tasks - result.ran > 0


# -- the drain's deadline is gunicorn's ------------------------------------------------------

#: The worker class, and gunicorn's own gevent worker with ggopool's hooks.
WORKERS = pytest.mark.parametrize("worker", [WORKER_CLASS, "gevent"], ids=["class", "hooks"])


@WORKERS
def test_the_drain_waits_as_long_as_graceful_timeout_leaves(tmp_path: Path, worker: str) -> None:
    # No LOADTESTS_DRAIN_TIMEOUT: the drain's default deadline. The receiver holds the
    # notifications for 6 s after the drain began, longer than the 5 s ggopool waits at
    # exit elsewhere: within gunicorn's 30 s, none of the tasks is lost.
    settings = {**SETTINGS, "drain_timeout": ""}
    with Receiver() as receiver:
        receiver.hold()
        g = start_gunicorn(app_env(tmp_path, receiver, **settings), "-k", worker)
        try:
            orders = Orders()
            place_orders_on_both(g, orders)
            wait_held(receiver, orders)
            os.kill(g.master, signal.SIGTERM)
            notes = g.proc.wait_for(WAITING.pattern, timeout=15, count=2)
            # 30 s, less the stop so far (under 3 s), the margin and the note's second.
            assert all(25.0 <= float(note.group(1)) <= 28.0 for note in notes), notes
            gevent.sleep(6.0)  # time passing is the point: the old deadline goes by
            assert "abandoned at exit" not in g.proc.output
            receiver.release()
            assert g.proc.wait(30) == 0, g.proc.output
        finally:
            g.proc.stop()
        result = outcome(tmp_path, orders, receiver, g.proc.output)
    assert_nothing_lost(result, warmups=2, orders=orders)


@WORKERS
def test_a_backlog_beyond_graceful_timeout_is_logged_before_gunicorn_kills(
    tmp_path: Path, worker: str
) -> None:
    settings = {**SETTINGS, "drain_timeout": ""}
    with Receiver() as receiver:
        receiver.hold()  # never released: the drain runs out of time
        env = app_env(tmp_path, receiver, **settings)
        g = start_gunicorn(env, "-k", worker, "--graceful-timeout", "4")
        try:
            orders = Orders()
            place_orders_on_both(g, orders)
            wait_held(receiver, orders)
            os.kill(g.master, signal.SIGTERM)
            assert g.proc.wait(15) == 0, g.proc.output
        finally:
            g.proc.stop()
        result = outcome(tmp_path, orders, receiver, g.proc.output)
    output = g.proc.output
    assert KILLED not in output
    # 4 s less the stop so far and the 1 s margin: each worker reports after at most 3 s.
    deadlines = [float(d) for d in re.findall(r"after the ([\d.]+) s deadline", output)]
    assert len(deadlines) == 2, output
    assert all(1.0 <= d <= 3.0 for d in deadlines), output
    assert len(abandoned(output)) == 2
    assert result.accepted == len(orders.acks) >= ORDERS
    assert result.notified == 0
    assert result.abandoned == result.tasks - result.ran > 0


def test_set_exit_drain_still_chooses_the_deadline(tmp_path: Path) -> None:
    settings = {**SETTINGS, "drain_timeout": "0.5"}
    with Receiver() as receiver:
        receiver.hold()
        g = start_gunicorn(app_env(tmp_path, receiver, **settings), *CLASS)
        try:
            orders = Orders()
            place_orders_on_both(g, orders)
            wait_held(receiver, orders)
            os.kill(g.master, signal.SIGTERM)
            assert g.proc.wait(15) == 0, g.proc.output
        finally:
            g.proc.stop()
        result = outcome(tmp_path, orders, receiver, g.proc.output)
    output = g.proc.output
    assert output.count("after the 0.5 s deadline") == 2, output
    assert result.abandoned == result.tasks - result.ran > 0


# -- connections -----------------------------------------------------------------------------


def test_a_stop_closes_idle_keep_alive_connections_and_finishes_requests_in_flight(
    tmp_path: Path,
) -> None:
    options = ["--keep-alive", "30", "--worker-connections", "50"]
    proc, url, master = start_flask_gunicorn(tmp_path, *options)
    try:
        idle = gevent.socket.create_connection((LOOPBACK, int(url.rsplit(":", 1)[1])))
        idle.settimeout(20)
        idle.sendall(b"GET /state?rid=idle HTTP/1.1\r\nHost: test\r\n\r\n")
        assert b" 200 " in read_response(idle)  # served; now idle, kept alive for 30 s
        slow = gevent.spawn(fetch, url, "/slow?seconds=3")
        proc.wait_for(r"slow request started", 10)
        os.kill(master, signal.SIGTERM)
        assert idle.recv(1) == b""  # closed by the server, long before 30 s
        assert not slow.ready()  # while the request in flight still runs
        assert slow.get(timeout=20) == 200
        idle.close()
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    assert KILLED not in proc.output


@pytest.mark.parametrize("pipelined", [False, True], ids=["sent-after", "pipelined"])
def test_a_stop_serves_a_request_whose_first_bytes_have_arrived(
    tmp_path: Path, pipelined: bool
) -> None:
    # A kept-alive connection has begun its second request (half its headers sent after
    # the first answer, or pipelined behind the first request) when the stop closes the
    # idle connections: it is not idle, and its request is served, as with -k gevent.
    proc, url, master = start_flask_gunicorn(tmp_path, "--keep-alive", "30")
    port = int(url.rsplit(":", 1)[1])
    try:
        # Connected first: its greenlet is first in line when the stop closes connections.
        begun = gevent.socket.create_connection((LOOPBACK, port))
        begun.settimeout(20)
        idle = gevent.socket.create_connection((LOOPBACK, port))
        idle.settimeout(20)
        first = b"GET /state?rid=first HTTP/1.1\r\nHost: test\r\n\r\n"
        second = b"GET /state?rid=second HTTP/1.1\r\nHost: test\r\n"
        if pipelined:
            begun.sendall(first + second)
            assert b" 200 " in read_response(begun)
        else:
            begun.sendall(first)
            assert b" 200 " in read_response(begun)
            begun.sendall(second)
        idle.sendall(b"GET /state?rid=idle HTTP/1.1\r\nHost: test\r\n\r\n")
        assert b" 200 " in read_response(idle)
        os.kill(master, signal.SIGTERM)
        assert idle.recv(1) == b""  # the stop has closed the idle connections
        begun.sendall(b"X-Rest: 1\r\n\r\n")
        head = read_response(begun)
        assert b" 200 " in head, head
        assert b"connection: close" in head.lower(), head  # the stop's last request
        assert begun.recv(1) == b""
        begun.close()
        idle.close()
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    assert KILLED not in proc.output


def test_a_recycled_worker_gives_its_requests_graceful_timeout_then_ends_them(
    tmp_path: Path,
) -> None:
    # The first request recycles the worker (--max-requests 1) and takes longer than its
    # graceful_timeout: the worker ends it, drains, exits, and a new one is forked.
    args = [sys.executable, "-m", "gunicorn", *CLASS, "-w", "1", "-b", f"{LOOPBACK}:0"]
    args += ["--max-requests", "1", "--graceful-timeout", "2", "tests.flask_app:app"]
    proc = Proc(args, subprocess_env(XDG_RUNTIME_DIR=str(tmp_path)))
    try:
        url, _master, [first] = gunicorn_booted(proc, workers=1)
        # A raw socket: an HTTP client would retry the request on the next worker.
        slow = gevent.socket.create_connection((LOOPBACK, int(url.rsplit(":", 1)[1])))
        slow.settimeout(20)
        slow.sendall(b"GET /slow?seconds=20 HTTP/1.1\r\nHost: test\r\n\r\n")
        proc.wait_for(r"Autorestarting worker after current request", 10)
        proc.wait_for(r"Worker graceful timeout", 10)
        assert slow.recv(1) == b""  # ended without an answer
        slow.close()
        proc.wait_for(rf"Worker exiting \(pid: {first}\)", 10)
        proc.wait_for(r"Booting worker with pid", 20, count=2)  # its replacement
    finally:
        proc.stop()
    assert KILLED not in proc.output


#: An app whose /queue queues 10 tasks that each take a minute on a pool of cap 1, and whose
#: other requests take a minute too (saying so on stdout when they start and end).
HELD_APP = """
    import gevent
    import ggopool

    background = ggopool.new_pool("background", 1)


    def app(environ, start_response):
        if environ["PATH_INFO"] == "/queue":
            for _ in range(10):
                background.go(gevent.sleep, 60)
        else:
            print("slow request started", flush=True)
            try:
                gevent.sleep(60)
            finally:
                print("slow request ended", flush=True)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
"""


def test_a_request_past_graceful_timeout_still_leaves_the_drain_time_to_report(
    tmp_path: Path,
) -> None:
    # The request outlasts graceful_timeout: it is ended in time for the drain to log the
    # backlog it abandons before the master's SIGKILL, graceful_timeout after the signal.
    (tmp_path / "held_app.py").write_text(textwrap.dedent(HELD_APP))
    env = subprocess_env(XDG_RUNTIME_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    args = [sys.executable, "-m", "gunicorn", *CLASS, "-w", "1", "-b", f"{LOOPBACK}:0"]
    proc = Proc([*args, "--graceful-timeout", "4", "held_app:app"], env)
    try:
        url, master, [worker] = gunicorn_booted(proc, workers=1)
        assert fetch(url, "/queue") == 200  # and the worker's signal handlers are in place
        slow = gevent.socket.create_connection((LOOPBACK, int(url.rsplit(":", 1)[1])))
        slow.settimeout(20)
        slow.sendall(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        proc.wait_for(r"slow request started", 10)
        os.kill(master, signal.SIGTERM)
        assert proc.wait(15) == 0, proc.output
        slow.close()
    finally:
        proc.stop()
    output = proc.output
    assert "Worker graceful timeout" in output, output
    # The request was ended (its finally ran) before the drain reported, not left running.
    ended = output.find("slow request ended")
    assert 0 <= ended < output.find("tasks abandoned at exit"), output
    assert abandoned(output) == [10], output  # 1 running, 9 queued
    assert f"Worker exiting (pid: {worker})" in output, output
    assert KILLED not in output


def test_the_connection_pool_is_registered_and_in_the_prometheus_collector(
    tmp_path: Path,
) -> None:
    with Receiver() as receiver:
        env = app_env(tmp_path, receiver, **SETTINGS)
        g = start_gunicorn(env, *CLASS, "--worker-connections", "50")
        try:
            http = client(g.url)
            try:
                with http.get("/metrics") as response:
                    metrics = response.read().decode()
            finally:
                http.close()
            os.kill(g.master, signal.SIGTERM)
            assert g.proc.wait(30) == 0, g.proc.output
        finally:
            g.proc.stop()
    assert 'ggopool_cap{pool="gunicorn.connections"} 50.0' in metrics, metrics
    # The /metrics request itself runs on the pool.
    assert 'ggopool_tasks_running{pool="gunicorn.connections"} 1.0' in metrics, metrics


# -- --preload: what the master queued at import ---------------------------------------------

PRELOADED_APP = """
    import os
    import ggopool

    startup = ggopool.new_pool("startup", 1)
    for _ in range(3):
        startup.go(print, "startup task ran in", os.getpid(), flush=True)


    def app(environ, start_response):
        body = ('{"pid": %d}' % os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
"""


def test_preload_tasks_queued_in_the_master_are_reported_once(tmp_path: Path) -> None:
    (tmp_path / "preloaded_app.py").write_text(textwrap.dedent(PRELOADED_APP))
    env = subprocess_env(XDG_RUNTIME_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    args = [sys.executable, "-m", "gunicorn", *CLASS, "-w", "2", "--preload"]
    proc = Proc([*args, "-b", f"{LOOPBACK}:0", "preloaded_app:app"], env)
    try:
        url, master, workers = gunicorn_booted(proc)
        # Both workers serve (their signal handlers are in place): the master made two.
        answer_from_each_worker(url, workers, "GET", "/")
        os.kill(master, signal.SIGTERM)
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    output = proc.output
    reports = re.findall(
        r"ggopool: pool '(\w+)': (\d+) tasks queued in gunicorn's master \(pid (\d+)\)", output
    )
    assert reports == [("startup", "3", str(master))], output
    assert "queue start-up work in the post_fork hook" in output
    # They run once each, in the master as it exits; never in a worker.
    assert re.findall(r"startup task ran in (\d+)", output) == [str(master)] * 3, output
    assert master not in workers


# -- the example in docs/deploying.md, as written there --------------------------------------

DEPLOYING = Path(__file__).absolute().parents[1] / "docs" / "deploying.md"


def documented_example() -> tuple[str, list[str]]:
    """The app.py of docs/deploying.md's worker-class example, and its gunicorn command."""
    text = DEPLOYING.read_text()
    app = re.search(r"```python\n(# app\.py: answers at once.*?)```", text, re.DOTALL)
    command = re.search(r"^gunicorn -k ggopool\.gunicorn\.GeventWorker .* app:app$", text, re.M)
    assert app is not None
    assert command is not None
    return app.group(1), command.group(0).split()


def test_the_documented_example_sends_every_accepted_mail_on_sigterm(tmp_path: Path) -> None:
    app, command = documented_example()
    (tmp_path / "app.py").write_text(app)
    assert command[command.index("-b") + 1] == "127.0.0.1:8000"
    command[command.index("-b") + 1] = f"{LOOPBACK}:0"  # a free port here
    env = subprocess_env(XDG_RUNTIME_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    proc = Proc([sys.executable, "-m", *command], env)
    accepted: dict[str, int] = {}
    try:
        url, master, workers = gunicorn_booted(proc)

        def signup(address: str) -> None:
            http = client(url)
            try:
                with http.get(f"/?{address}") as response:
                    assert response.status_code == 202
                    accepted[address] = int(response.read().split()[-1])
            finally:
                http.close()

        def both_accepted() -> bool:
            # Until both workers took sign-ups (so both have their signal handlers).
            n = len(accepted)
            gevent.joinall(
                [gevent.spawn(signup, f"user{n + i}@example.com") for i in range(8)],
                raise_error=True,
            )
            return set(accepted.values()) == workers

        wait_until(both_accepted, 30, "sign-ups on both workers")
        os.kill(master, signal.SIGTERM)
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    sent = re.findall(r"welcome mail sent to (\S+)", proc.output)
    assert sorted(sent) == sorted(accepted), proc.output
    assert "abandoned" not in proc.output
