"""The human report: the machine, one table per part of the bench, and the targets."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from ggopool.bench.results import Results
from ggopool.bench.server import render as render_server

#: What the trickle rows show, printed under the throughput table when it has them.
TRICKLE_NOTE = (
    "trickle: each task is submitted once the one before has run, as a web app calls go()\n"
    "once per request, so every ggopool task wakes a parked worker: the cost of a wake-up,\n"
    "where a burst keeps the workers awake."
)


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


def _range(values: Sequence[float] | None) -> str:
    """The lowest and highest round's ratio, as ``4.9-5.6x``."""
    if not values:
        return "-"
    low, high = _ratio(values[0]), _ratio(values[1])
    return f"{low[:-1]}-{high}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):,.1f} MiB"


def _cap(value: int | None) -> str:
    return "none" if value is None else f"{value:,}"


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


def _throughput(results: Results) -> list[str]:
    rows = results["throughput"]
    out = [
        "Throughput (bursts of n tasks, trickle one at a time; "
        "x gevent.spawn: spawn's time / this one's, same round,",
        "the median over rounds; range: the lowest and highest round's; "
        "cap: the cap the strategy ran under, none if it has none)",
        "",
        _table(
            ["workload", "n", "strategy", "cap", "tasks/s", "x gevent.spawn", "range", "tasks run"],
            [
                [
                    r["workload"],
                    _count(r["n"]),
                    r["strategy"],
                    _cap(r["strategy_cap"]),
                    f"{r['tasks_per_s']:,.0f}",
                    _ratio(r["ratio_to_spawn"]),
                    _range(r.get("ratio_range")),
                    _ran(r["tasks_run"], r["n"])
                    + (f", {r['errors']:,} failed" if r["errors"] else ""),
                ]
                for r in rows
            ],
            right={1, 3, 4, 5, 6, 7},
        ),
    ]
    if any(r["workload"] == "trickle" for r in rows):
        floor = any(r["strategy"] == "deque-floor" for r in rows)
        out += ["", TRICKLE_NOTE + (" The floor calls the task directly." if floor else "")]
    return out


def _memory(results: Results) -> list[str]:
    rows = results["memory"]
    after = f"{rows[0]['after_seconds']:g} s after"
    out = [
        "Memory (a burst of n tasks submitted without yielding, each strategy and kind in a "
        "fresh process;",
        "growth over the RSS just before the burst: at its peak, and "
        f"{after} the last task ran; x = growth / gevent.spawn's)",
        "",
        _table(
            [
                "kind",
                "n",
                "strategy",
                "cap",
                "peak RSS growth",
                "x gevent.spawn",
                f"RSS growth {after}",
                "x gevent.spawn",
                "tasks run",
            ],
            [
                [
                    r["kind"],
                    _count(r["n"]),
                    r["strategy"],
                    _cap(r["strategy_cap"]),
                    _mib(r["peak_rss_growth_bytes"]),
                    _ratio(r["peak_ratio_to_spawn"]),
                    _mib(r["rss_growth_after_bytes"]),
                    _ratio(r["after_ratio_to_spawn"]),
                    _ran([r["tasks_run"]], r["n"]),
                ]
                for r in rows
            ],
            right={1, 3, 4, 5, 6, 7, 8},
        ),
        "",
        "kind: noop runs the counting task alone; yield calls gevent.sleep(0) once; event waits",
        "on one Event, set once every task that can run at once has started.",
    ]
    late = [r for r in rows if r["after_seconds_actual"] > r["after_seconds"] + 0.1]
    if late:
        worst = max(late, key=lambda r: r["after_seconds_actual"])
        out.append(
            f"{len(late)} RSS readings came more than 0.1 s late (the latest: "
            f"{worst['strategy']}, {worst['kind']}, at {worst['after_seconds_actual']:.2f} s): "
            "the hub was busy."
        )
    if not all(r["peak_was_reset"] for r in rows):
        out.append(
            "The peak RSS could not be reset before the burst here, so a peak growth is the "
            "rise over the process's earlier peak: it can understate the burst's."
        )
    return out


def _latency(results: Results) -> list[str]:
    return [
        "Start latency (submit call to task start, in one burst)",
        "",
        _table(
            ["burst", "strategy", "cap", "p50", "p99", "tasks run"],
            [
                [
                    _count(r["n"]),
                    r["strategy"],
                    _cap(r["strategy_cap"]),
                    _micros(r["p50_us"]),
                    _micros(r["p99_us"]),
                    _ran(r["tasks_run"], r["n"]),
                ]
                for r in results["latency"]
            ],
            right={0, 2, 3, 4, 5},
        ),
    ]


def _busy(results: Results) -> list[str]:
    rows = results["busy"]
    return [
        f"Start latency on a busy loop ({rows[0]['greenlets']:,} greenlets waking every ms; "
        "tasks that block, queued 50 per turn; x = ratio to gevent.spawn's, median of rounds)",
        "",
        _table(
            ["tasks", "strategy", "cap", "p50", "x p50", "p99", "x p99", "tasks run"],
            [
                [
                    _count(r["n"]),
                    r["strategy"],
                    _cap(r["strategy_cap"]),
                    _micros(r["p50_us"]),
                    _ratio(r["p50_ratio_to_spawn"]),
                    _micros(r["p99_us"]),
                    _ratio(r["p99_ratio_to_spawn"]),
                    _ran(r["tasks_run"], r["n"]),
                ]
                for r in rows
            ],
            right={0, 2, 3, 4, 5, 6, 7},
        ),
    ]


def _scale(results: Results) -> list[str]:
    return [
        "Scale (no-op tasks; cost per task by burst size; x = cost / the cheapest size's)",
        "",
        _table(
            [
                "n",
                "bursts",
                "strategy",
                "cap",
                "per task",
                "of which GC",
                "x cheapest",
                "tasks run",
            ],
            [
                [
                    _count(r["n"]),
                    f"{r['bursts']:,}",
                    r["strategy"],
                    _cap(r["strategy_cap"]),
                    _micros(r["us_per_task"]),
                    _micros(r["gc_us_per_task"]),
                    _ratio(r["ratio_to_best"]),
                    _ran(r["tasks_run"], r["n"] * r["bursts"]),
                ]
                for r in results["scale"]
            ],
            right={0, 1, 3, 4, 5, 6, 7},
        ),
    ]


def _verdict(met: bool | None) -> str:
    return "-" if met is None else "yes" if met else "NO"


def _targets(results: Results) -> list[str]:
    found = results["targets"]
    out = [
        "Targets (ratios from this run; range: the lowest and highest round's, - for a single "
        "measurement)",
        "",
        _table(
            ["target", "measured", "range", "goal", "met"],
            [
                [
                    t["target"],
                    _ratio(t["measured"]),
                    _range(t.get("range")),
                    t["goal"],
                    _verdict(t["met"]),
                ]
                for t in found
            ],
            right={1, 2},
        ),
    ]
    withheld = [t for t in found if t["met"] is None]
    if withheld:
        reasons = sorted(
            {part for t in withheld for part in (t["why_no_verdict"] or "").split("; ")}
        )
        note = (
            f"No verdict for {len(withheld)} of {len(found)} targets (met: -): each is set for "
            "the full run's sizes, and this run's differ: " + "; ".join(reasons) + ". The "
            "ratios move with the burst size and the rounds (a burst's fixed costs weigh more "
            "over fewer tasks; fewer rounds leave more noise in a median), so a verdict at "
            "other sizes would not say whether the target is met. Run without --quick and "
            "without size options for verdicts."
        )
        out += ["", textwrap.fill(note, 90, break_on_hyphens=False)]
    return out


def render(results: Results) -> str:
    """The human report: machine, then one table per part of the bench, then the targets."""
    m = results["machine"]
    out = [
        f"machine: {m['cpus']} cpus, {m['cpu_model']}; {m['implementation']} {m['python']}, "
        f"gevent {m['gevent']}, greenlet {m['greenlet']}; {m['platform']}",
        f"command: {results['command']}",
        f"rounds: {results['settings']['rounds']}, interleaved; figures are medians over rounds",
    ]
    for part, section in (
        ("throughput", _throughput),
        ("memory", _memory),
        ("latency", _latency),
        ("busy", _busy),
        ("scale", _scale),
        ("server", lambda results: render_server(results["server"])),
        ("targets", _targets),
    ):
        if results[part]:  # type: ignore[literal-required]
            out += ["", *section(results)]
    out += [
        "",
        "every task counted: "
        + ("yes" if results["complete"] else "NO - a strategy lost or repeated tasks"),
    ]
    return "\n".join(out)
