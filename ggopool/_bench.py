"""``python -m ggopool bench``: ggopool against gevent's ways to run tasks, in one run.

Every strategy runs the same counting task; the rounds are interleaved so that the ratios
to ``gevent.spawn`` hold on a noisy machine; the bench checks that every strategy ran
exactly the tasks it was given and exits 1 if one did not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from ggopool._bench_latency import latency
from ggopool._bench_memory import memory
from ggopool._bench_progress import Progress
from ggopool._bench_report import Results, command, complete, machine, render, targets
from ggopool._bench_rounds import scale, throughput
from ggopool._bench_strategies import STRATEGIES, GgopoolStrategy
from ggopool._bench_tcp import tcp
from ggopool._bench_trickle import trickle
from ggopool._bench_workloads import BODIES

#: Every workload, in the order they run and are reported.
WORKLOADS = ("noop", "yield", "gopool", "trickle", "tcp", "memory", "latency", "scale")

#: The strategies the scale workload compares: ggopool and the floor, whose cost per task
#: shows how much of a change between sizes is the machine rather than the pool.
SCALE_STRATEGIES = (GgopoolStrategy.name, "deque loop (floor)")


@dataclass(frozen=True)
class Settings:
    """What one bench run measures. `FULL` and `QUICK` are the defaults of the two modes."""

    tasks: int  # n for noop, yield and gopool
    cap: int  # the cap for noop, trickle, tcp, latency and scale
    yield_caps: tuple[int, ...]
    gopool_cap: int  # gopool's benchmark uses runtime.GOMAXPROCS(0): the CPU count
    rounds: int
    warmup: int  # tasks per strategy in the unreported warm-up round
    trickle_tasks: int  # fewer than a burst: each task costs a wake-up and a wait
    tcp_tasks: int
    tcp_rounds: int  # more than the others: a round trip's time varies more than a no-op's
    memory_tasks: int
    memory_cap: int
    latency_tasks: int
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
    latency_tasks=100_000,
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
    latency_tasks=20_000,
    scale_sizes=(1_000, 10_000, 100_000),
    scale_per_point=20_000,
)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated ints >= 1, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated ints >= 1, got {text!r}")
    return values


def _positive(text: str) -> int:
    (value,) = _ints(text)
    return value


def _choices(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [name for name in names if name not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated list of {', '.join(allowed)}; got {text!r}"
            )
        return names

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ggopool bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small counts: a run under 30 s")
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    p.add_argument(
        "-n", "--tasks", type=_positive, help="tasks per burst for noop, yield and gopool"
    )
    p.add_argument(
        "--cap", type=_positive, help="the cap for noop, trickle, tcp, latency and scale"
    )
    p.add_argument("--yield-caps", type=_ints, help="the caps the yield workload runs at")
    p.add_argument("--gopool-cap", type=_positive, help="the cap for the gopool workload")
    p.add_argument("--rounds", type=_positive, help="interleaved rounds")
    p.add_argument("--warmup", type=int, help="tasks per strategy in the warm-up round (0: none)")
    p.add_argument(
        "--trickle-tasks", type=_positive, help="tasks submitted one at a time (trickle)"
    )
    p.add_argument("--tcp-tasks", type=_positive, help="round trips per burst (tcp)")
    p.add_argument("--tcp-rounds", type=_positive, help="interleaved rounds (tcp)")
    p.add_argument("--memory-tasks", type=_positive, help="blocked tasks (memory)")
    p.add_argument("--memory-cap", type=_positive, help="the cap for the memory workload")
    p.add_argument("--latency-tasks", type=_positive, help="the burst size (latency)")
    p.add_argument("--scale-sizes", type=_ints, help="the burst sizes (scale)")
    p.add_argument("--scale-per-point", type=_positive, help="tasks timed per size (scale)")
    p.add_argument(
        "--workloads",
        type=_choices(WORKLOADS),
        help=f"which to run, comma-separated (default all: {','.join(WORKLOADS)})",
    )
    p.add_argument(
        "--strategies",
        type=_choices(tuple(STRATEGIES)),
        help=f"which to compare (default all: {','.join(STRATEGIES)})",
    )
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """The mode's defaults, with whatever was given on the command line instead."""
    base = QUICK if args.quick else FULL
    given = {
        name: value
        for name, value in vars(args).items()
        if value is not None and name in Settings.__dataclass_fields__
    }
    chosen = Settings(**{**asdict(base), **given})
    if chosen.warmup < 0:
        raise ValueError(f"--warmup must be an int >= 0, got {chosen.warmup}")
    return chosen


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
            total += k
        elif workload == "latency":
            total += s.rounds * k
        elif workload == "scale":
            total += s.rounds * len(s.scale_sizes) * len(_scale_strategies(s))
    return total


def _scale_strategies(s: Settings) -> list[str]:
    return [name for name in SCALE_STRATEGIES if name in s.strategies]


def run(s: Settings, argv: Sequence[str], progress: Progress) -> Results:
    """Run the workloads ``s`` asks for, in order, and gather the results."""
    names = list(s.strategies)
    results = Results(
        command=command(argv),
        machine=machine(),
        settings=asdict(s),
        throughput=[],
        memory=[],
        latency=[],
        scale=[],
        targets=[],
        complete=True,
    )
    for workload in s.workloads:
        if workload in BODIES:
            body = BODIES[workload]
            caps = {"noop": (s.cap,), "yield": s.yield_caps, "gopool": (s.gopool_cap,)}
            for cap in caps[workload]:
                results["throughput"] += throughput(
                    workload,
                    body,
                    s.tasks,
                    cap,
                    names,
                    s.rounds,
                    progress,
                    warmup=min(s.warmup, s.tasks),
                )
        elif workload == "trickle":
            results["throughput"] += trickle(
                s.trickle_tasks,
                s.cap,
                names,
                s.rounds,
                progress,
                warmup=min(s.warmup, s.trickle_tasks),
            )
        elif workload == "tcp":
            results["throughput"] += tcp(
                s.tcp_tasks,
                s.cap,
                names,
                s.tcp_rounds,
                progress,
                warmup=min(s.warmup, s.tcp_tasks),
            )
        elif workload == "memory":
            results["memory"] = memory(s.memory_tasks, s.memory_cap, names, progress)
        elif workload == "latency":
            results["latency"] = latency(s.latency_tasks, s.cap, names, s.rounds, progress)
        elif workload == "scale" and _scale_strategies(s):
            results["scale"] = scale(
                s.scale_sizes,
                s.cap,
                _scale_strategies(s),
                s.rounds,
                progress,
                tasks_per_point=s.scale_per_point,
            )
    results["targets"] = targets(results)
    results["complete"] = complete(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; print the tables (or JSON). Exit 1 if any strategy miscounted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    try:
        s = settings_from(args)
    except ValueError as exc:
        p.error(str(exc))
    progress = Progress(steps(s))
    try:
        results = run(s, argv, progress)
    finally:
        progress.close()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(render(results))
    return 0 if results["complete"] else 1
