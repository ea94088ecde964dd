"""The bench's output: the machine, the tables, the issue's targets, and the JSON document."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any, TypedDict

import gevent
import greenlet

from ggopool._bench_latency import LatencyRow
from ggopool._bench_memory import MemoryRow
from ggopool._bench_rounds import ScaleRow, ThroughputRow


class Target(TypedDict):
    """One of issue 3's targets, read from this run."""

    target: str
    measured: float
    goal: str
    met: bool


class Results(TypedDict):
    """The whole run: what ``--json`` prints."""

    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    throughput: list[ThroughputRow]
    memory: list[MemoryRow]
    latency: list[LatencyRow]
    scale: list[ScaleRow]
    targets: list[Target]
    complete: bool  # every strategy ran exactly the tasks it was given, in every run


#: What the trickle rows show, printed under the throughput table when it has them.
TRICKLE_NOTE = (
    "trickle: each task is submitted once the one before has run, as a web app calls go()\n"
    "once per request, so every ggopool task wakes a parked worker: the cost of a wake-up,\n"
    "where a burst keeps the workers awake. The floor calls the task directly."
)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: platform's answer stands
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "gevent": gevent.__version__,
        "greenlet": greenlet.__version__,
        "platform": platform.platform(),
    }


def complete(results: Results) -> bool:
    """Did every run of every strategy count exactly the tasks it was given?"""
    rows: list[Any] = [
        *results["throughput"],
        *results["memory"],
        *results["latency"],
        *results["scale"],
    ]
    return all(row["complete"] for row in rows)


def targets(results: Results) -> list[Target]:
    """Issue 3's targets that this run measured, each met or missed."""
    found: list[Target] = []

    def ggopool_ratio(workload: str, cap: int | None = None) -> ThroughputRow | None:
        for row in results["throughput"]:
            if (
                row["workload"] == workload
                and row["strategy"] == "ggopool"
                and row["ratio_to_spawn"] is not None
                and (cap is None or row["cap"] == cap)
            ):
                return row
        return None

    for workload, cap, goal, text in (
        ("noop", None, 20.0, "no-op"),
        ("yield", 10_000, 6.0, "yield once"),
        ("yield", 100, 12.0, "yield once"),
        ("tcp", None, 1.0, "TCP round trip"),
    ):
        row = ggopool_ratio(workload, cap)
        if row is not None and row["ratio_to_spawn"] is not None:
            found.append(
                Target(
                    target=f"{text}, cap {row['cap']:,}: ggopool tasks/s vs gevent.spawn",
                    measured=row["ratio_to_spawn"],
                    goal=f">= {goal:g}x",
                    met=row["ratio_to_spawn"] >= goal,
                )
            )
    for mem in results["memory"]:
        if mem["strategy"] == "ggopool" and mem["ratio_to_spawn"] is not None:
            found.append(
                Target(
                    target=(
                        f"memory, {mem['n']:,} blocked tasks, cap {mem['cap']:,}: "
                        "ggopool peak RSS growth vs gevent.spawn"
                    ),
                    measured=mem["ratio_to_spawn"],
                    goal="<= 1/8 (0.125x)",
                    met=mem["ratio_to_spawn"] <= 1 / 8,
                )
            )
    costs = [row for row in results["scale"] if row["strategy"] == "ggopool"]
    if len(costs) > 1:
        spread = max(r["us_per_task"] for r in costs) / min(r["us_per_task"] for r in costs)
        sizes = ", ".join(_count(r["n"]) for r in costs)
        found.append(
            Target(
                target=f"scale, {sizes} tasks: ggopool cost per task, highest / lowest",
                measured=spread,
                goal="<= 1.5x",
                met=spread <= 1.5,
            )
        )
    return found


# -- the tables -------------------------------------------------------------------------


def _count(n: int) -> str:
    """1000 as 1k, 1000000 as 1M; anything else with separators."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % size == 0:
            return f"{n // size:,}{unit}"
    return f"{n:,}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def _bytes(value: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _micros(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:,.1f} ms"
    return f"{value:.2f} µs"


def _ran(counts: Sequence[int], expected: int) -> str:
    """The tasks counted over all runs, against what was submitted; flagged if short."""
    total = sum(counts)
    want = expected * len(counts)
    return f"{total:,}" if total == want else f"{total:,} of {want:,} (MISCOUNT)"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """A Markdown table, padded so it also reads as plain text."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(headers), line(rule), *(line(r) for r in rows)])


def render(results: Results) -> str:
    """The human report: machine, then one table per part of the bench, then the targets."""
    m = results["machine"]
    out = [
        f"machine: {m['cpus']} cpus, {m['cpu_model']}; {m['implementation']} {m['python']}, "
        f"gevent {m['gevent']}, greenlet {m['greenlet']}; {m['platform']}",
        f"command: {results['command']}",
        f"rounds: {results['settings']['rounds']}, interleaved; figures are medians over rounds",
    ]
    if results["throughput"]:
        out += [
            "",
            "Throughput (bursts of n tasks, trickle one at a time; "
            "x gevent.spawn: spawn's time / this one's, same round)",
            "",
            _table(
                ["workload", "cap", "n", "strategy", "tasks/s", "x gevent.spawn", "tasks run"],
                [
                    [
                        r["workload"],
                        f"{r['cap']:,}",
                        _count(r["n"]),
                        r["strategy"],
                        f"{r['tasks_per_s']:,.0f}",
                        _ratio(r["ratio_to_spawn"]),
                        _ran(r["tasks_run"], r["n"])
                        + (f", {r['errors']:,} failed" if r["errors"] else ""),
                    ]
                    for r in results["throughput"]
                ],
                right={1, 2, 4, 5, 6},
            ),
        ]
        if any(r["workload"] == "trickle" for r in results["throughput"]):
            out += ["", TRICKLE_NOTE]
    if results["memory"]:
        out += [
            "",
            "Memory (n blocked tasks, each strategy in a fresh process; x = growth / spawn's)",
            "",
            _table(
                [
                    "n",
                    "cap",
                    "strategy",
                    "blocked",
                    "peak RSS growth",
                    "per task",
                    "x gevent.spawn",
                ],
                [
                    [
                        _count(r["n"]),
                        f"{r['cap']:,}",
                        r["strategy"],
                        f"{r['blocked_at_peak']:,}",
                        _bytes(r["peak_rss_growth_bytes"]),
                        _bytes(r["bytes_per_task"]),
                        _ratio(r["ratio_to_spawn"]),
                    ]
                    for r in results["memory"]
                ],
                right={0, 1, 3, 4, 5, 6},
            ),
        ]
    if results["latency"]:
        out += [
            "",
            "Start latency (submit call to task start, in one burst)",
            "",
            _table(
                ["burst", "cap", "strategy", "p50", "p99", "tasks run"],
                [
                    [
                        _count(r["n"]),
                        f"{r['cap']:,}",
                        r["strategy"],
                        _micros(r["p50_us"]),
                        _micros(r["p99_us"]),
                        _ran(r["tasks_run"], r["n"]),
                    ]
                    for r in results["latency"]
                ],
                right={0, 1, 3, 4, 5},
            ),
        ]
    if results["scale"]:
        out += [
            "",
            "Scale (no-op tasks; cost per task by burst size; x = cost / the cheapest size's)",
            "",
            _table(
                ["n", "bursts", "strategy", "per task", "of which GC", "x cheapest", "tasks run"],
                [
                    [
                        _count(r["n"]),
                        f"{r['bursts']:,}",
                        r["strategy"],
                        _micros(r["us_per_task"]),
                        _micros(r["gc_us_per_task"]),
                        _ratio(r["ratio_to_best"]),
                        _ran(r["tasks_run"], r["n"] * r["bursts"]),
                    ]
                    for r in results["scale"]
                ],
                right={0, 1, 3, 4, 5, 6},
            ),
        ]
    if results["targets"]:
        out += [
            "",
            "Targets (issue 3)",
            "",
            _table(
                ["target", "measured", "goal", "met"],
                [
                    [t["target"], _ratio(t["measured"]), t["goal"], "yes" if t["met"] else "NO"]
                    for t in results["targets"]
                ],
                right={1},
            ),
        ]
    out += [
        "",
        "every task counted: "
        + ("yes" if results["complete"] else "NO - a strategy lost or repeated tasks"),
    ]
    return "\n".join(out)


def command(argv: Sequence[str]) -> str:
    """The command line that reproduces this run."""
    return " ".join(["python -m ggopool bench", *argv])
