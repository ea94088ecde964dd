"""``python -m loadtests.soak``: Locust headless against the app for a while; pass or fail.

    python -m loadtests.soak                    # 2 minutes, 20 users
    python -m loadtests.soak --duration 20      # what CI runs (tests/test_soak.py)

It starts a fresh app (``python -m loadtests.app --port 0``), runs Locust headless
against it for ``--duration`` seconds while sampling the app's RSS, waits for the app's
pools to drain, and prints one report: requests, failures, p50/p99 latency, the app's
RSS after warm-up and at the end, and the pools' counts from ``GET /stats``.

The bar, for exit code 0:

* no failed request, no failed pool task (Locust's exit code, run with
  ``--exit-code-on-error 1``, and the app's own counts);
* nothing lost or run twice: each pool's ``submitted == completed + failed`` once it has
  drained, every accepted order audited and notified once;
* the app's RSS flat after warm-up: the median of the last samples within
  ``--rss-tolerance`` (5%) of the median of the first samples after warm-up.

Everything binds and connects to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from loadtests.run import LOCUSTFILE, ROOT, STARTUP_TIMEOUT, _env, start_app, stop

#: Seconds between two RSS samples of the app.
SAMPLE_EVERY = 0.5
#: Seconds the app's pools get to drain after Locust stops.
DRAIN_TIMEOUT = 15.0


@dataclass
class Report:
    duration: int
    users: int
    warmup: float
    requests: int = 0
    failures: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    locust_exit: int | None = None
    rss_warm: int = 0  # bytes: median of the first samples after warm-up
    rss_end: int = 0  # bytes: median of the last samples
    rss_samples: int = 0
    orders_warm: int = 0  # orders accepted by the app when warm-up ended
    stats: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def rss_growth(self) -> float:
        return (self.rss_end - self.rss_warm) / self.rss_warm if self.rss_warm else 0.0

    def lines(self) -> list[str]:
        mib = 1 << 20
        out = [
            f"soak: {self.duration} s, {self.users} users, warm-up {self.warmup:g} s",
            f"requests: {self.requests}, failures: {self.failures}, "
            f"p50 {self.p50_ms:g} ms, p99 {self.p99_ms:g} ms (locust exit {self.locust_exit})",
            f"app RSS: {self.rss_warm / mib:.1f} MiB after warm-up, {self.rss_end / mib:.1f} MiB "
            f"at the end ({self.rss_growth:+.1%}, {self.rss_samples} samples)",
        ]
        orders = self.stats.get("orders", {}).get("accepted", 0) - self.orders_warm
        if self.orders_warm and orders > 0:
            per_order = (self.rss_end - self.rss_warm) / orders
            out.append(f"app RSS change per order accepted after warm-up: {per_order:+.0f} B")
        for name, pool in self.stats.get("pools", {}).items():
            out.append(
                f"pool {name}: cap {pool['cap']}, submitted {pool['submitted']}, "
                f"completed {pool['completed']}, failed {pool['failed']}, "
                f"queued {pool['task_count']}, running {pool['running']}, "
                f"workers {pool['worker_count']}, peak running {pool['peak_running']}, "
                f"peak workers {pool['peak_workers']}"
            )
        if "orders" in self.stats:
            out.append(f"orders: {json.dumps(self.stats['orders'], sort_keys=True)}")
        out.append("result: " + ("PASS" if not self.problems else "FAIL"))
        out += [f"  - {problem}" for problem in self.problems]
        return out


def get_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:
        stats: dict[str, Any] = json.loads(response.read())
        return stats


def drained(stats: dict[str, Any]) -> bool:
    return all(p["task_count"] == 0 and p["running"] == 0 for p in stats["pools"].values())


def read_aggregate(csv_prefix: Path) -> dict[str, str]:
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                return row
    raise RuntimeError(f"no Aggregated row in {csv_prefix}_stats.csv")


def soak(duration: int, users: int, warmup: float, rss_tolerance: float) -> Report:
    report = Report(duration, users, warmup)
    env = _env()
    app, url = start_app(env)
    try:
        app_proc = psutil.Process(app.pid)
        with tempfile.TemporaryDirectory() as tmp:
            prefix = Path(tmp) / "soak"
            command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
            command += ["-u", str(users), "-r", str(users), "-t", f"{duration}s", "-H", url]
            command += ["--only-summary", "--exit-code-on-error", "1", "--csv", str(prefix)]
            # Locust's log goes to a file: a pipe nobody reads until the end could fill.
            log = open(Path(tmp) / "locust.log", "w+")  # noqa: SIM115 - closed below
            locust = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
            )
            samples: list[tuple[float, int]] = []
            started = time.monotonic()
            deadline = started + STARTUP_TIMEOUT + duration + 60
            while locust.poll() is None and time.monotonic() < deadline:
                elapsed = time.monotonic() - started
                samples.append((elapsed, app_proc.memory_info().rss))
                if not report.orders_warm and elapsed >= warmup:
                    report.orders_warm = get_stats(url)["orders"]["accepted"]
                time.sleep(SAMPLE_EVERY)
            if locust.poll() is None:
                stop(locust)
                report.problems.append("locust did not finish in time")
            report.locust_exit = locust.wait()
            log.seek(0)
            stderr = log.read()
            log.close()
            row = read_aggregate(prefix)
        report.requests = int(row["Request Count"])
        report.failures = int(row["Failure Count"])
        report.p50_ms = float(row["50%"] or 0)
        report.p99_ms = float(row["99%"] or 0)
        # RSS: the first and the last samples taken while the load ran, after warm-up.
        warm = [rss for t, rss in samples if warmup <= t <= duration]
        report.rss_samples = len(warm)
        window = max(1, len(warm) // 10)
        if len(warm) >= 2 * window:
            report.rss_warm = int(statistics.median(warm[:window]))
            report.rss_end = int(statistics.median(warm[-window:]))
        else:
            report.problems.append(f"only {len(warm)} RSS samples after warm-up")
        # Nothing lost: wait for the background work the last requests queued.
        drain_by = time.monotonic() + DRAIN_TIMEOUT
        report.stats = get_stats(url)
        while not drained(report.stats) and time.monotonic() < drain_by:
            time.sleep(0.1)
            report.stats = get_stats(url)
    finally:
        stop(app)
        if app.stdout is not None:
            app.stdout.close()
    check(report, rss_tolerance, stderr)
    return report


def check(report: Report, rss_tolerance: float, locust_stderr: str) -> None:
    problems = report.problems
    if report.requests == 0:
        problems.append("no requests were made")
    if report.failures:
        problems.append(f"{report.failures} failed requests")
    if report.locust_exit != 0:
        tail = " | ".join(locust_stderr.strip().splitlines()[-5:])
        problems.append(f"locust exited with {report.locust_exit}: {tail}")
    if abs(report.rss_growth) > rss_tolerance:
        problems.append(
            f"app RSS moved {report.rss_growth:+.1%} after warm-up (bar: {rss_tolerance:.0%})"
        )
    stats = report.stats
    if not stats or not drained(stats):
        problems.append("the app's pools did not drain")
    for name, pool in stats.get("pools", {}).items():
        if pool["failed"]:
            problems.append(f"pool {name}: {pool['failed']} tasks failed")
        if pool["submitted"] != pool["completed"] + pool["failed"]:
            problems.append(f"pool {name}: {pool['submitted']} submitted, not all finished")
        if pool["peak_running"] > pool["cap"] or pool["peak_workers"] > pool["cap"]:
            problems.append(f"pool {name}: above its cap of {pool['cap']}")
    orders = stats.get("orders", {})
    if orders and not orders["accepted"] == orders["audited"] == orders["notified"]:
        problems.append(f"orders not all audited and notified once: {orders}")
    if orders.get("duplicates"):
        problems.append(f"{orders['duplicates']} background tasks ran twice")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.soak",
        description="Soak the load-test app with Locust; exit 1 on failures or RSS growth.",
    )
    parser.add_argument("--duration", type=int, default=120, help="seconds of load (120)")
    parser.add_argument("-u", "--users", type=int, default=20, help="Locust users (20)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before RSS counts (default: a quarter of --duration, at least 5)",
    )
    parser.add_argument(
        "--rss-tolerance", type=float, default=0.05, help="allowed RSS change (0.05)"
    )
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else max(5.0, args.duration / 4)
    if args.duration < 10 or args.users < 1 or not 0 <= warmup < args.duration:
        parser.error(
            "--duration must be >= 10, --users >= 1 and --warmup in [0, duration), "
            f"got {args.duration}, {args.users} and {warmup}"
        )
    report = soak(args.duration, args.users, warmup, args.rss_tolerance)
    print("\n".join(report.lines()), flush=True)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
