"""The load-test app under gevent's pywsgi (``python -m loadtests.app``) with many clients:
each order's background tasks run exactly once, and the pools' caps hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gevent

from tests.deploy_helpers import (
    WebhookReceiver,
    audit_records,
    client,
    request_json,
    settled,
    start_app,
    stats,
    wait_until,
)

CLIENTS = 50
ORDERS_PER_CLIENT = 10
BACKGROUND_CAP = 4
FANOUT_CAP = 3


def test_many_clients_each_background_task_runs_once_and_caps_hold(tmp_path: Path) -> None:
    audit_file = tmp_path / "audit.jsonl"
    with WebhookReceiver() as receiver:
        app, url = start_app(
            "--background-cap",
            str(BACKGROUND_CAP),
            "--fanout-cap",
            str(FANOUT_CAP),
            "--audit-file",
            str(audit_file),
            "--webhook-url",
            receiver.url,
        )
        try:
            acks: list[dict[str, Any]] = []
            dashboards: list[int] = []

            def shopper(i: int) -> None:
                http = client(url)
                try:
                    for n in range(ORDERS_PER_CLIENT):
                        status, ack = request_json(
                            http, "POST", "/orders", {"sku": f"S{i}", "qty": n % 5 + 1}
                        )
                        assert status == 202, ack
                        acks.append(ack)
                    if i % 5 == 0:
                        status, page = request_json(http, "GET", "/dashboard?widgets=8")
                        assert status == 200, page
                        assert [w["widget"] for w in page["widgets"]] == [str(w) for w in range(8)]
                        dashboards.append(status)
                finally:
                    http.close()

            gevent.joinall([gevent.spawn(shopper, i) for i in range(CLIENTS)], raise_error=True)
            orders = CLIENTS * ORDERS_PER_CLIENT
            assert len(acks) == orders
            ids = {ack["order_id"] for ack in acks}
            assert len(ids) == orders

            http = client(url)
            try:
                final = wait_until(
                    lambda: (s := stats(http))["orders"]["notified"] == orders and settled(s) and s,
                    timeout=30,
                    what="every order's background tasks to finish",
                )
            finally:
                http.close()
        finally:
            app.stop()

    background, fanout = final["pools"]["background"], final["pools"]["fanout"]
    assert final["orders"] == {
        "accepted": orders,
        "audited": orders,
        "notified": orders,
        "duplicates": 0,
    }
    assert background["submitted"] == background["completed"] == 2 * orders
    assert background["failed"] == fanout["failed"] == 0
    # The cap held, and was reached: 50 clients queue far more than 4 tasks at once. (The
    # app samples its workers after each go(), which may count a start not made yet or miss
    # one made later: a bound, not a figure to compare with the running peak.)
    assert background["peak_running"] == BACKGROUND_CAP
    assert fanout["peak_running"] == FANOUT_CAP
    assert 1 <= background["peak_workers"] <= BACKGROUND_CAP
    assert 1 <= fanout["peak_workers"] <= FANOUT_CAP
    assert fanout["completed"] == 8 * len(dashboards) == 8 * (CLIENTS // 5)
    # Exactly once, as seen from outside the app: one notification and one audit record
    # per order, none for an order that does not exist.
    assert receiver.received == dict.fromkeys(ids, 1)
    audited = [r["order_id"] for r in audit_records(audit_file) if r["event"] == "order"]
    assert sorted(audited) == sorted(ids)


def test_bad_orders_are_refused_and_the_app_notifies_itself_by_default() -> None:
    app, url = start_app()
    try:
        http = client(url)
        try:
            assert request_json(http, "POST", "/orders", {"sku": "A1", "qty": 0}) == (
                400,
                {"error": "qty must be an int in 1..100, got 0"},
            )
            assert request_json(http, "POST", "/orders", [1]) == (
                400,
                {"error": "body must be a JSON object, got [1]"},
            )
            assert request_json(http, "GET", "/dashboard?widgets=99") == (
                400,
                {"error": "widgets must be an int in 1..16, got '99'"},
            )
            status, ack = request_json(http, "POST", "/orders", {"sku": "A1", "qty": 1})
            assert status == 202
            final = wait_until(
                lambda: (s := stats(http))["webhooks_received"] == 1 and settled(s) and s,
                timeout=15,
                what="the order's notification to reach the app's own /webhooks",
            )
        finally:
            http.close()
    finally:
        app.stop()
    assert final["orders"] == {"accepted": 1, "audited": 1, "notified": 1, "duplicates": 0}
    assert final["pid"] == ack["pid"] == app.pid
