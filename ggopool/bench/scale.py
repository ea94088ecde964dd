"""The scale workload: the cost per no-op task as the burst grows from 1k to 1M tasks."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from statistics import median
from time import perf_counter
from typing import TypedDict

from ggopool.bench.progress import Progress
from ggopool.bench.rounds import Sample, interleave, timed_burst
from ggopool.bench.strategies import STRATEGIES, Strategy, cap_of


class ScaleRow(TypedDict):
    """One strategy at one burst size: the cost per task."""

    n: int
    cap: int
    bursts: int  # bursts of n timed together in each round
    strategy: str
    strategy_cap: int | None  # the cap this strategy ran under; None: it has none
    seconds: list[float]
    tasks_run: list[int]
    complete: bool
    us_per_task: float  # median over rounds
    gc_us_per_task: float  # of which in the cyclic GC's collections (median over rounds)
    ratio_to_best: float  # this size's cost / the strategy's cheapest size


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
                    cap=cap,
                    bursts=bursts[size],
                    strategy=strategy.name,
                    strategy_cap=cap_of(strategy.name, cap),
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
