"""``--plot FILE``: one run as a chart, throughput ratios to gevent.spawn above, memory below.

matplotlib (the ``plot`` extra) is imported only here, only when a chart is asked for, and
with the Agg backend, so it needs no display. The format follows the file name: ``.svg``
or ``.png``.
"""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import Sequence
from typing import Any

from ggopool.bench.results import Results

#: What a missing matplotlib is reported as, before the run starts.
MISSING = (
    "--plot needs matplotlib, which is not installed: "
    "pip install 'ggopool[plot]' (from a clone: pip install -e '.[plot]')"
)


class PlotUnavailable(RuntimeError):
    """matplotlib cannot be imported."""


def check() -> None:
    """Raise `PlotUnavailable` unless matplotlib can be imported."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailable(MISSING) from None


def _count(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % size == 0:
            return f"{n // size:,}{unit}"
    return f"{n:,}"


def _strategies(rows: Sequence[Any]) -> list[str]:
    """The strategies of ``rows``, in the order they first appear."""
    return list(dict.fromkeys(row["strategy"] for row in rows))


def _groups(rows: Sequence[Any], key: Any) -> list[Any]:
    return list(dict.fromkeys(key(row) for row in rows))


def _throughput(ax: Any, results: Results) -> None:
    rows = [r for r in results["throughput"] if r["ratio_to_spawn"] is not None]
    if not rows:
        ax.set_axis_off()
        ax.set_title("throughput: not measured against gevent.spawn in this run")
        return

    def group(row: Any) -> tuple[str, int, int]:
        return (row["workload"], row["cap"], row["n"])

    groups = _groups(rows, group)
    names = _strategies(rows)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs, heights, below, above = [], [], [], []
        for j, g in enumerate(groups):
            row = next((r for r in rows if group(r) == g and r["strategy"] == name), None)
            if row is None:
                continue
            ratio = row["ratio_to_spawn"] or 0.0  # rows without a ratio were left out
            low, high = row.get("ratio_range") or (ratio, ratio)
            xs.append(j - 0.4 + width * (i + 0.5))
            heights.append(ratio)
            below.append(max(0.0, ratio - low))
            above.append(max(0.0, high - ratio))
        ax.bar(xs, heights, width, label=name, yerr=[below, above], capsize=2)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        [f"{w}\nn={_count(n)}, capped at {_count(c)}" for w, c, n in groups], fontsize=8
    )
    ax.set_ylabel("x gevent.spawn (tasks/s ratio)")
    ax.set_title(
        "Throughput / gevent.spawn's, same round (median over rounds; bars: lowest to highest "
        "round; dashed: gevent.spawn)",
        fontsize=9,
    )
    ax.legend(fontsize=7, ncol=4)


def _memory(ax: Any, results: Results) -> None:
    rows = results["memory"]
    if not rows:
        ax.set_axis_off()
        ax.set_title("memory: not measured in this run")
        return
    kinds = _groups(rows, lambda row: row["kind"])
    names = _strategies(rows)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs, heights = [], []
        for j, kind in enumerate(kinds):
            row = next((r for r in rows if r["kind"] == kind and r["strategy"] == name), None)
            if row is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                heights.append(row["peak_rss_growth_bytes"] / (1 << 20))
        bars = ax.bar(xs, heights, width, label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize=6, padding=1)
    n, cap = rows[0]["n"], rows[0]["cap"]
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels(
        [f"{kind}\nn={_count(n)}, capped at {_count(cap)}" for kind in kinds], fontsize=8
    )
    ax.set_ylabel("peak RSS growth (MiB)")
    ax.set_title(
        "Memory: peak RSS growth of one burst, each strategy and kind in a fresh process "
        "(lower is better)",
        fontsize=9,
    )
    ax.legend(fontsize=7, ncol=4)


def plot(results: Results, path: str) -> None:
    """Draw ``results`` into ``path``: SVG or PNG, by its suffix."""
    check()
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    matplotlib.rcParams["svg.hashsalt"] = "ggopool"  # the same run draws the same file
    m = results["machine"]
    figure, (top, bottom) = pyplot.subplots(2, 1, figsize=(11, 9), layout="constrained")
    try:
        command = textwrap.fill(results["command"], 150, break_on_hyphens=False)
        figure.suptitle(
            f"{command}\n{m['cpus']} cpus, {m['cpu_model']}; "
            f"{m['implementation']} {m['python']}, gevent {m['gevent']}",
            fontsize=9,
        )
        _throughput(top, results)
        _memory(bottom, results)
        metadata = {"Date": None} if path.lower().endswith(".svg") else None
        figure.savefig(path, metadata=metadata)
    finally:
        pyplot.close(figure)
