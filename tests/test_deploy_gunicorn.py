"""The load-test app under ``gunicorn -k gevent -w 2 --preload``: requests spread over both
worker processes, each order's background tasks run once, and the master runs none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gevent

from tests.deploy_helpers import (
    WebhookReceiver,
    audit_records,
    fresh,
    gunicorn_args,
    gunicorn_booted,
    running,
    subprocess_env,
    wait_until,
)

CLIENTS = 20
ROUNDS = 50  # at most; the test stops sending once both workers have answered


def test_gunicorn_preload_spreads_requests_and_runs_each_task_once(tmp_path: Path) -> None:
    audit_file = tmp_path / "audit.jsonl"
    with WebhookReceiver() as receiver:
        # gunicorn >= 25.1 opens a control socket in $XDG_RUNTIME_DIR (else ~/.gunicorn), one
        # path for every gunicorn of the user: this test's goes in its own directory.
        env = subprocess_env(
            LOADTESTS_AUDIT_FILE=str(audit_file),
            LOADTESTS_WEBHOOK_URL=receiver.url,
            XDG_RUNTIME_DIR=str(tmp_path),
        )
        args = gunicorn_args()
        with running(args, env) as gunicorn:
            url, master_pid, worker_pids = gunicorn_booted(gunicorn)

            acks: list[dict[str, Any]] = []

            def shopper(i: int) -> None:
                status, ack = fresh(url, "POST", "/orders", {"sku": "G", "qty": 1})
                assert status == 202, ack
                acks.append(ack)

            def both_served() -> bool:
                # The kernel hands each connection to whichever worker accepts first:
                # rounds go on until both have taken orders (bounded by time and rounds).
                assert len(acks) < ROUNDS * CLIENTS, "orders did not reach both workers"
                gevent.joinall([gevent.spawn(shopper, i) for i in range(CLIENTS)], raise_error=True)
                return {ack["pid"] for ack in acks} == worker_pids

            wait_until(both_served, timeout=30, what="orders to reach both workers")
            ids = {ack["order_id"] for ack in acks}

            def all_done() -> bool:
                audited = [r for r in audit_records(audit_file) if r["event"] == "order"]
                return sum(receiver.received.values()) >= len(ids) and len(audited) >= len(ids)

            wait_until(all_done, timeout=20, what="every order's notification and audit")
            # Once every process has exited nothing more can be sent or written: a task
            # run twice would be in the counts read after this.
            gunicorn.stop()
            assert gunicorn.popen.returncode == 0, gunicorn.output
            records = audit_records(audit_file)

    assert {ack["pid"] for ack in acks} == worker_pids, "requests did not reach both workers"
    assert master_pid not in worker_pids
    assert len(ids) == len(acks)
    assert receiver.received == dict.fromkeys(ids, 1)
    assert set(receiver.senders) == worker_pids
    orders = [r["order_id"] for r in records if r["event"] == "order"]
    assert sorted(orders) == sorted(ids)
    # The post_fork hook queued one warm-up per worker; the master, which imported the
    # app (--preload) but serves nothing, queued and ran none.
    warmups = sorted(r["pid"] for r in records if r["event"] == "warmup")
    assert warmups == sorted(worker_pids)
