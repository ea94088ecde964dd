"""Interleaved rounds: each strategy runs once per round, so a noisy machine slows all alike.

A ratio is taken between two runs of the same round and the report gives the median over
rounds, so a burst of load from a neighbour on a shared machine moves one round's
numbers, not the comparison.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from statistics import median
from time import perf_counter
from typing import TypedDict

from gevent.event import Event

from ggopool._bench_progress import Progress
from ggopool._bench_strategies import BASELINE, STRATEGIES, Strategy
from ggopool._bench_workloads import Body, counted

#: One timed run: seconds, and how many tasks the counting task saw run.
Sample = tuple[float, int]

#: How one run of n tasks is submitted and timed: a burst (`timed_burst`) or a trickle.
Timed = Callable[[Strategy, int, Body | None], Sample]


class ThroughputRow(TypedDict):
    """One strategy on one workload: the JSON row and the table's line."""

    workload: str
    cap: int
    n: int
    strategy: str
    seconds: list[float]  # one per round
    tasks_run: list[int]  # one per round; each must equal n
    complete: bool  # every round ran exactly n tasks
    tasks_per_s: float  # n / median seconds
    ratio_to_spawn: float | None  # median over rounds of spawn's seconds / this one's
    errors: int  # tasks whose work failed (the TCP workload); they are still counted


class ScaleRow(TypedDict):
    """One strategy at one burst size: the cost per task."""

    n: int
    bursts: int  # bursts of n timed together in each round
    strategy: str
    seconds: list[float]
    tasks_run: list[int]
    complete: bool
    us_per_task: float  # median over rounds
    gc_us_per_task: float  # of which in the cyclic GC's collections (median over rounds)
    ratio_to_best: float  # this size's cost / the strategy's cheapest size


def interleave(
    entries: Sequence[tuple[str, Callable[[], Sample]]],
    rounds: int,
    progress: Progress,
    label: str,
) -> dict[str, list[Sample]]:
    """Run every entry once per round and collect its samples by name."""
    samples: dict[str, list[Sample]] = {name: [] for name, _ in entries}
    for r in range(rounds):
        # Each round starts at a different entry, so that none always runs first.
        for j in range(len(entries)):
            name, measure = entries[(r + j) % len(entries)]
            progress.step(f"{label} round {r + 1}/{rounds}: {name}")
            # Garbage left by the previous run is collected now, not charged to this one.
            gc.collect()
            samples[name].append(measure())
    return samples


def timed_burst(strategy: Strategy, n: int, body: Body | None) -> Sample:
    """Run one burst of n counting tasks on ``strategy``; its seconds and its count."""
    done = Event()
    task = counted(n, done, body)
    start = perf_counter()
    strategy.burst(n, task.task, done)
    seconds = perf_counter() - start
    return seconds, task.ran()


def throughput(
    workload: str,
    body: Body | None,
    n: int,
    cap: int,
    names: Sequence[str],
    rounds: int,
    progress: Progress,
    *,
    warmup: int,
    errors: Callable[[], int] = lambda: 0,
    timed: Timed = timed_burst,
) -> list[ThroughputRow]:
    """Runs of n tasks on each named strategy, in interleaved rounds after a warm-up.

    A run is a burst unless ``timed`` says otherwise (the trickle workload's).

    ``errors`` reads a running count of tasks whose work failed (the TCP workload's);
    each row gets the failures seen while its strategy ran, warm-up included.

    The warm-up round (runs of ``warmup`` tasks, not reported) starts the pools' workers
    and grows the allocator's arenas, as an application's first requests would.
    """
    strategies = [STRATEGIES[name](cap) for name in names]
    label = f"{workload} cap={cap} n={n:,}"
    failed = dict.fromkeys(names, 0)

    def entries(k: int) -> list[tuple[str, Callable[[], Sample]]]:
        def measure(strategy: Strategy) -> Sample:
            before = errors()
            sample = timed(strategy, k, body)
            failed[strategy.name] += errors() - before
            return sample

        return [(s.name, lambda s=s: measure(s)) for s in strategies]  # type: ignore[misc]

    try:
        if warmup:
            interleave(entries(warmup), 1, progress, label + " warm-up")
        samples = interleave(entries(n), rounds, progress, label)
    finally:
        for strategy in strategies:
            strategy.close()
    base = samples.get(BASELINE)
    rows: list[ThroughputRow] = []
    for name in names:
        seconds = [s for s, _ in samples[name]]
        ran = [r for _, r in samples[name]]
        rows.append(
            ThroughputRow(
                workload=workload,
                cap=cap,
                n=n,
                strategy=name,
                seconds=seconds,
                tasks_run=ran,
                complete=all(r == n for r in ran),
                tasks_per_s=n / median(seconds),
                ratio_to_spawn=None if base is None else _median_ratio(base, samples[name]),
                errors=failed[name],
            )
        )
    return rows


def _median_ratio(base: list[Sample], other: list[Sample]) -> float:
    """The median over rounds of the baseline's seconds over the other's, round by round."""
    return median(b / o for (b, _), (o, _) in zip(base, other, strict=True))


def scale(
    sizes: Sequence[int],
    cap: int,
    names: Sequence[str],
    rounds: int,
    progress: Progress,
    *,
    tasks_per_point: int,
) -> list[ScaleRow]:
    """The cost per no-op task at each burst size, for each named strategy.

    A small size is timed as several bursts back to back (``tasks_per_point`` tasks in
    all), so that each sample is long enough for the clock and short enough for the noise.
    """
    strategies = [STRATEGIES[name](cap) for name in names]
    entries: list[tuple[str, Callable[[], Sample]]] = []
    bursts = {size: max(1, tasks_per_point // size) for size in sizes}
    in_gc: dict[str, list[float]] = {}
    for size in sizes:
        for strategy in strategies:
            key = f"{strategy.name} n={size:,}"
            in_gc[key] = []
            entries.append(
                (
                    key,
                    lambda s=strategy, size=size, key=key: _repeated(  # type: ignore[misc]
                        s, size, bursts[size], in_gc[key]
                    ),
                )
            )
    try:
        timed_burst(strategies[0], min(sizes), None)  # start the pool's workers
        samples = interleave(entries, rounds, progress, f"scale cap={cap}")
    finally:
        for strategy in strategies:
            strategy.close()
    rows: list[ScaleRow] = []
    for strategy in strategies:
        mine: list[ScaleRow] = []
        for size in sizes:
            key = f"{strategy.name} n={size:,}"
            got = samples[key]
            seconds = [s for s, _ in got]
            ran = [r for _, r in got]
            total = size * bursts[size]
            mine.append(
                ScaleRow(
                    n=size,
                    bursts=bursts[size],
                    strategy=strategy.name,
                    seconds=seconds,
                    tasks_run=ran,
                    complete=all(r == total for r in ran),
                    us_per_task=median(seconds) / total * 1e6,
                    gc_us_per_task=median(in_gc[key]) / total * 1e6,
                    ratio_to_best=0.0,
                )
            )
        best = min(row["us_per_task"] for row in mine)
        for row in mine:
            row["ratio_to_best"] = row["us_per_task"] / best
        rows.extend(mine)
    return rows


def _repeated(strategy: Strategy, n: int, bursts: int, in_gc: list[float]) -> Sample:
    """``bursts`` bursts of n no-op tasks back to back; notes the seconds spent in the GC."""
    gc_seconds = 0.0
    started = 0.0

    def clock(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_seconds, started
        if phase == "start":
            started = perf_counter()
        else:
            gc_seconds += perf_counter() - started

    seconds = 0.0
    ran = 0
    # The GC's share is what makes a large burst cost more per task (each full collection
    # walks every queued task), so the table shows it beside the cost.
    gc.callbacks.append(clock)
    try:
        for _ in range(bursts):
            s, r = timed_burst(strategy, n, None)
            seconds += s
            ran += r
    finally:
        gc.callbacks.remove(clock)
    in_gc.append(gc_seconds)
    return seconds, ran
