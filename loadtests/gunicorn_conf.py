"""gunicorn settings for the load-test app: build each worker's pools right after the fork.

    gunicorn -k gevent -w 2 --preload -b 127.0.0.1:8000 \\
        -c python:loadtests.gunicorn_conf loadtests.app:app

With ``--preload`` the app is imported once, in the master, and the workers are forked
from it. Work queued at import would be copied into every worker's memory and stay
queued in the master, which never serves a request and so never runs it. ``post_fork``
runs in the worker, after the fork: the place to make per-process pools and queue
start-up work. (Without this hook the app makes them on its first request.)
"""

from __future__ import annotations

from typing import Any

from loadtests.app import start_worker_process


def post_fork(server: Any, worker: Any) -> None:
    start_worker_process()
