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

from ggopool.bench.progress import Progress
from ggopool.bench.strategies import BASELINE, STRATEGIES, Strategy, cap_of
from ggopool.bench.workloads import Body, counted

#: One timed run: seconds, and how many tasks the counting task saw run.
Sample = tuple[float, int]

#: How one run of n tasks is submitted and timed: a burst (`timed_burst`) or a trickle.
Timed = Callable[[Strategy, int, Body | None], Sample]


class ThroughputRow(TypedDict):
    """One strategy on one workload: the JSON row and the table's line."""

    workload: str
    cap: int  # the cap this workload gives the capped strategies
    n: int
    strategy: str
    strategy_cap: int | None  # the cap this strategy ran under; None: it has none
    seconds: list[float]  # one per round
    tasks_run: list[int]  # one per round; each must equal n
    complete: bool  # every round ran exactly n tasks
    tasks_per_s: float  # n / median seconds
    ratio_to_spawn: float | None  # median over rounds of spawn's seconds / this one's
    ratio_range: list[float] | None  # the lowest and highest of those per-round ratios
    errors: int  # tasks whose work failed (the TCP workload); they are still counted


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
                strategy_cap=cap_of(name, cap),
                seconds=seconds,
                tasks_run=ran,
                complete=all(r == n for r in ran),
                tasks_per_s=n / median(seconds),
                ratio_to_spawn=None if base is None else median(ratios(base, samples[name])),
                ratio_range=None if base is None else _range(ratios(base, samples[name])),
                errors=failed[name],
            )
        )
    return rows


def ratios(base: list[Sample], other: list[Sample]) -> list[float]:
    """The baseline's seconds over the other's, round by round."""
    return [b / o for (b, _), (o, _) in zip(base, other, strict=True)]


def _range(values: list[float]) -> list[float]:
    return [min(values), max(values)]
