"""``python -m loadtests.gunicorn_compare``: gunicorn's ``-k gevent`` against ggopool's worker.

    python -m loadtests.gunicorn_compare                          # 5 rounds, 20 users, 15 s
    python -m loadtests.gunicorn_compare --rounds 3 --run-time 10
    python -m loadtests.gunicorn_compare --background-tasks --users 64   # saturated

What it measures: the load-test app (``loadtests/app.py``) served by gunicorn with two
workers, once with gunicorn's own gevent worker (``-k gevent``) and once with
``-k ggopool.gunicorn.GeventWorker``, both with ``-c python:loadtests.gunicorn_conf`` (its
hooks do nothing under the worker class, so one config serves both), under the same
Locust run (``loadtests/locustfile.py``, headless). Per run it reads Locust's aggregate
requests/s, 95th percentile latency and failure count, and each worker's peak RSS
(``VmHWM``) just before gunicorn is stopped.

With ``--background-tasks`` the load is ``loadtests/locustfile_events.py`` instead: closed-loop
users that each send their next ``POST /events`` as soon as the last one answered, so enough
of them saturate the two workers. Each request spends ``--request-cpu`` ms of CPU (0 by
default), then queues two blocking background tasks, an audit write and a webhook call (a
sleep of ``--webhook-delay`` seconds, 0.5 by default), with ``ggopool.go`` under the worker
class and with ``gevent.spawn`` under ``-k gevent`` (``LOADTESTS_SPAWN``). The table then
gives requests/s, 99th percentile latency, failures, the workers' CPU time per request (over
the load), each worker's peak RSS, and the background tasks' start delay (from the call to
the task's first line; the app keeps them and each worker writes its own when it stops), p50
and p99 over both workers, and a line says whether the target was met: a median per-round
ratio to ``-k gevent`` of at least `TARGET` for requests/s and at most its inverse for p99.

Why this way: the worker class runs every connection on a ggopool pool and starts every
request in a fresh context, which costs something per request; this says how much, next
to the worker it replaces, on the app the docs describe. The machine is shared and
noisy, so each round runs both worker classes, in alternating order, each in a fresh
gunicorn; the table gives the median over rounds, the lowest and highest round, and the
median of the per-round ratios to ``-k gevent``, which a neighbour's load moves less than
the absolute figures.

Everything binds and connects to 127.0.0.1. The table goes to stdout, progress to
stderr; the exit code is 1 if a run went wrong (gunicorn did not start, Locust did not
finish, a worker was replaced during the load), 0 otherwise.
"""

from __future__ import annotations

import argparse
import array
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import IO

import psutil

from loadtests.run import LOCUSTFILE, ROOT, SHUTDOWN_TIMEOUT, STARTUP_TIMEOUT, _env, _free_port
from loadtests.soak import read_aggregate

#: The worker classes compared, as passed to ``-k``; the first is the baseline of the ratios.
BASELINE = "gevent"
WORKER_CLASS = "ggopool.gunicorn.GeventWorker"
CLASSES = (BASELINE, WORKER_CLASS)
#: gunicorn workers per run: two, so that both the per-worker pools and the master's
#: forwarding of the stop are in play, on a 2-core machine.
WORKERS = 2
#: Seconds gunicorn gets to stop after SIGTERM before it is killed: its graceful_timeout
#: (30 s by default) plus a margin, since each worker finishes its requests and drains
#: its pools first.
STOP_TIMEOUT = 40.0
#: Seconds between two checks while waiting for gunicorn's workers.
POLL_EVERY = 0.1
#: What ``loadtests/gunicorn_conf.py``'s post_worker_init logs once a worker has its own
#: signal handlers and is about to serve.
READY = re.compile(r"Worker ready \(pid: (\d+)\)")
MIB = 1 << 20
#: The closed-loop load of ``--background-tasks``.
EVENTS_LOCUSTFILE = LOCUSTFILE.parent / "locustfile_events.py"
#: What starts the background tasks under each worker class with ``--background-tasks``.
SPAWN = {BASELINE: "gevent.spawn", WORKER_CLASS: "ggopool.go"}
#: The target of ``--background-tasks``: the median per-round ratio to ``-k gevent`` of
#: requests/s at least this, and of p99 at most its inverse.
TARGET = 0.95


class RunError(Exception):
    """One run of gunicorn and Locust went wrong; its figures are not used."""


@dataclass
class Run:
    """One worker class, one round."""

    worker_class: str
    requests: int
    requests_per_s: float
    p95_ms: float
    failures: int
    #: Each worker's VmHWM in bytes, read just before the stop.
    worker_peak_rss: list[int]
    locust_exit: int
    stop_seconds: float
    p99_ms: float = 0.0
    #: The workers' CPU time (user + system) from ready to the end of the load.
    cpu_seconds: float = 0.0
    #: The background tasks' start delays in seconds (``--background-tasks`` only).
    start_delays: list[float] = field(default_factory=list)
    #: Whether Locust warned that its own CPU was near 100% (the load generator limited).
    locust_busy: bool = False

    @property
    def peak_rss(self) -> int:
        # The larger of the workers: what one worker process needs at its peak.
        return max(self.worker_peak_rss)

    @property
    def cpu_per_request_us(self) -> float:
        return self.cpu_seconds / self.requests * 1e6 if self.requests else 0.0

    def delay_ms(self, q: float) -> float:
        """The ``q`` quantile (nearest rank) of the start delays, in ms; 0 if none."""
        if not self.start_delays:
            return 0.0
        rank = max(math.ceil(q * len(self.start_delays)) - 1, 0)
        return self.start_delays[rank] * 1e3


@dataclass
class Round:
    number: int
    runs: dict[str, Run] = field(default_factory=dict)


def vm_hwm(pid: int) -> int:
    """The process's peak resident set size in bytes (Linux: ``VmHWM`` in /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # the kernel gives kB
    raise RunError(f"no VmHWM in /proc/{pid}/status")


def _log_text(log: IO[str]) -> str:
    log.seek(0)
    return log.read()


def _tail(log: IO[str], lines: int = 5) -> str:
    return " | ".join(_log_text(log).strip().splitlines()[-lines:])


def wait_ready(master: subprocess.Popen[bytes], log: IO[str], url: str) -> set[int]:
    """The pids of gunicorn's workers, once all of them logged that they are ready and
    the server answers a request; `RunError` if that takes over `STARTUP_TIMEOUT`."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    # Bounded by the deadline, and by a count in case the clock misbehaves.
    for _ in range(int(STARTUP_TIMEOUT / POLL_EVERY) + 1):
        if master.poll() is not None:
            raise RunError(f"gunicorn exited with {master.returncode}: {_tail(log)}")
        ready = {int(pid) for pid in READY.findall(_log_text(log))}
        if len(ready) >= WORKERS:
            try:
                with urllib.request.urlopen(f"{url}/stats", timeout=5) as response:
                    if response.status == 200:
                        return ready
            except (urllib.error.URLError, OSError):
                pass  # not accepting yet: try again until the deadline
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_EVERY)
    raise RunError(f"gunicorn was not ready after {STARTUP_TIMEOUT:g} s: {_tail(log)}")


def stop_gunicorn(master: subprocess.Popen[bytes], workers: Sequence[psutil.Process]) -> float:
    """SIGTERM to the master, then wait for it, for at most `STOP_TIMEOUT` s; on timeout
    kill the master and the workers it leaves. Returns the seconds the stop took."""
    started = time.monotonic()
    if master.poll() is None:
        master.send_signal(signal.SIGTERM)
        try:
            master.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()
    # A worker outlives its master only if the master was killed; psutil's Process checks
    # the pid still names the process it found (not a newer one) before it signals.
    for worker in workers:
        try:
            if worker.is_running():
                worker.kill()
                worker.wait(5)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            pass
    return time.monotonic() - started


def _cpu_seconds(workers: Sequence[psutil.Process]) -> float:
    return sum(sum(worker.cpu_times()[:2]) for worker in workers)  # user + system


def read_start_delays(directory: Path, pids: Sequence[int]) -> list[float]:
    """The start delays the workers ``pids`` wrote when they stopped, sorted."""
    delays = array.array("d")
    for pid in pids:
        path = directory / f"{pid}.delays"
        if not path.exists():
            raise RunError(f"worker {pid} wrote no start delays to {path}")
        delays.frombytes(path.read_bytes())
    return sorted(delays)


def run_once(
    worker_class: str,
    users: int,
    run_time: int,
    tmp: Path,
    background: bool = False,
    webhook_delay: float = 0.5,
    request_cpu: float = 0.0,
) -> Run:
    """Start gunicorn with ``worker_class``, load it with Locust, read the figures, stop it."""
    env = _env()
    # /metrics in multi-process mode would add a file per worker and a publisher: not
    # what is compared here, and it would differ with whatever the caller's shell set.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    name = worker_class.rsplit(".", 1)[-1].lower()
    delays_dir = tmp / f"{name}-delays-{port}"
    if background:
        delays_dir.mkdir()
        env.update(LOADTESTS_SPAWN=SPAWN[worker_class], LOADTESTS_DELAYS_DIR=str(delays_dir))
        env["LOADTESTS_WEBHOOK_DELAY"] = repr(webhook_delay)
        env["LOADTESTS_EVENT_CPU"] = repr(request_cpu)
    locustfile = EVENTS_LOCUSTFILE if background else LOCUSTFILE
    gunicorn = [sys.executable, "-m", "gunicorn", "-k", worker_class, "-w", str(WORKERS)]
    gunicorn += ["-b", f"127.0.0.1:{port}", "-c", "python:loadtests.gunicorn_conf"]
    gunicorn += ["loadtests.app:app"]
    # Logs go to files: a pipe nobody reads until the end could fill and stall the server.
    with (
        open(tmp / f"{name}-gunicorn.log", "w+") as glog,
        open(tmp / f"{name}-locust.log", "w+") as llog,
    ):
        master = subprocess.Popen(gunicorn, cwd=ROOT, env=env, stdout=glog, stderr=glog)
        workers: list[psutil.Process] = []
        try:
            ready = wait_ready(master, glog, url)
            workers = psutil.Process(master.pid).children()
            cpu_before = _cpu_seconds(workers)
            prefix = tmp / f"{name}-locust"
            locust = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless"]
            locust += ["-u", str(users), "-r", str(users), "-t", f"{run_time}s", "-H", url]
            locust += ["--only-summary", "--csv", str(prefix)]
            proc = subprocess.Popen(
                locust, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=llog
            )
            try:
                locust_exit = proc.wait(STARTUP_TIMEOUT + run_time + SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise RunError(f"locust did not finish in time: {_tail(llog)}") from None
            cpu_seconds = _cpu_seconds(workers) - cpu_before
            locust_busy = "CPU usage above" in _log_text(llog)
            # Read just before the stop: the peak of the load, not of the drain after it.
            pids = {worker.pid for worker in psutil.Process(master.pid).children()}
            if pids != ready:
                # A worker that was replaced (timed out, crashed) restarted its peak.
                raise RunError(f"workers {sorted(ready)} became {sorted(pids)} under load")
            peaks = [vm_hwm(pid) for pid in sorted(pids)]
        finally:
            stop_seconds = stop_gunicorn(master, workers)
        row = read_aggregate(prefix)
    return Run(
        worker_class=worker_class,
        requests=int(row["Request Count"]),
        requests_per_s=float(row["Requests/s"]),
        p95_ms=float(row["95%"] or 0),
        failures=int(row["Failure Count"]),
        worker_peak_rss=peaks,
        locust_exit=locust_exit,
        stop_seconds=stop_seconds,
        p99_ms=float(row["99%"] or 0),
        cpu_seconds=cpu_seconds,
        locust_busy=locust_busy,
        start_delays=read_start_delays(delays_dir, sorted(ready)) if background else [],
    )


# -- the table ---------------------------------------------------------------------------


def _num(value: float, decimals: int) -> str:
    # A median over an even number of rounds can fall between two whole figures.
    if decimals == 0 and value != int(value):
        decimals = 1
    return f"{value:,.{decimals}f}"


def _range(values: Sequence[float], decimals: int) -> str:
    return f"{_num(min(values), decimals)}-{_num(max(values), decimals)}"


def ratios(
    rounds: Sequence[Round], worker_class: str, metric: Callable[[Run], float]
) -> list[float]:
    # Per round: the two runs of a round shared the machine's state.
    return [
        metric(r.runs[worker_class]) / metric(r.runs[BASELINE])
        for r in rounds
        if metric(r.runs[BASELINE])
    ]


def _ratio(rounds: Sequence[Round], worker_class: str, metric: Callable[[Run], float]) -> str:
    ratios_ = ratios(rounds, worker_class, metric)
    if not ratios_:
        return "-"
    return f"{statistics.median(ratios_):.2f}x ({min(ratios_):.2f}-{max(ratios_):.2f}x)"


def table(rounds: Sequence[Round], background: bool = False) -> list[str]:
    """The markdown table: per worker class, medians over rounds, ranges and ratios."""
    metrics: list[tuple[str, Callable[[Run], float], int, bool]] = [
        ("requests/s", lambda run: run.requests_per_s, 1, True),
        ("p95 ms", lambda run: run.p95_ms, 0, True),
        ("failures", lambda run: run.failures, 0, False),
        ("worker peak RSS MiB", lambda run: run.peak_rss / MIB, 1, True),
    ]
    if background:
        metrics[1] = ("p99 ms", lambda run: run.p99_ms, 0, True)
        metrics[3:3] = [
            ("worker CPU/request µs", lambda run: round(run.cpu_per_request_us), 0, True)
        ]
        metrics += [
            ("task start p50 ms", lambda run: run.delay_ms(0.5), 2, False),
            ("task start p99 ms", lambda run: run.delay_ms(0.99), 2, False),
        ]
    header = ["-k"]
    for label, _, _, ratio in metrics:
        header += [label, "range"] + ([f"x -k {BASELINE}"] if ratio else [])
    rows = [header]
    for worker_class in CLASSES:
        runs = [r.runs[worker_class] for r in rounds]
        row = [worker_class]
        for _, metric, decimals, ratio in metrics:
            values = [metric(run) for run in runs]
            row += [_num(statistics.median(values), decimals), _range(values, decimals)]
            if ratio:
                row.append(_ratio(rounds, worker_class, metric))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    # Left-aligned names, right-aligned figures, as the bench's tables.
    align = ["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]

    def line(cells: Sequence[str]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    return [line(rows[0]), line(align), *(line(row) for row in rows[1:])]


def verdict(rounds: Sequence[Round]) -> str:
    """Whether the worker class met `TARGET` against ``-k gevent`` (``--background-tasks``)."""
    rps = statistics.median(ratios(rounds, WORKER_CLASS, lambda run: run.requests_per_s))
    p99 = statistics.median(ratios(rounds, WORKER_CLASS, lambda run: run.p99_ms) or [math.inf])
    met = rps >= TARGET and p99 <= 1 / TARGET
    return (
        f"target (median per-round ratio to -k gevent: requests/s >= {TARGET:g}, "
        f"p99 <= {1 / TARGET:.2f}): requests/s {rps:.2f}x, p99 {p99:.2f}x: "
        + ("met" if met else "MISSED")
    )


def describe(args: argparse.Namespace, load: tuple[float, float, float]) -> list[str]:
    versions = ", ".join(f"{pkg} {version(pkg)}" for pkg in ("gevent", "gunicorn", "locust"))
    if args.background_tasks:
        spawn = ", ".join(f"-k {cls}: {SPAWN[cls]}" for cls in CLASSES)
        return [
            f"machine: {os.cpu_count()} cpus; {platform.python_implementation()} "
            f"{platform.python_version()}, {versions}; load average at the start {load[0]:.2f}",
            f"LOADTESTS_SPAWN=<{spawn}> LOADTESTS_WEBHOOK_DELAY={args.webhook_delay:g} "
            f"LOADTESTS_EVENT_CPU={args.request_cpu / 1e3:g} "
            f"gunicorn -k <class> -w {WORKERS} -b 127.0.0.1:<free port> "
            "-c python:loadtests.gunicorn_conf loadtests.app:app",
            f"locust -f loadtests/locustfile_events.py --headless -u {args.users} "
            f"-r {args.users} -t {args.run_time}s   # closed loop: POST /events, no wait",
            f"rounds: {args.rounds}, the two classes in alternating order; figures are medians "
            "over rounds, range: the lowest and highest round's, x: the median of the per-round "
            f"ratios to -k {BASELINE} (their range in brackets); worker CPU/request: both "
            "workers' CPU time over the load per request; task start delay: from the call to "
            "the background task's first line, over both workers and both tasks per request",
        ]
    return [
        f"machine: {os.cpu_count()} cpus; {platform.python_implementation()} "
        f"{platform.python_version()}, {versions}; load average at the start {load[0]:.2f}",
        f"gunicorn -k <class> -w {WORKERS} -b 127.0.0.1:<free port> "
        "-c python:loadtests.gunicorn_conf loadtests.app:app",
        f"locust -f loadtests/locustfile.py --headless -u {args.users} -r {args.users} "
        f"-t {args.run_time}s",
        f"rounds: {args.rounds}, the two classes in alternating order; figures are medians "
        "over rounds, range: the lowest and highest round's, x: the median of the per-round "
        f"ratios to -k {BASELINE} (their range in brackets); worker peak RSS: the larger "
        "VmHWM of the two workers, read just before the stop",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.gunicorn_compare",
        description="gunicorn -k gevent against -k ggopool.gunicorn.GeventWorker under Locust.",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both classes (5)")
    parser.add_argument("-u", "--users", type=int, default=20, help="Locust users (20)")
    parser.add_argument("-t", "--run-time", type=int, default=15, help="seconds per run (15)")
    parser.add_argument(
        "--background-tasks",
        action="store_true",
        help="saturate with closed-loop POST /events, each queuing blocking background "
        "tasks with ggopool.go (the worker class) or gevent.spawn (-k gevent)",
    )
    parser.add_argument(
        "--webhook-delay",
        type=float,
        default=0.5,
        help="seconds the background webhook call sleeps, with --background-tasks (0.5)",
    )
    parser.add_argument(
        "--request-cpu",
        type=float,
        default=0.0,
        help="ms of CPU each request spends, with --background-tasks (0)",
    )
    args = parser.parse_args(argv)
    if not args.webhook_delay >= 0 or not args.request_cpu >= 0:
        parser.error(
            "--webhook-delay and --request-cpu must be >= 0, "
            f"got {args.webhook_delay} and {args.request_cpu}"
        )
    if args.rounds < 1 or args.users < 1 or args.run_time < 1:
        parser.error(
            "--rounds, --users and --run-time must be >= 1, "
            f"got {args.rounds}, {args.users} and {args.run_time}"
        )
    load = os.getloadavg()
    rounds: list[Round] = []
    problems: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(1, args.rounds + 1):
            # Alternate which class goes first, so neither always runs on a machine the
            # other has just warmed (page cache, CPU frequency) or just loaded.
            order = CLASSES if number % 2 else CLASSES[::-1]
            this = Round(number)
            for worker_class in order:
                try:
                    run = run_once(
                        worker_class,
                        args.users,
                        args.run_time,
                        Path(tmp),
                        args.background_tasks,
                        args.webhook_delay,
                        args.request_cpu / 1e3,
                    )
                except RunError as exc:
                    problems.append(f"round {number}, -k {worker_class}: {exc}")
                    print(f"round {number} -k {worker_class}: {exc}", file=sys.stderr)
                    continue
                this.runs[worker_class] = run
                rss = ", ".join(f"{b / MIB:.1f}" for b in run.worker_peak_rss)
                delays = (
                    f"{len(run.start_delays)} task start delays p50 {run.delay_ms(0.5):.2f} "
                    f"p99 {run.delay_ms(0.99):.2f} max {run.delay_ms(1):.2f} ms, "
                    if args.background_tasks
                    else ""
                )
                print(
                    f"round {number} -k {worker_class}: {run.requests_per_s:.1f} requests/s, "
                    f"p95 {run.p95_ms:g} p99 {run.p99_ms:g} ms, "
                    f"{run.failures} failures of {run.requests}, "
                    f"worker CPU/request {run.cpu_per_request_us:.0f} µs, {delays}"
                    f"worker peak RSS {rss} MiB, stop {run.stop_seconds:.1f} s, "
                    f"locust exit {run.locust_exit}"
                    + (", locust warned its CPU was above 90%" if run.locust_busy else ""),
                    file=sys.stderr,
                    flush=True,
                )
            # Only whole rounds count: the ratios are taken within a round.
            if len(this.runs) == len(CLASSES):
                rounds.append(this)
    elapsed = time.monotonic() - started
    end_load = os.getloadavg()[0]
    for line in describe(args, load):
        print(line)
    print(f"took {elapsed:.0f} s; load average at the end {end_load:.2f}")
    print()
    if rounds:
        for line in table(rounds, args.background_tasks):
            print(line)
        if args.background_tasks:
            print()
            print(verdict(rounds))
    else:
        print("no round completed")
    for problem in problems:
        print(f"problem: {problem}")
    return 1 if problems or not rounds else 0


if __name__ == "__main__":
    sys.exit(main())
