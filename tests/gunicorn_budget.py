"""Measure what gunicorn's stop paths lose with the drain's deadline fixed at 5 s and with
gunicorn's own budget (``graceful_timeout`` less what the stop took), with ggopool's
worker class and with the hooks; each run as in ``python -m tests.shutdown_scenarios``::

    python -m tests.gunicorn_budget               # load 1.5, cap 2, SIGTERM 4 s in
    python -m tests.gunicorn_budget --runs 3 --load 3

Everything binds and connects to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests import shutdown_scenarios
from tests.deploy_helpers import WORKER_CLASS, gunicorn_args

#: (label, -k, the drain's deadline: seconds, or None for the default)
SETUPS = [
    ("-k gevent + hooks, deadline 5 s", "gevent", 5.0),
    ("-k gevent + hooks, gunicorn's budget", "gevent", None),
    (f"-k {WORKER_CLASS}", WORKER_CLASS, None),
]
PATHS = ["gunicorn SIGTERM", "gunicorn SIGQUIT", "gunicorn SIGHUP", shutdown_scenarios.RECYCLING]


def measure(path: str, worker: str, deadline: float | None, load: Any) -> Any:
    """One run of ``path`` with ``-k worker`` and the drain's ``deadline``."""
    # The two names shutdown_scenarios' gunicorn runs read, swapped for this run.
    names = vars(shutdown_scenarios)
    real_env, real_args = names["app_env"], names["gunicorn_args"]

    def app_env(tmp: Path, receiver: Any, **settings: str) -> dict[str, str]:
        settings["drain_timeout"] = "" if deadline is None else str(deadline)
        env: dict[str, str] = real_env(tmp, receiver, **settings)
        return env

    def args(*options: str) -> list[str]:
        return gunicorn_args(*options, worker_class=worker)

    names["app_env"], names["gunicorn_args"] = app_env, args
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return shutdown_scenarios.measure_server(path, load, Path(tmp))
    finally:
        names["app_env"], names["gunicorn_args"] = real_env, real_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gunicorn_budget")
    parser.add_argument("--load", type=float, default=1.5, help="x what the pools finish")
    parser.add_argument("--stop-after", type=float, default=4.0)
    parser.add_argument("--max-requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    load = shutdown_scenarios.Load(
        load=args.load, stop_after=args.stop_after, max_requests=args.max_requests
    )
    print(load)
    print("| setup | how the process stopped | accepted | tasks not run | logged as abandoned |")
    print("|---|---|---:|---:|---:|")
    for path in PATHS:
        for label, worker, deadline in SETUPS:
            for _ in range(args.runs):
                r = measure(path, worker, deadline, load)
                print(
                    f"| {label} | {path} | {r.accepted:,} | {r.tasks - r.ran:,} | "
                    f"{r.abandoned:,} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
