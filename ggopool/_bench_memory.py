"""Memory: how much N blocked tasks grow peak RSS, one strategy per fresh process.

A fresh process per strategy, because the allocator keeps what it once grew: measured in
one process, every strategy after the greediest one would look free.
"""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Sequence
from typing import Any, TypedDict

import gevent
from gevent.event import Event

from ggopool._bench_progress import Progress
from ggopool._bench_strategies import BASELINE, STRATEGIES
from ggopool._bench_subprocess import run_json
from ggopool._bench_workloads import blocking

#: Seconds one strategy's process may take before the bench gives up on it.
PROCESS_LIMIT = 600.0


class MemoryRow(TypedDict):
    """One strategy holding n blocked tasks: how much its process's peak RSS grew."""

    n: int
    cap: int
    strategy: str
    blocked_at_peak: int  # tasks started and waiting when the tasks were released
    tasks_run: int
    complete: bool
    peak_rss_growth_bytes: int
    bytes_per_task: float
    ratio_to_spawn: float | None  # this growth / gevent.spawn's


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes.

    On Linux it is ``VmHWM`` from /proc/self/status, not ``ru_maxrss``: the kernel
    carries ``ru_maxrss`` across exec, so a child of the big bench process would start
    with its parent's peak and show no growth at all.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux
    import resource  # Unix only; imported here so that the rest of the bench runs anywhere

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, the other Unixes kilobytes.
    return peak if sys.platform == "darwin" else peak * 1024


def measure(strategy_name: str, n: int, cap: int) -> dict[str, Any]:
    """In this process: hold n tasks blocked on ``strategy_name``, then release them.

    Every task waits on one Event. The ones a strategy runs at once block (all n for
    gevent.spawn, ``cap`` for ggopool and gevent.pool.Pool); the rest wait in its queue
    (ggopool's deque) or in the submitter (gevent.pool.Pool's spawn blocks when full).
    Once all that can run have blocked, the tasks are released and counted.
    """
    strategy = STRATEGIES[strategy_name](cap)
    release = Event()
    done = Event()
    task, started = blocking(n, done, release)
    expected = strategy.running_at_once(n)
    gc.collect()
    before = peak_rss()
    # The submitting loop runs in a greenlet of its own: gevent.pool.Pool's spawn blocks
    # it once the pool is full, and the floor runs its first task in it.
    submitter = gevent.spawn(strategy.burst, n, task.task, done)
    while started() < expected and not submitter.dead:
        gevent.sleep(0.001)
    blocked = started()
    release.set()
    submitter.join()
    after = peak_rss()
    ran = task.ran()
    return {
        "strategy": strategy_name,
        "n": n,
        "cap": cap,
        "blocked_at_peak": blocked,
        "tasks_run": ran,
        "peak_rss_growth_bytes": after - before,
    }


def memory(n: int, cap: int, names: Sequence[str], progress: Progress) -> list[MemoryRow]:
    """Each named strategy's peak RSS growth for n blocked tasks, each in a fresh process."""
    got: dict[str, dict[str, Any]] = {}
    for name in names:
        progress.step(f"memory n={n:,} cap={cap}: {name} (fresh process)")
        request = json.dumps({"strategy": name, "n": n, "cap": cap})
        got[name] = run_json(["-m", "ggopool._bench_memory", request], PROCESS_LIMIT)
    base = got.get(BASELINE)
    rows: list[MemoryRow] = []
    for name in names:
        one = got[name]
        growth = int(one["peak_rss_growth_bytes"])
        ran = int(one["tasks_run"])
        rows.append(
            MemoryRow(
                n=n,
                cap=cap,
                strategy=name,
                blocked_at_peak=int(one["blocked_at_peak"]),
                tasks_run=ran,
                complete=ran == n,
                peak_rss_growth_bytes=growth,
                bytes_per_task=growth / n,
                ratio_to_spawn=(
                    None
                    if base is None or base["peak_rss_growth_bytes"] <= 0
                    else growth / int(base["peak_rss_growth_bytes"])
                ),
            )
        )
    return rows


def main(argv: list[str]) -> int:
    """``python -m ggopool._bench_memory '{"strategy": ..., "n": ..., "cap": ...}'``."""
    request = json.loads(argv[0])
    result = measure(str(request["strategy"]), int(request["n"]), int(request["cap"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
