"""A real Flask app (tests/flask_app.py) under concurrent requests, served by gevent's pywsgi
on a ggopool pool and by gunicorn with ggopool's worker class, both monkey-patched: each
request's ``flask.g``, its request id in ``contextvars`` and a ``threading.local`` belong
to that request alone, though the requests share worker greenlets.

And what tasks sharing a worker do share: ``threading.get_ident()`` and
``threading.current_thread()`` (see docs/migration.md).
"""

from __future__ import annotations

import contextvars
import gc
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer

import ggopool
from tests.deploy_helpers import Proc, client, start_flask_gunicorn, subprocess_env

CLIENTS = 16
ROUNDS = 4


def ask(url: str, rid: str, keep: Any = None) -> dict[str, Any]:
    """GET /state for ``rid``: on a connection of its own, or on ``keep``'s kept-alive ones."""
    http = keep if keep is not None else client(url)
    try:
        with http.get(f"/state?rid={rid}&pause=0.02") as response:
            assert response.status_code == 200
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    finally:
        if keep is None:
            http.close()


def assert_each_request_saw_only_its_own(answers: list[dict[str, Any]]) -> None:
    assert len(answers) == CLIENTS * ROUNDS
    assert len({a["rid"] for a in answers}) == len(answers)
    for a in answers:
        # Nothing of a request served earlier on the same greenlet, nor of a concurrent
        # one; and what it set is its own after the others ran meanwhile.
        assert a["before"] == {"g": None, "contextvar": None, "local": None}, a
        assert a["after"] == {"g": a["rid"], "contextvar": a["rid"], "local": a["rid"]}, a


def concurrent_rounds(url: str, keep: Any = None) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []

    def user(i: int) -> None:
        for r in range(ROUNDS):
            answers.append(ask(url, f"{i}-{r}", keep))

    gevent.joinall([gevent.spawn(user, i) for i in range(CLIENTS)], raise_error=True, timeout=60)
    return answers


def test_flask_on_pywsgi_with_a_ggopool_pool_keeps_each_requests_state_its_own() -> None:
    # 16 clients, a pool of cap 4: the 64 requests (a connection each) share 4 workers.
    proc = Proc([sys.executable, "-m", "tests.flask_app", "--cap", "4"])
    try:
        [match] = proc.wait_for(r"listening on (http://127\.0\.0\.1:\d+)", timeout=20)
        answers = concurrent_rounds(match.group(1))
    finally:
        proc.stop()
    assert_each_request_saw_only_its_own(answers)
    # Under monkey-patching get_ident() names the worker greenlet: at most the cap of them.
    assert len({a["ident"] for a in answers}) <= 4


def test_flask_on_gunicorns_worker_class_keeps_each_requests_state_its_own(
    tmp_path: Path,
) -> None:
    # Kept-alive connections: each serves a run of requests on one worker greenlet.
    proc, url, _master = start_flask_gunicorn(tmp_path)
    keep = client(url, concurrency=4)
    try:
        answers = concurrent_rounds(url, keep)
    finally:
        keep.close()
        proc.stop()
    assert_each_request_saw_only_its_own(answers)
    # 64 requests on at most 4 connections (the client's ports), each served on one
    # greenlet: each connection served many requests in a row.
    assert len({a["connection"] for a in answers}) <= 4
    assert len({a["ident"] for a in answers}) <= 4


IDENTITY = """
    from gevent import monkey

    monkey.patch_all()

    import threading

    import gevent
    import ggopool

    pool = ggopool.new_pool("identity", 1)
    seen = []

    def task():
        seen.append((threading.get_ident(), threading.current_thread()))

    pool.go(task)
    pool.join()
    first_ident = seen[0][0]
    print("in _active after the task:", first_ident in threading._active)
    pool.go(task)
    pool.join()
    (ident1, thread1), (ident2, thread2) = seen
    print("same get_ident:", ident1 == ident2)
    print("same current_thread:", thread1 is thread2)
    spawned = []
    gevent.joinall([gevent.spawn(lambda: spawned.append(threading.get_ident())) for _ in range(2)])
    print("gevent.spawn, same get_ident:", spawned[0] == spawned[1])

    # What breaks: state keyed on the thread. An RLock a task forgot to release is the
    # next task's (same owner), and the thread's name a task set is the next task's.
    lock = threading.RLock()
    pool.go(lock.acquire)
    pool.go(lambda: print("next task takes the leaked RLock:", bool(lock.acquire(blocking=False))))
    pool.go(lambda: setattr(threading.current_thread(), "name", "order-42"))
    pool.go(lambda: print("next task's thread name:", threading.current_thread().name))
    pool.join()
"""


def test_under_monkey_patching_tasks_on_one_worker_share_the_thread_identity(
    tmp_path: Path,
) -> None:
    script = tmp_path / "identity.py"
    script.write_text(textwrap.dedent(IDENTITY))
    out = subprocess.run(
        [sys.executable, str(script)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.splitlines() == [
        "in _active after the task: True",
        "same get_ident: True",
        "same current_thread: True",
        # Each gevent.spawn is a greenlet of its own (both alive here): each its own id.
        "gevent.spawn, same get_ident: False",
        "next task takes the leaked RLock: True",
        "next task's thread name: order-42",
    ]


class Connection:
    """What an app keeps in ``g`` for the request and closes in its teardown."""

    def __init__(self) -> None:
        self.closed = False


def serve_one_request(app: Any, path: str) -> None:
    """Serve ``app`` on gevent's pywsgi with a ggopool pool, GET ``path`` once (200), and
    return once the request is over, its teardown run."""
    # gevent's type stubs name only gevent.pool.Pool as spawn=.
    pool: Any = ggopool.new_pool("flask.one-request", 4)
    server = WSGIServer(("127.0.0.1", 0), app, spawn=pool, log=None)
    server.start()
    try:
        http = client(f"http://127.0.0.1:{server.server_port}")
        try:
            with http.get(path) as response:
                assert (response.status_code, response.read()) == (200, b"queued")
        finally:
            http.close()
        assert pool.join(10)
    finally:
        server.stop(timeout=5)


def wait_for(seen: dict[str, Any], n: int) -> None:
    with gevent.Timeout(10):
        while len(seen) < n:
            gevent.sleep(0.001)


def test_a_go_task_reads_request_and_g_after_the_response_but_teardown_closed_g_s_things() -> None:
    # Flask keeps its request and app contexts in context variables, and a ggopool task
    # runs in a copy of its caller's: after the response it still reads request and g.
    # gevent.spawn's greenlet starts in an empty context and cannot. The copy keeps the
    # request alive until the task ends, and the teardown has closed what g holds.
    from flask import Flask, g, request

    app = Flask("after_the_response")
    gate = Event()
    seen: dict[str, Any] = {}
    requests: list[weakref.ref[Any]] = []

    @app.teardown_appcontext
    def close_connection(exc: BaseException | None) -> None:
        g.connection.closed = True

    def in_go_task() -> None:
        gate.wait()
        seen["go"] = (request.args["rid"], g.rid, g.connection.closed)

    def in_spawned_greenlet() -> None:
        gate.wait()
        try:
            seen["spawn"] = request.args["rid"]
        except RuntimeError as exc:
            seen["spawn"] = str(exc).splitlines()[0]

    @app.get("/later")
    def later() -> str:
        g.rid = request.args["rid"]
        g.connection = Connection()
        requests.append(weakref.ref(request._get_current_object()))  # type: ignore[attr-defined]
        ggopool.go(in_go_task)
        gevent.spawn(in_spawned_greenlet)
        return "queued"

    serve_one_request(app, "/later?rid=r1")  # the request is over: its teardown has run
    gc.collect()
    [request_ref] = requests
    assert request_ref() is not None  # kept alive by the waiting task's context
    gate.set()
    wait_for(seen, 2)
    assert seen == {"go": ("r1", "r1", True), "spawn": "Working outside of request context."}
    assert ggopool.default_pool().join(10)
    gc.collect()
    assert request_ref() is None  # freed once the task is done


def test_a_task_queued_in_an_empty_context_with_values_does_not_keep_the_request() -> None:
    # The way out of both traps: pass the values, run in an empty context.
    from flask import Flask, request

    app = Flask("values_only")
    gate = Event()
    seen: dict[str, Any] = {}
    requests: list[weakref.ref[Any]] = []

    def with_values(rid: str) -> None:
        gate.wait()
        seen["rid"] = rid

    @app.get("/later")
    def later() -> str:
        requests.append(weakref.ref(request._get_current_object()))  # type: ignore[attr-defined]
        ggopool.ctx_go(contextvars.Context(), with_values, request.args["rid"])
        return "queued"

    serve_one_request(app, "/later?rid=r2")
    gc.collect()
    [request_ref] = requests
    assert request_ref() is None  # the waiting task holds only the value
    gate.set()
    wait_for(seen, 1)
    assert seen == {"rid": "r2"}
