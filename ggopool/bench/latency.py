"""Start latency: how long a task waits between being submitted and starting, in a burst."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import median
from typing import TypedDict

from gevent.event import Event

from ggopool.bench.progress import Progress
from ggopool.bench.rounds import Sample, interleave
from ggopool.bench.strategies import STRATEGIES, Strategy, cap_of
from ggopool.bench.workloads import stamped


class LatencyRow(TypedDict):
    """One strategy's start latency under a burst of n tasks."""

    n: int
    cap: int  # the cap this workload gives the capped strategies
    strategy: str
    strategy_cap: int | None  # the cap this strategy ran under; None: it has none
    tasks_run: list[int]  # one per round
    complete: bool
    p50_us: float  # median over rounds of each round's 50th percentile
    p99_us: float  # median over rounds of each round's 99th percentile


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending list."""
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency(
    n: int, cap: int, names: Sequence[str], rounds: int, progress: Progress
) -> list[LatencyRow]:
    """Submit a burst of n tasks on each strategy; percentiles of submit-to-start delays.

    The clock is read just before each submit call and first thing in the task. In a
    burst the delay is mostly the queue ahead of the task: the p50 is about half the
    time the whole burst takes to start, and the p99 nearly all of it.
    """
    strategies = [STRATEGIES[name](cap) for name in names]
    percentiles: dict[str, list[tuple[float, float]]] = {name: [] for name in names}

    def measure(strategy: Strategy) -> Sample:
        stamps = [0.0] * n
        starts = [0.0] * n
        done = Event()
        task = stamped(n, done, starts)
        strategy.burst_stamped(n, task.task, done, stamps)
        delays = sorted(b - a for a, b in zip(stamps, starts, strict=True))
        percentiles[strategy.name].append((percentile(delays, 0.50), percentile(delays, 0.99)))
        return 0.0, task.ran()

    entries: list[tuple[str, Callable[[], Sample]]] = [
        (s.name, lambda s=s: measure(s))  # type: ignore[misc]
        for s in strategies
    ]
    try:
        samples = interleave(entries, rounds, progress, f"latency cap={cap} burst={n:,}")
    finally:
        for strategy in strategies:
            strategy.close()
    rows: list[LatencyRow] = []
    for name in names:
        ran = [r for _, r in samples[name]]
        rows.append(
            LatencyRow(
                n=n,
                cap=cap,
                strategy=name,
                strategy_cap=cap_of(name, cap),
                tasks_run=ran,
                complete=all(r == n for r in ran),
                p50_us=median(p50 for p50, _ in percentiles[name]) * 1e6,
                p99_us=median(p99 for _, p99 in percentiles[name]) * 1e6,
            )
        )
    return rows
