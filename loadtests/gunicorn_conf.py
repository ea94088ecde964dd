"""gunicorn settings for the load-test app: each worker's pools are built after the fork,
and a worker that stops finishes their tasks first.

    gunicorn -k ggopool.gunicorn.GeventWorker -w 2 --preload -b 127.0.0.1:8000 \\
        -c python:loadtests.gunicorn_conf loadtests.app:app
    gunicorn -k gevent -w 2 --preload -b 127.0.0.1:8000 \\
        -c python:loadtests.gunicorn_conf loadtests.app:app

With ``--preload`` the app is imported once, in the master, and the workers are forked
from it. Work queued at import would be copied into every worker's memory and stay
queued in the master, which never serves a request and so never runs it. ``post_fork``
runs in the worker, after the fork: the place to make per-process pools and queue
start-up work. (Without this hook the app makes them on its first request.)

With ggopool's worker class a worker that stops (SIGTERM, SIGQUIT, SIGINT, a reload,
``--max-requests``) closes its server, finishes its requests, then drains its pools and
logs what it abandons; with ``-k gevent`` the hooks from `ggopool.gunicorn`
(``post_worker_init``, ``worker_exit``, ``worker_int``) do the same, and do nothing under
the class. The drain takes what ``graceful_timeout`` leaves, or ``LOADTESTS_DRAIN_TIMEOUT``
seconds if set (`ggopool.set_exit_drain`), cut to what it leaves.

``worker_exit`` also writes the worker's ``POST /events`` start delays to
``LOADTESTS_DELAYS_DIR``, if set (`loadtests.app.dump_start_delays`).

``child_exit`` runs in the master when a worker has exited: with
``PROMETHEUS_MULTIPROC_DIR`` set, it removes that worker's gauges from the directory
(prometheus_client's ``mark_process_dead``); its counts stay in the sums.
"""

from __future__ import annotations

import os
from typing import Any

import ggopool
from ggopool import gunicorn as ggopool_gunicorn
from ggopool.gunicorn import worker_int
from loadtests.app import dump_start_delays, start_worker_process

__all__ = ["child_exit", "post_fork", "post_worker_init", "worker_exit", "worker_int"]

if os.environ.get("LOADTESTS_DRAIN_TIMEOUT"):
    ggopool.set_exit_drain(float(os.environ["LOADTESTS_DRAIN_TIMEOUT"]))


def post_fork(server: Any, worker: Any) -> None:
    start_worker_process()


def post_worker_init(worker: Any) -> None:
    # From here on the worker has its own signal handlers: a stop signal the master
    # forwards to it now is obeyed (one that came earlier met the master's handlers,
    # copied by the fork, and was lost). Tests wait for this line before they signal.
    ggopool_gunicorn.post_worker_init(worker)  # the drain's clock (nothing under the class)
    worker.log.info("Worker ready (pid: %s)", worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    try:
        ggopool_gunicorn.worker_exit(server, worker)  # the drain (nothing under the class)
    finally:
        if getattr(worker, "pid", None) == os.getpid():  # not the master's call for it
            dump_start_delays()


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
