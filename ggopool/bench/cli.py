"""python -m ggopool bench: ggopool against gevent's ways to run tasks, in one run.

Every strategy runs the same counting task; the rounds are interleaved so that the ratios
to gevent.spawn hold on a noisy machine; the bench checks that every strategy ran
exactly the tasks it was given and exits 1 if one did not. Progress goes to stderr.

With no options it runs the headline ({headline}): ggopool.go
against gevent.spawn on the noop, yield, trickle and memory workloads, at the full run's
sizes, in {rounds} rounds, with a verdict on each of ggopool.go's targets. --full runs every
workload and strategy below, with a verdict on every target ({full}). --quick is
a smaller run of everything, with no verdicts ({quick}): the targets are set for
the full run's sizes. --plot FILE also draws the ratios to gevent.spawn and the memory
as a chart.

strategies:
  ggopool.go        ggopool.go(fn): the default pool as it ships (no cap)
  ggopool.spawn     ggopool.spawn(fn), then gevent.joinall: a Task handle per task
  ggopool.Pool      pool.go(fn) on a ggopool pool of the workload's cap
  gevent.spawn      gevent.spawn(fn), then gevent.joinall: every ratio's baseline
  gevent.spawn_raw  gevent.spawn_raw(fn): a raw greenlet per task
  gevent.pool.Pool  gevent.pool.Pool(cap).spawn(fn), then join(); blocks when full
  deque-floor       deque.popleft()() in the caller: the cost of the task alone

workloads:
  noop      bursts of the counting task alone
  yield     bursts of tasks that call gevent.sleep(0) once, at each of --yield-caps
  gopool    bursts of gopool's benchmark task (a 100-deep recursion)
  trickle   one task at a time, each submitted once the one before has run
  tcp       bursts of round trips to a loopback server, in a monkey-patched process
  memory    RSS growth of a burst, at its peak and a while after, per strategy and
            kind of task (noop, yield, event), each in a fresh process
  latency   submit-to-start delay of each task of a burst (p50, p99)
  busy      submit-to-start delay (p50, p99) of tasks that block, queued 50 per turn of a
            loop kept busy by --busy-greenlets greenlets, on ggopool.go, ggopool.Pool,
            gevent.spawn and gevent.pool.Pool (whatever --strategies says; the capped
            ones with a cap of --busy-tasks)
  scale     cost per no-op task as the burst grows (ggopool.Pool and deque-floor)
  server    a pywsgi server in one process, a load generator in another: requests/s,
            server CPU per request and peak RSS for spawn='default', gevent.pool.Pool(1000)
            and a ggopool pool of 1000, one request per connection and keep-alive;
            5 x --tcp-tasks requests per run, --rounds rounds
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict

from ggopool.bench.busy import busy
from ggopool.bench.latency import latency
from ggopool.bench.memory import KINDS, memory
from ggopool.bench.progress import Progress
from ggopool.bench.report import render
from ggopool.bench.results import Results, command, complete, machine
from ggopool.bench.rounds import throughput
from ggopool.bench.scale import scale
from ggopool.bench.server import server
from ggopool.bench.settings import (
    FULL,
    HEADLINE,
    QUICK,
    WORKLOADS,
    Settings,
    scale_strategies,
    steps,
)
from ggopool.bench.strategies import STRATEGIES
from ggopool.bench.targets import targets
from ggopool.bench.tcp import tcp
from ggopool.bench.trickle import trickle
from ggopool.bench.workloads import BODIES

#: How long the three modes take on the 2-core machine docs/benchmark.md describes.
HEADLINE_DURATION = "2-3 min on a 2-core machine"
FULL_DURATION = "7-16 min"
QUICK_DURATION = "1-2.5 min"

#: The chart formats --plot writes, by the file name's suffix.
PLOT_SUFFIXES = (".svg", ".png")


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds >= 0, got {text!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
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


def _shown(value: object) -> str:
    """A default as it would be typed on the command line."""
    if isinstance(value, tuple):
        return ",".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default(field: str) -> str:
    """The default of a setting in the three modes, for its help line."""
    default = getattr(HEADLINE, field)
    others = [
        f"with {flag}: {_shown(getattr(mode, field))}"
        for flag, mode in (("--full", FULL), ("--quick", QUICK))
        if getattr(mode, field) != default
    ]
    return f"(default: {'; '.join([_shown(default), *others])})"


def _plot_file(text: str) -> str:
    if not text.lower().endswith(PLOT_SUFFIXES):
        raise argparse.ArgumentTypeError(
            f"must be a file name ending in .svg or .png, got {text!r}"
        )
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ggopool bench",
        description=(__doc__ or "").format(
            rounds=HEADLINE.rounds,
            headline=HEADLINE_DURATION,
            full=FULL_DURATION,
            quick=QUICK_DURATION,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--full",
        action="store_true",
        help="every workload and strategy, with verdicts on every target (default: off)",
    )
    mode.add_argument(
        "--quick",
        action="store_true",
        help="every workload and strategy at smaller sizes, no target verdicts (default: off)",
    )
    p.add_argument(
        "--json", action="store_true", help="print JSON instead of the tables (default: off)"
    )
    p.add_argument(
        "--plot",
        type=_plot_file,
        metavar="FILE",
        help="also draw the run as a chart, SVG or PNG by FILE's suffix; needs matplotlib, "
        "the plot extra (default: none)",
    )

    def option(flag: str, field: str, parse: Callable[[str], object], what: str) -> None:
        p.add_argument(flag, type=parse, dest=field, help=f"{what} {_default(field)}")

    p.add_argument(
        "-n",
        "--tasks",
        type=_positive,
        help=f"tasks per burst for noop, yield and gopool {_default('tasks')}",
    )
    option(
        "--cap", "cap", _positive, "the capped strategies' cap (noop, trickle, tcp, latency, scale)"
    )
    option("--yield-caps", "yield_caps", _ints, "the caps the yield workload runs at")
    p.add_argument(
        "--gopool-cap",
        type=_positive,
        help=f"the cap for gopool (default: the CPU count, {FULL.gopool_cap} here)",
    )
    option("--rounds", "rounds", _positive, "interleaved rounds")
    p.add_argument(
        "--warmup",
        type=int,
        help=f"tasks per strategy in the warm-up round, 0 for none {_default('warmup')}",
    )
    option("--trickle-tasks", "trickle_tasks", _positive, "tasks submitted one at a time")
    option("--tcp-tasks", "tcp_tasks", _positive, "round trips per burst (tcp)")
    option("--tcp-rounds", "tcp_rounds", _positive, "interleaved rounds (tcp)")
    option("--memory-tasks", "memory_tasks", _positive, "tasks per burst (memory)")
    option("--memory-cap", "memory_cap", _positive, "the capped strategies' cap (memory)")
    option(
        "--memory-kinds",
        "memory_kinds",
        _choices(KINDS),
        "the kinds of task the memory workload runs",
    )
    option(
        "--memory-after",
        "memory_after",
        _seconds,
        "seconds after the last task ran when the memory workload reads the RSS again",
    )
    option("--latency-tasks", "latency_tasks", _positive, "the burst size (latency)")
    option("--busy-tasks", "busy_tasks", _positive, "tasks per run, and the cap (busy)")
    option("--busy-greenlets", "busy_greenlets", _positive, "greenlets that keep the loop busy")
    option("--scale-sizes", "scale_sizes", _ints, "the burst sizes (scale)")
    option("--scale-per-point", "scale_per_point", _positive, "tasks timed per size (scale)")
    p.add_argument(
        "--workloads",
        type=_choices(WORKLOADS),
        help=f"which to run, comma-separated {_default('workloads')}",
    )
    p.add_argument(
        "--strategies",
        type=_choices(tuple(STRATEGIES)),
        help=f"which to compare, comma-separated {_default('strategies')}",
    )
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """The mode's defaults, with whatever was given on the command line instead."""
    base = QUICK if args.quick else FULL if args.full else HEADLINE
    given = {
        name: value
        for name, value in vars(args).items()
        if value is not None and name in Settings.__dataclass_fields__
    }
    chosen = Settings(**{**asdict(base), **given})
    if chosen.warmup < 0:
        raise ValueError(f"--warmup must be an int >= 0, got {chosen.warmup}")
    return chosen


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
        busy=[],
        scale=[],
        server=[],
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
            results["memory"] = memory(
                s.memory_tasks, s.memory_cap, s.memory_kinds, names, s.memory_after, progress
            )
        elif workload == "latency":
            results["latency"] = latency(s.latency_tasks, s.cap, names, s.rounds, progress)
        elif workload == "busy":
            results["busy"] = busy(s.busy_tasks, s.busy_greenlets, s.rounds, progress)
        elif workload == "scale" and scale_strategies(s):
            results["scale"] = scale(
                s.scale_sizes,
                s.cap,
                scale_strategies(s),
                s.rounds,
                progress,
                tasks_per_point=s.scale_per_point,
            )
        elif workload == "server":
            results["server"] = server(5 * s.tcp_tasks, s.rounds, progress)
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
    if args.plot is not None:
        # Checked before the run, not after minutes of it.
        from ggopool.bench.plot import PlotUnavailable, check

        try:
            check()
        except PlotUnavailable as exc:
            p.error(str(exc))
    progress = Progress(steps(s))
    try:
        results = run(s, argv, progress)
    finally:
        progress.close()
    if args.plot is not None:
        from ggopool.bench.plot import plot

        plot(results, args.plot)
        print(f"chart: {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(render(results))
        if not (args.full or args.quick):
            print(
                "\nThe headline run: ggopool.go against gevent.spawn. --full runs every workload "
                f"and strategy ({FULL_DURATION})."
            )
    return 0 if results["complete"] else 1
