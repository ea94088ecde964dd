"""The load-test app stopped the ordinary ways under ``gunicorn -k gevent -w 2 --preload``
and gevent's pywsgi, counted from outside: every order accepted (202 read by the client)
is audited and notified once, or the tasks that were not are exactly the ones logged as
abandoned.

Each test holds the app's background workers on notifications its webhook receiver does
not answer yet, so that when the stop signal is sent nearly all of the orders' tasks are
still queued: without a drain they would be lost.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import gevent
import pytest
from geventhttpclient import HTTPClient

from tests.deploy_helpers import LOOPBACK, wait_until
from tests.patient_receiver import PatientReceiver
from tests.shutdown_scenarios import (
    Orders,
    Outcome,
    Receiver,
    abandoned,
    app_env,
    outcome,
    place_orders,
    start_gunicorn,
    start_pywsgi,
    wait_serving,
)

CAP = 2
ORDERS = 24
CLIENTS = 4
SETTINGS = {"background_cap": str(CAP), "work_delay": "0.01", "drain_timeout": "20"}


def wait_held(receiver: Receiver, orders: Orders) -> int:
    """Wait until every process's workers are all held on notifications; how many are."""
    per_process = Counter(ack["pid"] for ack in orders.acks)
    held = sum(min(CAP, n) for n in per_process.values())
    wait_until(lambda: receiver.held == held, 15, f"{held} held notifications")
    return held


def assert_nothing_lost(result: Outcome, warmups: int) -> None:
    assert result.accepted == ORDERS
    assert result.errors == 0
    assert result.lost == 0
    assert result.duplicates == 0
    assert result.warmups == warmups
    assert result.ran == result.tasks
    assert result.abandoned == 0


# -- gunicorn -k gevent -w 2 --preload -------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGQUIT], ids=["SIGTERM", "SIGQUIT"])
def test_gunicorn_stop_closes_the_server_then_drains_every_worker(
    tmp_path: Path, stop: signal.Signals
) -> None:
    with Receiver() as receiver:
        receiver.hold()
        g = start_gunicorn(app_env(tmp_path, receiver, **SETTINGS))
        try:
            orders = Orders()
            place_orders(g.url, orders, ORDERS, CLIENTS)
            wait_held(receiver, orders)
            os.kill(g.master, stop)
            g.proc.wait_for(r"ggopool: draining: waiting up to", timeout=15, count=2)
            # While the workers drain, no order is accepted: their servers are closed
            # (on SIGQUIT too, thanks to the worker_int hook).
            late = Orders()
            place_orders(g.url, late, 1, 1)
            assert (late.acks, late.errors) == ([], 1)
            receiver.release()
            assert g.proc.wait(30) == 0, g.proc.output
        finally:
            g.proc.stop()
        result = outcome(tmp_path, orders, receiver, g.proc.output)
    assert_nothing_lost(result, warmups=2)
    assert {ack["pid"] for ack in orders.acks} <= g.workers


def test_gunicorn_reload_drains_the_old_workers(tmp_path: Path) -> None:
    with Receiver() as receiver:
        receiver.hold()
        g = start_gunicorn(app_env(tmp_path, receiver, **SETTINGS))
        try:
            orders = Orders()
            place_orders(g.url, orders, ORDERS, CLIENTS)
            wait_held(receiver, orders)
            os.kill(g.master, signal.SIGHUP)
            g.proc.wait_for(r"ggopool: draining: waiting up to", timeout=15, count=2)
            receiver.release()
            # The old workers leave once drained; new ones have booted meanwhile.
            for pid in g.workers:
                g.proc.wait_for(rf"Worker exiting \(pid: {pid}\)", timeout=30)
            assert not wait_serving(g) & g.workers
            os.kill(g.master, signal.SIGTERM)
            assert g.proc.wait(30) == 0, g.proc.output
        finally:
            g.proc.stop()
        result = outcome(tmp_path, orders, receiver, g.proc.output)
    assert_nothing_lost(result, warmups=4)


def test_gunicorn_max_requests_recycling_drains_each_recycled_worker(tmp_path: Path) -> None:
    # No held receiver here: a recycled worker keeps its slot until it has drained, so with
    # both workers held nothing would serve. The backlog comes from the load instead: the
    # clients send orders back to back, far faster than 2 workers x cap 1 write audits.
    settings = {**SETTINGS, "background_cap": "1", "work_delay": "0.03"}
    with Receiver() as receiver:
        g = start_gunicorn(app_env(tmp_path, receiver, **settings), "--max-requests", "12")
        try:
            orders = Orders()
            place_orders(g.url, orders, ORDERS * 2, CLIENTS)
            wait_serving(g)
            os.kill(g.master, signal.SIGTERM)
            assert g.proc.wait(30) == 0, g.proc.output
        finally:
            g.proc.stop()
        result = outcome(tmp_path, orders, receiver, g.proc.output)
    assert result.accepted == ORDERS * 2, (result, g.proc.output)
    assert result.errors == result.lost == result.duplicates == result.abandoned == 0, result
    assert g.proc.output.count("Autorestarting worker after current request") >= 2, (
        result,
        g.proc.output,
    )
    assert result.warmups == g.proc.output.count("Booting worker with pid")
    assert result.ran == result.tasks


def test_gunicorn_a_second_stop_signal_ends_the_drain_and_reports_it(tmp_path: Path) -> None:
    # A patient receiver: held longer than the app's 10 s network timeout (a loaded machine
    # takes that long to place the orders and stop), a notification would fail instead.
    with PatientReceiver() as receiver:
        receiver.hold()  # never released: the drain cannot finish
        g = start_gunicorn(app_env(tmp_path, receiver, **SETTINGS))
        try:
            orders = Orders()
            place_orders(g.url, orders, ORDERS, CLIENTS)
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
    assert len(abandoned(output)) == 2  # one line per worker
    assert result.accepted == ORDERS
    assert result.notified == 0
    assert result.abandoned == result.tasks - result.ran > 0


def test_a_patient_receiver_holds_a_notification_past_the_clients_network_timeout() -> None:
    # The app's client reads with a timeout (10 s; 0.5 s here): a notification the
    # receiver holds longer must still be held, then answered, not failed.
    with PatientReceiver() as receiver:
        receiver.trickle = 0.1
        receiver.hold()
        parts = urlsplit(receiver.url)
        http = HTTPClient(LOOPBACK, parts.port, network_timeout=0.5)

        def notify() -> int:
            with http.post(parts.path, body=b'{"order_id": "o1"}') as response:
                response.read()
                return int(response.status_code)

        try:
            sent = gevent.spawn(notify)
            wait_until(lambda: receiver.held == 1, 10, "the notification held")
            gevent.sleep(1.5)  # time passing is the point: three network timeouts
            assert receiver.held == 1
            receiver.release()
            assert sent.get(timeout=10) == 200
        finally:
            http.close()
    assert receiver.answered == {"o1": 1}


# -- python -m loadtests.app (gevent's pywsgi) -----------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_pywsgi_stop_drains_the_pools(tmp_path: Path, stop: signal.Signals) -> None:
    with Receiver() as receiver:
        receiver.hold()
        proc, url = start_pywsgi(app_env(tmp_path, receiver, **SETTINGS))
        try:
            orders = Orders()
            place_orders(url, orders, ORDERS, CLIENTS)
            wait_held(receiver, orders)
            os.kill(proc.pid, stop)
            receiver.release()
            assert proc.wait(30) == 0, proc.output
        finally:
            proc.stop()
        result = outcome(tmp_path, orders, receiver, proc.output)
    assert_nothing_lost(result, warmups=0)
    assert "loadtests.app stopped after" in proc.output


def test_pywsgi_a_backlog_longer_than_the_deadline_is_logged_as_abandoned(
    tmp_path: Path,
) -> None:
    # The receiver answers the first notifications, then stalls for good.
    with Receiver(hold_after=ORDERS // 3) as receiver:
        env = app_env(tmp_path, receiver, **{**SETTINGS, "drain_timeout": "0.5"})
        proc, url = start_pywsgi(env)
        try:
            orders = Orders()
            place_orders(url, orders, ORDERS, CLIENTS)
            wait_until(lambda: receiver.held == CAP, 15, "both workers held")
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(30) == 0, proc.output
        finally:
            proc.stop()
        result = outcome(tmp_path, orders, receiver, proc.output)
    assert result.accepted == ORDERS
    assert result.notified == ORDERS // 3
    assert result.audited > ORDERS // 3
    assert result.duplicates == 0
    [count] = abandoned(proc.output)
    assert count == result.tasks - result.ran  # accepted - ran
    assert "after the 0.5 s deadline" in proc.output


def test_pywsgi_a_second_signal_ends_the_drain_and_reports_it(tmp_path: Path) -> None:
    with Receiver() as receiver:
        receiver.hold()  # never released
        proc, url = start_pywsgi(app_env(tmp_path, receiver, **SETTINGS))
        try:
            orders = Orders()
            place_orders(url, orders, ORDERS, CLIENTS)
            wait_held(receiver, orders)
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait_for(r"ggopool: draining: waiting up to", timeout=15)
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(10) == 0, proc.output
        finally:
            proc.stop()
        result = outcome(tmp_path, orders, receiver, proc.output)
    assert "when the drain was interrupted by KeyboardInterrupt" in proc.output
    [count] = abandoned(proc.output)
    assert count == result.tasks - result.ran == 2 * ORDERS - result.audited > 0
