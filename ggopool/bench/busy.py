"""Start latency on a busy loop: tasks that block, queued by a server that is busy.

What a web app sees: its event loop is busy with the server's connections (here, greenlets
that each wake every millisecond), and its requests queue background tasks that block (a
webhook, a write) a few at a time between turns of the loop. How long does a task wait
between its submit call and its first line? ``gevent.spawn`` queues one start callback per
greenlet; a pool has to give each task a worker at the same pace, however busy the loop.

Every strategy runs in the same busy loop, in interleaved rounds; the capped strategies get
a cap as large as the burst, so that no task waits for a running one to end and what is
measured is the start alone. The ratios to ``gevent.spawn`` are taken per round, and the
report gives their median.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from statistics import median
from time import perf_counter
from typing import TypedDict

import gevent
from gevent.event import Event

from ggopool.bench.latency import percentile
from ggopool.bench.progress import Progress
from ggopool.bench.rounds import Sample, interleave
from ggopool.bench.strategies import (
    BASELINE,
    STRATEGIES,
    CappedPoolStrategy,
    GeventPoolStrategy,
    GoStrategy,
    Strategy,
    cap_of,
)

#: The strategies this workload compares, whatever the run's --strategies: ggopool.go on
#: the default pool, a capped ggopool pool, gevent.spawn and gevent.pool.Pool.
BUSY_STRATEGIES = (GoStrategy.name, CappedPoolStrategy.name, BASELINE, GeventPoolStrategy.name)

#: Tasks queued between two turns of the loop (each then ``gevent.sleep(0)``).
PER_TURN = 50
#: How long each task blocks once started (it stands for a network call).
TASK_SECONDS = 0.5
#: How often each of the busy greenlets wakes.
TICK = 0.001


class BusyRow(TypedDict):
    """One strategy's submit-to-start delays on a busy loop."""

    n: int
    greenlets: int  # the busy greenlets beside the tasks
    strategy: str
    strategy_cap: int | None  # the cap this strategy ran under; None: it has none
    tasks_run: list[int]  # one per round
    complete: bool
    p50_us: float  # median over rounds of each round's 50th percentile
    p99_us: float  # median over rounds of each round's 99th percentile
    p50_ratio_to_spawn: float | None  # median over rounds of this p50 / gevent.spawn's
    p99_ratio_to_spawn: float | None
    p50_ratio_range: list[float] | None  # the lowest and highest round's ratio
    p99_ratio_range: list[float] | None


@contextmanager
def busy_loop(greenlets: int) -> Iterator[None]:
    """``greenlets`` greenlets that each wake every `TICK` until the block ends."""
    stop = False

    def tick() -> None:
        while not stop:
            gevent.sleep(TICK)

    ticking = [gevent.spawn(tick) for _ in range(greenlets)]
    gevent.sleep(0.05)  # every one of them in its loop
    try:
        yield
    finally:
        stop = True
        gevent.joinall(ticking)


def busy(n: int, greenlets: int, rounds: int, progress: Progress) -> list[BusyRow]:
    """On a loop kept busy by ``greenlets`` greenlets, queue n tasks that block on each
    strategy, `PER_TURN` per turn of the loop; percentiles of submit-to-start delays."""
    names = BUSY_STRATEGIES
    strategies: list[Strategy] = [STRATEGIES[name](n) for name in names]
    by_round: dict[str, list[tuple[float, float]]] = {name: [] for name in names}

    def measure(strategy: Strategy) -> Sample:
        stamps = [0.0] * n
        starts = [0.0] * n
        done = Event()
        ran = 0

        def task(i: int) -> None:
            nonlocal ran
            starts[i] = perf_counter()
            gevent.sleep(TASK_SECONDS)
            ran += 1
            if ran == n:
                done.set()

        submit = strategy.submit
        for i in range(n):
            stamps[i] = perf_counter()
            submit(task, i)
            if i % PER_TURN == PER_TURN - 1:
                gevent.sleep(0)
        strategy.finish(done)
        delays = sorted(b - a for a, b in zip(stamps, starts, strict=True) if b)
        if delays:
            by_round[strategy.name].append((percentile(delays, 0.50), percentile(delays, 0.99)))
        return 0.0, ran

    entries: list[tuple[str, Callable[[], Sample]]] = [
        (s.name, lambda s=s: measure(s))  # type: ignore[misc]
        for s in strategies
    ]
    try:
        with busy_loop(greenlets):
            samples = interleave(
                entries, rounds, progress, f"busy loop ({greenlets:,} greenlets) n={n:,}"
            )
    finally:
        for strategy in strategies:
            strategy.close()
    return [_row(name, n, greenlets, samples, by_round) for name in names]


def _row(
    name: str,
    n: int,
    greenlets: int,
    samples: dict[str, list[Sample]],
    by_round: dict[str, list[tuple[float, float]]],
) -> BusyRow:
    ran = [r for _, r in samples[name]]
    mine, spawn = by_round[name], by_round[BASELINE]
    ratios: list[list[float]] = [[], []]
    if len(mine) == len(spawn):
        for (p50, p99), (s50, s99) in zip(mine, spawn, strict=True):
            ratios[0].append(p50 / s50)
            ratios[1].append(p99 / s99)
    return BusyRow(
        n=n,
        greenlets=greenlets,
        strategy=name,
        strategy_cap=cap_of(name, n),
        tasks_run=ran,
        complete=all(r == n for r in ran) and len(mine) == len(ran),
        p50_us=median(p50 for p50, _ in mine) * 1e6 if mine else 0.0,
        p99_us=median(p99 for _, p99 in mine) * 1e6 if mine else 0.0,
        p50_ratio_to_spawn=median(ratios[0]) if ratios[0] else None,
        p99_ratio_to_spawn=median(ratios[1]) if ratios[1] else None,
        p50_ratio_range=[min(ratios[0]), max(ratios[0])] if ratios[0] else None,
        p99_ratio_range=[min(ratios[1]), max(ratios[1])] if ratios[1] else None,
    )


def steps(rounds: int) -> int:
    """How many progress steps the workload takes."""
    return rounds * len(BUSY_STRATEGIES)
