"""``python -m loadtests.run``: start the app, run Locust headless against it, print the summary.

    python -m loadtests.run                      # one Locust process: 20 users for 10 s
    python -m loadtests.run --workers 2          # a Locust master and two workers
    python -m loadtests.run -- --csv out/run     # after --: more options for Locust

Everything binds and connects to 127.0.0.1. The exit code is Locust's, run with
``--exit-code-on-error 1``: a failed request, or an exception in a pool task tracked
with `ggopool.locust.track`, makes it 1. The app is stopped however the run ends.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).absolute().parents[1]
LOCUSTFILE = Path(__file__).absolute().parent / "locustfile.py"
#: Seconds allowed for the app to start, for workers to connect, and for Locust to
#: finish after its run time is up.
STARTUP_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 60.0


def _env() -> dict[str, str]:
    # The repository first on the path, so ggopool and loadtests import without an install.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_app(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """``python -m loadtests.app --port 0``, and its URL once it listens."""
    app = subprocess.Popen(
        [sys.executable, "-m", "loadtests.app", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert app.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([app.stdout], [], [], left)
        if not ready:
            break
        line = app.stdout.readline()
        if not line:  # end of its output: the app exited (its error went to stderr, above)
            app.stdout.close()
            raise SystemExit(f"the app exited with code {app.wait()} before it was listening")
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return app, match.group(1)
    app.kill()
    app.wait()
    app.stdout.close()
    raise SystemExit(f"the app was not listening after {STARTUP_TIMEOUT:g} s; stopped it")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(users: int, run_time: int, workers: int, extra: list[str]) -> int:
    env = _env()
    app, url = start_app(env)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        locust = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
        command = [*locust, "--headless", "-u", str(users), "-r", str(users)]
        command += ["-t", f"{run_time}s", "-H", url, "--exit-code-on-error", "1"]
        if workers:
            port = str(_free_port())
            command += ["--master", "--master-bind-host", "127.0.0.1"]
            command += ["--master-bind-port", port, "--expect-workers", str(workers)]
            command += ["--expect-workers-max-wait", str(int(STARTUP_TIMEOUT))]
            worker = [*locust, "--worker", "--master-host", "127.0.0.1", "--master-port", port]
            procs += [subprocess.Popen(worker, cwd=ROOT, env=env) for _ in range(workers)]
        master = subprocess.Popen([*command, *extra], cwd=ROOT, env=env)
        procs.insert(0, master)
        try:
            return master.wait(STARTUP_TIMEOUT + run_time + SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            print("locust did not finish in time; stopping it", file=sys.stderr)
            return 1
    finally:
        for proc in procs:
            stop(proc)
        stop(app)
        if app.stdout is not None:
            app.stdout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.run",
        description="Start the load-test app and run Locust headless against it.",
    )
    parser.add_argument("-u", "--users", type=int, default=20, help="Locust users (20)")
    parser.add_argument("-t", "--run-time", type=int, default=10, help="seconds (10)")
    parser.add_argument("--workers", type=int, default=0, help="Locust workers; 0: one process")
    parser.add_argument("locust_args", nargs="*", help="after --: more options for Locust")
    args = parser.parse_args(argv)
    if args.users < 1 or args.run_time < 1 or args.workers < 0:
        parser.error(
            "--users and --run-time must be >= 1 and --workers >= 0, "
            f"got {args.users}, {args.run_time} and {args.workers}"
        )
    return run(args.users, args.run_time, args.workers, args.locust_args)


if __name__ == "__main__":
    sys.exit(main())
