"""The targets: ratios to gevent.spawn that ggopool sets itself, each read from one run.

A target is set for the full run's sizes (`FULL`). It gets a verdict only when the run
measured it at those sizes, with at least as many rounds: the ratios move with the burst
size and the number of rounds (a burst's fixed costs weigh more over fewer tasks; fewer
rounds leave more noise in a median), so ``--quick`` and runs with other sizes show the
measured value and the goal with no verdict, and say which sizes differ. The default run
(`HEADLINE`) has the full run's sizes and more rounds, on fewer workloads and strategies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ggopool.bench.memory import MemoryRow
from ggopool.bench.results import Results, Target
from ggopool.bench.rounds import ThroughputRow
from ggopool.bench.settings import FULL
from ggopool.bench.strategies import CappedPoolStrategy, GoStrategy

GO = GoStrategy.name
POOL = CappedPoolStrategy.name

#: The settings every burst-throughput target depends on.
BURST = ("tasks", "rounds", "warmup")

#: Settings where more than the full run's is as good: more rounds only narrow the noise.
AT_LEAST = ("rounds", "tcp_rounds")


def _n(n: int) -> str:
    return f"{n:,}"


def _throughput(
    results: Results, workload: str, strategy: str, cap: int | None = None
) -> list[ThroughputRow]:
    return [
        row
        for row in results["throughput"]
        if row["workload"] == workload
        and row["strategy"] == strategy
        and row["ratio_to_spawn"] is not None
        and (cap is None or row["cap"] == cap)
    ]


def _memory(results: Results, kind: str, strategy: str) -> MemoryRow | None:
    for row in results["memory"]:
        if row["kind"] == kind and row["strategy"] == strategy:
            return row
    return None


def _why_no_verdict(settings: dict[str, Any], depends_on: Sequence[str]) -> str | None:
    """Which of the settings a target depends on differ from the full run's; None if none."""
    full = asdict(FULL)
    differ = [
        f"--{name.replace('_', '-')} {_shown(settings[name])} (full run: {_shown(full[name])})"
        for name in depends_on
        if (settings[name] < full[name] if name in AT_LEAST else settings[name] != full[name])
    ]
    return "; ".join(differ) if differ else None


def _shown(value: object) -> str:
    """A setting as it would be typed on the command line."""
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def targets(results: Results) -> list[Target]:
    """Every target this run measured, each met, missed, or left without a verdict."""
    settings = results["settings"]
    found: list[Target] = []

    def add(
        id_: str,
        text: str,
        measured: float | None,
        at_most: bool,
        goal: float,
        goal_text: str,
        depends_on: Sequence[str],
        range_: list[float] | None = None,
    ) -> None:
        if measured is None:
            return  # not measured in this run (workload or gevent.spawn left out)
        why = _why_no_verdict(settings, depends_on)
        met = (measured <= goal if at_most else measured >= goal) if why is None else None
        found.append(
            Target(
                id=id_,
                target=text,
                measured=measured,
                range=range_,
                goal=goal_text,
                met=met,
                why_no_verdict=why,
            )
        )

    def lowest(rows: list[ThroughputRow]) -> ThroughputRow | None:
        """The row of ``rows`` with the lowest ratio (the yield workload has one per cap)."""
        rated = [r for r in rows if r["ratio_to_spawn"] is not None]
        return min(rated, key=lambda r: r["ratio_to_spawn"] or 0.0) if rated else None

    def add_throughput(
        id_: str,
        text: str,
        row: ThroughputRow | None,
        goal: float,
        depends_on: Sequence[str],
    ) -> None:
        if row is not None:
            add(
                id_,
                text,
                row["ratio_to_spawn"],
                False,
                goal,
                f">= {goal:g}x",
                depends_on,
                row.get("ratio_range"),
            )

    # The default pool, as shipped.
    n_mem = settings["memory_tasks"]
    noop_mem = _memory(results, "noop", GO)
    add(
        "go_noop_peak_rss",
        f"{GO}, burst of {_n(n_mem)} no-op tasks: peak RSS growth / gevent.spawn's",
        None if noop_mem is None else noop_mem["peak_ratio_to_spawn"],
        True,
        0.2,
        "<= 1/5 (0.2x)",
        ("memory_tasks",),
    )
    add_throughput(
        "go_noop_throughput",
        f"{GO}, burst of {_n(settings['tasks'])} no-op tasks: tasks/s / gevent.spawn's",
        lowest(_throughput(results, "noop", GO)),
        5.0,
        BURST,
    )
    yield_mem = _memory(results, "yield", GO)
    add(
        "go_yield_peak_rss",
        f"{GO}, burst of {_n(n_mem)} yield-once tasks: peak RSS growth / gevent.spawn's",
        None if yield_mem is None else yield_mem["peak_ratio_to_spawn"],
        True,
        1.0,
        "<= 1x",
        ("memory_tasks",),
    )
    add(
        "go_yield_rss_after",
        f"{GO}, burst of {_n(n_mem)} yield-once tasks: RSS growth "
        f"{settings['memory_after']:g} s after the last ran / gevent.spawn's",
        None if yield_mem is None else yield_mem["after_ratio_to_spawn"],
        True,
        2.0,
        "<= 2x",
        ("memory_tasks", "memory_after"),
    )
    add_throughput(
        "go_yield_throughput",
        f"{GO}, burst of {_n(settings['tasks'])} yield-once tasks: tasks/s / gevent.spawn's "
        "(the lowest over the yield rows)",
        lowest(_throughput(results, "yield", GO)),
        1.5,
        BURST,
    )
    add_throughput(
        "go_trickle_throughput",
        f"{GO}, trickle of {_n(settings['trickle_tasks'])} no-op tasks: tasks/s / gevent.spawn's",
        lowest(_throughput(results, "trickle", GO)),
        2.5,
        ("trickle_tasks", "rounds", "warmup"),
    )

    # Tasks that block, queued on a busy loop: the default pool and a capped one.
    for busy in results["busy"]:
        if busy["strategy"] not in (GO, POOL):
            continue
        who = GO if busy["strategy"] == GO else f"{POOL}({_n(busy['n'])})"
        key = "go" if busy["strategy"] == GO else "pool"
        for pct, goal in (("p50", 3.0), ("p99", 2.0)):
            add(
                f"{key}_busy_{pct}_start_latency",
                f"{who}, {_n(busy['n'])} tasks that block queued on a busy loop: {pct} "
                "submit-to-start delay / gevent.spawn's",
                busy[f"{pct}_ratio_to_spawn"],  # type: ignore[literal-required]
                True,
                goal,
                f"<= {goal:g}x",
                ("busy_tasks", "busy_greenlets", "rounds"),
                busy[f"{pct}_ratio_range"],  # type: ignore[literal-required]
            )

    # A capped pool.
    for workload, cap, goal, text in (
        ("noop", None, 20.0, "no-op"),
        ("yield", 10_000, 6.0, "yield-once"),
        ("yield", 100, 12.0, "yield-once"),
    ):
        rows = _throughput(results, workload, POOL, cap)
        if rows:
            row = rows[0]
            add_throughput(
                f"pool_{workload}_throughput" if cap is None else f"pool_yield_cap{cap}_throughput",
                f"{POOL}({_n(row['cap'])}), burst of {_n(row['n'])} {text} tasks: "
                "tasks/s / gevent.spawn's",
                row,
                goal,
                (*BURST, "cap") if cap is None else BURST,
            )
    tcp = _throughput(results, "tcp", POOL)
    if tcp:
        add_throughput(
            "pool_tcp_throughput",
            f"{POOL}({_n(tcp[0]['cap'])}), {_n(tcp[0]['n'])} TCP round trips: "
            "tasks/s / gevent.spawn's",
            tcp[0],
            1.0,
            ("tcp_tasks", "tcp_rounds", "warmup", "cap"),
        )
    blocked = _memory(results, "event", POOL)
    if blocked is not None:
        add(
            "pool_event_peak_rss",
            f"{POOL}({_n(blocked['cap'])}), burst of {_n(blocked['n'])} tasks blocked on an "
            "Event: peak RSS growth / gevent.spawn's",
            blocked["peak_ratio_to_spawn"],
            True,
            1 / 8,
            "<= 1/8 (0.125x)",
            ("memory_tasks", "memory_cap"),
        )
    costs = [row for row in results["scale"] if row["strategy"] == POOL]
    if len(costs) > 1:
        spread = max(r["us_per_task"] for r in costs) / min(r["us_per_task"] for r in costs)
        sizes = ", ".join(_n(r["n"]) for r in costs)
        add(
            "pool_scale_spread",
            f"{POOL}({_n(costs[0]['cap'])}), bursts of {sizes} no-op tasks: "
            "cost per task, highest / lowest",
            spread,
            True,
            1.5,
            "<= 1.5x",
            ("scale_sizes", "scale_per_point", "rounds", "cap"),
        )
    return found
