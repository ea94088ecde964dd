"""What one bench run measures: the workloads, the strategies and every size, in three modes."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from ggopool.bench.busy import steps as busy_steps
from ggopool.bench.memory import KINDS
from ggopool.bench.server import steps as server_steps
from ggopool.bench.strategies import (
    STRATEGIES,
    CappedPoolStrategy,
    FloorStrategy,
    GoStrategy,
    SpawnStrategy,
)

#: Every workload, in the order they run and are reported.
WORKLOADS = (
    "noop",
    "yield",
    "gopool",
    "trickle",
    "tcp",
    "memory",
    "latency",
    "busy",
    "scale",
    "server",
)

#: The strategies the scale workload compares: the capped pool and the floor, whose cost per
#: task shows how much of a change between sizes is the machine rather than the pool.
SCALE_STRATEGIES = (CappedPoolStrategy.name, FloorStrategy.name)


@dataclass(frozen=True)
class Settings:
    """What one bench run measures. `HEADLINE`, `FULL` and `QUICK` are the three modes."""

    tasks: int  # n for noop, yield and gopool
    cap: int  # the capped strategies' cap for noop, trickle, tcp, latency and scale
    yield_caps: tuple[int, ...]
    gopool_cap: int  # gopool's benchmark uses runtime.GOMAXPROCS(0): the CPU count
    rounds: int
    warmup: int  # tasks per strategy in the unreported warm-up round
    trickle_tasks: int  # fewer than a burst: each task costs a wake-up and a wait
    tcp_tasks: int
    tcp_rounds: int  # more than the others: a round trip's time varies more than a no-op's
    memory_tasks: int
    memory_cap: int
    memory_kinds: tuple[str, ...]
    memory_after: float  # seconds after the last task ran when the second RSS is read
    latency_tasks: int
    busy_tasks: int  # the busy workload's tasks, and the cap of its capped strategies
    busy_greenlets: int  # the greenlets that keep its loop busy
    scale_sizes: tuple[int, ...]
    scale_per_point: int  # tasks timed per scale point (small sizes repeat their burst)
    workloads: tuple[str, ...] = WORKLOADS
    strategies: tuple[str, ...] = tuple(STRATEGIES)


FULL = Settings(
    tasks=100_000,
    cap=100,
    yield_caps=(10_000, 100),
    gopool_cap=os.cpu_count() or 1,
    rounds=5,
    warmup=10_000,
    trickle_tasks=20_000,
    tcp_tasks=1_000,
    tcp_rounds=9,
    memory_tasks=100_000,
    memory_cap=1_000,
    memory_kinds=KINDS,
    memory_after=1.0,
    latency_tasks=100_000,
    busy_tasks=5_000,
    busy_greenlets=2_000,
    scale_sizes=(1_000, 10_000, 100_000, 1_000_000),
    scale_per_point=100_000,
)

QUICK = Settings(
    tasks=10_000,
    cap=100,
    yield_caps=(10_000, 100),
    gopool_cap=os.cpu_count() or 1,
    rounds=3,
    warmup=2_000,
    trickle_tasks=4_000,
    tcp_tasks=200,
    tcp_rounds=3,
    memory_tasks=20_000,
    memory_cap=1_000,
    memory_kinds=KINDS,
    memory_after=1.0,
    latency_tasks=20_000,
    busy_tasks=2_000,
    busy_greenlets=1_000,
    scale_sizes=(1_000, 10_000, 100_000),
    scale_per_point=20_000,
)


#: The default run: the default pool against gevent.spawn at the full run's sizes, on the
#: workloads its targets are read from, so every one of them gets a verdict in a few minutes.
#: More rounds than the full run, since it has fewer strategies to interleave: the range of
#: the per-round ratios shows how much the machine moved them.
HEADLINE = replace(
    FULL,
    rounds=9,
    yield_caps=(10_000,),
    memory_kinds=("noop", "yield"),
    workloads=("noop", "yield", "trickle", "memory", "busy"),
    strategies=(GoStrategy.name, SpawnStrategy.name),
)


def scale_strategies(s: Settings) -> list[str]:
    """The strategies of ``s`` that the scale workload runs."""
    return [name for name in SCALE_STRATEGIES if name in s.strategies]


def steps(s: Settings) -> int:
    """How many progress steps the run has, for the progress line's total."""
    k = len(s.strategies)
    per_burst_workload = (s.rounds + (1 if s.warmup else 0)) * k
    total = 0
    for workload in s.workloads:
        if workload == "yield":
            total += per_burst_workload * len(s.yield_caps)
        elif workload in ("noop", "gopool", "trickle"):
            total += per_burst_workload
        elif workload == "tcp":
            total += (s.tcp_rounds + (1 if s.warmup else 0)) * k
        elif workload == "memory":
            total += k * len(s.memory_kinds)
        elif workload == "latency":
            total += s.rounds * k
        elif workload == "busy":
            total += busy_steps(s.rounds)
        elif workload == "scale":
            total += s.rounds * len(s.scale_sizes) * len(scale_strategies(s))
        elif workload == "server":
            total += server_steps(s.rounds)
    return total
