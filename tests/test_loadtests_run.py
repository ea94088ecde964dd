"""``python -m loadtests.run`` when the app cannot start: it says what happened, at once."""

from __future__ import annotations

import array
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import gevent
import pytest

import ggopool
import loadtests.app
from loadtests.app import Process, Settings
from tests.deploy_helpers import Proc, subprocess_env


def test_run_says_the_app_exited_when_it_exits_before_listening() -> None:
    # A cap of 0 makes the app refuse to start (argparse's exit code 2).
    env = subprocess_env(LOADTESTS_BACKGROUND_CAP="0")
    run = Proc([sys.executable, "-m", "loadtests.run"], env)
    try:
        code = run.wait(timeout=30)
    finally:
        run.stop()
    assert code == 1, run.output
    assert "--background-cap and --fanout-cap must be ints >= 1, got 0 and 32" in run.output
    assert "the app exited with code 2 before it was listening" in run.output
    assert "not listening after" not in run.output


# -- POST /events: the background tasks of gunicorn_compare --background-tasks ----------


def _post_event() -> str:
    body = b'{"kind": "signup", "user": 1}'
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/events",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "SERVER_PORT": "8000",
    }
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    assert json.loads(b"".join(loadtests.app.app(environ, start_response)))["number"] == 1  # type: ignore[arg-type]
    return statuses[0]


def _configure(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Process:
    # monkeypatch puts back the module's settings and process at the end of the test.
    monkeypatch.setattr(loadtests.app, "_settings", None)
    monkeypatch.setattr(loadtests.app, "_process", None)
    loadtests.app.configure(settings)
    return loadtests.app.process()


def test_post_event_queues_two_tasks_with_ggopool_go_and_writes_their_start_delays(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    proc = _configure(
        monkeypatch, Settings(work_delay=0.0, webhook_delay=0.0, delays_dir=str(tmp_path))
    )
    default = ggopool.default_pool()
    submitted = default.stats().submitted
    assert _post_event() == "202 Accepted"
    assert default.stats().submitted == submitted + 2  # the audit write and the webhook
    assert default.join(timeout=10)
    assert len(proc.start_delays) == 2
    assert all(0 <= delay < 10 for delay in proc.start_delays)
    loadtests.app.dump_start_delays()
    written = array.array("d")
    written.frombytes((tmp_path / f"{os.getpid()}.delays").read_bytes())
    assert written == proc.start_delays


def test_post_event_queues_two_tasks_with_gevent_spawn_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proc = _configure(
        monkeypatch, Settings(work_delay=0.0, webhook_delay=0.0, spawn="gevent.spawn")
    )
    assert proc.spawn is gevent.spawn
    spawned: list[gevent.Greenlet[Any, Any]] = []
    monkeypatch.setattr(proc, "spawn", lambda fn, *args: spawned.append(gevent.spawn(fn, *args)))
    submitted = ggopool.default_pool().stats().submitted
    assert _post_event() == "202 Accepted"
    assert len(spawned) == 2
    assert ggopool.default_pool().stats().submitted == submitted  # not one on the pool
    assert len(gevent.joinall(spawned, timeout=10)) == 2
    assert all(greenlet.successful() for greenlet in spawned)
    assert len(proc.start_delays) == 2


def test_the_app_refuses_an_unknown_spawn() -> None:
    with pytest.raises(
        ValueError, match=r"spawn must be one of \['gevent.spawn', 'ggopool.go'\], got 'go'"
    ):
        Process(Settings(spawn="go"))
