"""The memory table: what a burst of n tasks costs in RSS, at its peak and a second later.

Each strategy runs each kind of task in a fresh process, because the allocator keeps what
it once grew: measured in one process, every strategy after the greediest one would look
free. In the child the burst is submitted in a tight loop, without yielding, from a
greenlet of its own; the child reads:

* peak RSS growth: the peak RSS (``VmHWM``, reset just before the burst) minus the RSS just
  before the burst: what the burst needed at its worst;
* RSS growth after: the RSS ``after`` seconds (default 1) after the last task ran, minus
  the same baseline: what the process keeps holding once the burst is over (parked
  workers, freed memory the allocator has not given back).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from time import perf_counter
from typing import Any, TypedDict

import gevent
from gevent.event import Event

from ggopool.bench.fresh_process import run_json
from ggopool.bench.progress import Progress
from ggopool.bench.rss import peak_rss, reset_peak, rss
from ggopool.bench.strategies import BASELINE, STRATEGIES, WAIT_LIMIT, cap_of
from ggopool.bench.workloads import blocking, counted, yield_once

#: The kinds of task, in the order the table lists them: the counting task alone; one
#: ``gevent.sleep(0)``; blocked on one Event until every task that can run has started.
KINDS = ("noop", "yield", "event")

#: Seconds one child process may take before the bench gives up on it.
PROCESS_LIMIT = 600.0

#: The child's whole program.
CHILD = "import sys\nfrom ggopool.bench.memory import child\nsys.exit(child(sys.argv[1:]))\n"


class MemoryRow(TypedDict):
    """One strategy running a burst of n tasks of one kind, in a process of its own."""

    kind: str  # one of KINDS
    n: int
    cap: int  # the cap this workload gives the capped strategies
    strategy: str
    strategy_cap: int | None  # the cap this strategy ran under; None: it has none
    blocked_at_peak: int | None  # event: tasks started and waiting when released
    tasks_run: int
    complete: bool
    peak_rss_growth_bytes: int
    rss_growth_after_bytes: int | None  # None where the RSS cannot be read (not Linux)
    after_seconds: float  # when the second figure is read, after the last task ran
    after_seconds_actual: float  # when it was read (later if the hub was busy)
    peak_was_reset: bool  # False: the peak is the process's since it started
    peak_ratio_to_spawn: float | None  # this peak growth / gevent.spawn's
    after_ratio_to_spawn: float | None  # this growth after / gevent.spawn's


def measure(strategy_name: str, kind: str, n: int, cap: int, after: float) -> dict[str, Any]:
    """In this process: a burst of n tasks of ``kind`` on ``strategy_name``; its RSS growth.

    For ``event`` every task waits on one Event. The ones a strategy runs at once block
    (all n for gevent.spawn and ggopool.go, ``cap`` for ggopool.Pool and gevent.pool.Pool);
    the rest wait in its queue (ggopool.Pool's) or in the submitter (gevent.pool.Pool's
    spawn blocks while the pool is full). Once all that can run have started, the Event is
    set and the tasks finish.
    """
    strategy = STRATEGIES[strategy_name](cap)
    release = Event()
    done = Event()
    started = None
    if kind == "event":
        task, started = blocking(n, done, release)
    else:
        task = counted(n, done, yield_once if kind == "yield" else None)
    expected = strategy.running_at_once(n)
    gc.collect()
    was_reset = reset_peak()
    before = rss()
    before_peak = peak_rss()
    # The submitting loop runs in a greenlet of its own: gevent.pool.Pool's spawn blocks
    # it once the pool is full, and the floor runs its tasks in it.
    submitter = gevent.spawn(strategy.burst, n, task.task, done)
    blocked = None
    if started is not None:
        while started() < expected and not submitter.dead:
            gevent.sleep(0.001)
        blocked = started()
        release.set()
    done.wait(WAIT_LIMIT)
    last_ran = perf_counter()
    # Whatever the strategy still does after its last task (joinall, workers settling)
    # goes on while this greenlet sleeps: the second figure is what the process holds at
    # that moment, whether or not the strategy is done.
    gevent.sleep(max(0.0, last_ran + after - perf_counter()))
    now = rss()
    read_after = perf_counter() - last_ran
    submitter.join()
    peak = peak_rss()
    return {
        "blocked_at_peak": blocked,
        "tasks_run": task.ran(),
        "peak_rss_growth_bytes": peak - before_peak,
        "rss_growth_after_bytes": None if now is None or before is None else now - before,
        "after_seconds_actual": read_after,
        "peak_was_reset": was_reset,
    }


def _ratio(value: int | None, base: int | None) -> float | None:
    if value is None or base is None or base <= 0:
        return None
    return value / base


def memory(
    n: int,
    cap: int,
    kinds: Sequence[str],
    names: Sequence[str],
    after: float,
    progress: Progress,
) -> list[MemoryRow]:
    """Every named strategy's RSS growth for a burst of n tasks of each kind."""
    rows: list[MemoryRow] = []
    for kind in kinds:
        got: dict[str, dict[str, Any]] = {}
        for name in names:
            progress.step(f"memory {kind} n={n:,} cap={cap}: {name} (fresh process)")
            request = json.dumps(
                {"strategy": name, "kind": kind, "n": n, "cap": cap, "after": after}
            )
            got[name] = run_json(["-c", CHILD, request], PROCESS_LIMIT)
        base = got.get(BASELINE, {})
        for name in names:
            one = got[name]
            ran = int(one["tasks_run"])
            rows.append(
                MemoryRow(
                    kind=kind,
                    n=n,
                    cap=cap,
                    strategy=name,
                    strategy_cap=cap_of(name, cap),
                    blocked_at_peak=one["blocked_at_peak"],
                    tasks_run=ran,
                    complete=ran == n,
                    peak_rss_growth_bytes=int(one["peak_rss_growth_bytes"]),
                    rss_growth_after_bytes=one["rss_growth_after_bytes"],
                    after_seconds=after,
                    after_seconds_actual=float(one["after_seconds_actual"]),
                    peak_was_reset=bool(one["peak_was_reset"]),
                    peak_ratio_to_spawn=_ratio(
                        one["peak_rss_growth_bytes"], base.get("peak_rss_growth_bytes")
                    ),
                    after_ratio_to_spawn=_ratio(
                        one["rss_growth_after_bytes"], base.get("rss_growth_after_bytes")
                    ),
                )
            )
    return rows


def child(argv: list[str]) -> int:
    """The child process: ``measure`` what the JSON request in ``argv[0]`` asks; print JSON."""
    request = json.loads(argv[0])
    result = measure(
        str(request["strategy"]),
        str(request["kind"]),
        int(request["n"]),
        int(request["cap"]),
        float(request["after"]),
    )
    print(json.dumps(result))
    return 0
