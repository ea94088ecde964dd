"""One run's results as a document: what ``--json`` prints and the tables are made from."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any, TypedDict

import gevent
import greenlet

from ggopool.bench.busy import BusyRow
from ggopool.bench.latency import LatencyRow
from ggopool.bench.memory import MemoryRow
from ggopool.bench.rounds import ThroughputRow
from ggopool.bench.scale import ScaleRow
from ggopool.bench.server import ServerRow


class Target(TypedDict):
    """One target, read from this run."""

    id: str  # stable: what a script reads
    target: str  # what is compared, with this run's sizes
    measured: float
    range: list[float] | None  # the lowest and highest round's ratio; None: one measurement
    goal: str
    met: bool | None  # None: no verdict, because the run's sizes are not the target's
    why_no_verdict: str | None


class Results(TypedDict):
    """The whole run."""

    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    throughput: list[ThroughputRow]
    memory: list[MemoryRow]
    latency: list[LatencyRow]
    busy: list[BusyRow]
    scale: list[ScaleRow]
    server: list[ServerRow]
    targets: list[Target]
    complete: bool  # every strategy ran exactly the tasks it was given, in every run


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


def command(argv: Sequence[str]) -> str:
    """The command line that reproduces this run."""
    return " ".join(["python -m ggopool bench", *argv])


def complete(results: Results) -> bool:
    """Did every run of every strategy count exactly the tasks it was given?"""
    rows: list[Any] = [
        *results["throughput"],
        *results["memory"],
        *results["latency"],
        *results["busy"],
        *results["scale"],
        *results["server"],
    ]
    return all(row["complete"] for row in rows)
