"""Reading Prometheus's text format back with prometheus_client's own parser."""

from __future__ import annotations

import math
import sys
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

import ggopool

#: Each gauge and counter read from stats(), and the PoolStats field it reports.
STATS_SAMPLES = {
    "ggopool_cap": "cap",
    "ggopool_workers": "workers",
    "ggopool_workers_idle": "idle",
    "ggopool_tasks_running": "running",
    "ggopool_tasks_pending": "pending",
    "ggopool_tasks_submitted_total": "submitted",
    "ggopool_tasks_completed_total": "completed",
    "ggopool_tasks_failed_total": "failed",
    "ggopool_tasks_cancelled_total": "cancelled",
    "ggopool_tasks_rejected_total": "rejected",
}
GAUGES = [name for name in STATS_SAMPLES if not name.endswith("_total")]
COUNTERS = [name for name in STATS_SAMPLES if name.endswith("_total")]
WAIT = "ggopool_task_queue_wait_seconds"


class Scrape:
    """One scrape, parsed: ``value(name, pool=..., pid=...)`` and the types it declared."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        # sample name -> {labels as a sorted tuple: value}
        self.samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                assert labels not in self.samples[sample.name], f"{sample} twice"
                self.samples[sample.name][labels] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[name][tuple(sorted(labels.items()))]

    def labels(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for labels in self.samples[name]]

    def pools(self, name: str = "ggopool_workers") -> set[str]:
        return {labels["pool"] for labels in self.labels(name)}

    def buckets(self, pool: str, **labels: str) -> dict[float, float]:
        """The queue-wait histogram of ``pool``: cumulative count by upper bound."""
        found = {}
        for key, value in self.samples[WAIT + "_bucket"].items():
            d = dict(key)
            le = d.pop("le")
            if d == {"pool": pool, **labels}:
                found[float(le)] = value
        return dict(sorted(found.items()))


def expected(field: str, value: int) -> float:
    """What a scrape says for a stats() field: an unbounded cap is +Inf."""
    return math.inf if field == "cap" and value >= sys.maxsize else float(value)


def assert_matches_stats(scrape: Scrape, stats: ggopool.PoolStats, **labels: str) -> None:
    for name, field in STATS_SAMPLES.items():
        got = scrape.value(name, pool=stats.name, **labels)
        assert got == expected(field, getattr(stats, field)), (
            f"{name}{{pool={stats.name!r}}}: {got} != {stats}"
        )
