"""Prometheus metrics for ggopool pools: a collector read at scrape time, opt-in saturation
signals, and publishing for prometheus_client's multiprocess mode (gunicorn).

Needs ``prometheus_client`` (``pip install 'ggopool[prometheus]'``). Importing ``ggopool``
never imports it; importing this module does.

One process::

    from prometheus_client import REGISTRY
    from ggopool.prometheus import PoolCollector

    REGISTRY.register(PoolCollector())  # the default pool and every registered pool

Every scrape reads each pool's `~ggopool.Pool.stats`: nothing is counted on a task's way
through the pool for these metrics. The queue-wait histogram and the peaks need a count per
task, so they are opt-in per pool with `instrument`. Under gunicorn's worker processes, see
`MultiProcessPublisher`. ``docs/observability.md`` has the whole story, with the metrics
listed.
"""

from __future__ import annotations

import math
import os
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import gevent
from prometheus_client import values
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import CollectorRegistry

from ggopool._default import UNLIMITED, _registry, default_pool
from ggopool._instrument import Instrument, TaskInfo
from ggopool._pool import Pool, all_pools

__all__ = [
    "DEFAULT_BUCKETS",
    "MultiProcessPublisher",
    "PoolCollector",
    "Saturation",
    "instrument",
    "multiprocess_mode",
    "saturation",
]

PoolT = TypeVar("PoolT", bound=Pool)

#: Upper bounds, in seconds, of the queue-wait histogram's buckets (``+Inf`` is added):
#: from 100 µs, about what a task waits behind a few others, to 10 s, a pool far behind.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_LABELS = ["pool"]

# (name, help) of each metric read from stats(); the field of PoolStats is the last word.
_GAUGES = (
    ("ggopool_cap", "The most tasks the pool runs at once.", "cap"),
    ("ggopool_workers", "Live worker greenlets, running a task or parked.", "workers"),
    ("ggopool_workers_idle", "Worker greenlets parked on the free list.", "idle"),
    ("ggopool_tasks_running", "Tasks started and not finished.", "running"),
    ("ggopool_tasks_pending", "Tasks queued, not started, not cancelled.", "pending"),
)
_COUNTERS = (
    ("ggopool_tasks_submitted", "Tasks accepted by go, ctx_go, submit or try_go.", "submitted"),
    ("ggopool_tasks_completed", "Tasks that returned (or were killed while running).", "completed"),
    ("ggopool_tasks_failed", "Tasks that raised.", "failed"),
    ("ggopool_tasks_cancelled", "Tasks cancelled before they started.", "cancelled"),
    (
        "ggopool_tasks_rejected",
        "Calls refused: pool closed, pool full, try_go with no room.",
        "rejected",
    ),
)
_WAIT = ("ggopool_task_queue_wait_seconds", "Seconds from go() to the task's start.")
_PEAK_RUNNING = (
    "ggopool_tasks_running_peak",
    "The most tasks running at once since the last scrape.",
)
_PEAK_WORKERS = (
    "ggopool_workers_peak",
    "The most worker greenlets alive at once since the last scrape.",
)


def _le(bound: float) -> str:
    # A bucket's upper bound as Prometheus writes it.
    return "+Inf" if bound == math.inf else repr(bound)


def multiprocess_mode() -> bool:
    """True if prometheus_client keeps its values in ``PROMETHEUS_MULTIPROC_DIR`` files.

    prometheus_client decides once, when it is imported, from that environment variable.
    """
    return bool(getattr(values.ValueClass, "_multiprocess", False))


# -- saturation signals, opt-in per pool ----------------------------------------------------


class Saturation(Instrument):
    """The instrument `instrument` attaches: it measures how long each task waits in the
    queue and how many run at once, for `PoolCollector` to report.

    It counts in its hooks only (``task_started``, ``task_finished``, ``worker_started``):
    a few additions per task, no lock, no clock read of its own (the pool's instruments
    time each task once as it is queued and once as it starts).
    """

    __slots__ = (
        "__weakref__",
        "_bounds",
        "_peak_running",
        "_peak_workers",
        "_pool",
        "_running",
        "_wait_buckets",
        "_wait_sum",
    )

    def __init__(self, pool: Pool, bounds: tuple[float, ...]) -> None:
        self._pool = pool
        self._bounds = bounds  # ends with +inf
        self._wait_buckets = [0] * len(bounds)  # per bucket, not cumulative
        self._wait_sum = 0.0
        self._running = 0
        self._peak_running = 0
        self._peak_workers = pool._live_workers()

    def __repr__(self) -> str:
        return f"<ggopool.prometheus.Saturation of pool {self._pool.name!r}>"

    @property
    def buckets(self) -> tuple[float, ...]:
        """The upper bounds of the queue-wait histogram's buckets, ``+inf`` last."""
        return self._bounds

    def task_started(self, task: TaskInfo) -> None:
        wait = task.started_at - task.queued_at  # type: ignore[operator]  # set by now
        # The last bound is +inf, so every wait has a bucket.
        self._wait_buckets[bisect_left(self._bounds, wait)] += 1
        self._wait_sum += wait
        running = self._running + 1
        self._running = running
        if running > self._peak_running:
            self._peak_running = running

    def task_finished(self, task: TaskInfo, outcome: str, exc: BaseException | None) -> None:
        if outcome != "cancelled":  # a cancelled task never started
            self._running -= 1

    def worker_started(self, pool: Pool) -> None:
        # Workers are added only as they start, so sampling here sees every peak.
        workers = pool._live_workers()
        if workers > self._peak_workers:
            self._peak_workers = workers

    def _after_fork_in_child(self) -> None:
        # The parent's counts are the parent's (in multiprocess mode it publishes them):
        # the child's start from zero, as its pools' do. Tasks that were running at the
        # fork still run here, so the running count stays.
        self._wait_buckets = [0] * len(self._bounds)
        self._wait_sum = 0.0
        self._peak_running = self._running
        self._peak_workers = self._pool._live_workers()

    def _take_peaks(self) -> tuple[int, int]:
        """The peaks since the last take, and start the next period at the values of now."""
        running = self._running
        workers = self._pool._live_workers()
        peaks = (max(self._peak_running, running), max(self._peak_workers, workers))
        self._peak_running = running
        self._peak_workers = workers
        return peaks


def saturation(pool: Pool) -> Saturation | None:
    """The `Saturation` instrument `instrument` attached to ``pool``, or None."""
    for attached in pool.instruments:
        if isinstance(attached, Saturation):
            return attached
    return None


#: Every live MultiProcessPublisher, for the reset after a fork.
_publishers: weakref.WeakSet[MultiProcessPublisher] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Registered after ggopool's own (which empties every pool), so it sees them empty.
    for pool in list(all_pools):
        measured = saturation(pool)
        if measured is not None:
            measured._after_fork_in_child()
    for publisher in list(_publishers):
        publisher._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_buckets(buckets: object) -> tuple[float, ...]:
    rule = "buckets must be a non-empty sequence of increasing numbers of seconds > 0"
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence):
        raise TypeError(f"{rule}, got {buckets!r}")
    bounds: list[float] = []
    for bound in buckets:
        if type(bound) is bool or not isinstance(bound, (int, float)):
            raise TypeError(f"{rule}, got {buckets!r}")
        if math.isnan(bound) or bound <= 0 or (bounds and bound <= bounds[-1]):
            raise ValueError(f"{rule}, got {buckets!r}")
        bounds.append(float(bound))
    if not bounds:
        raise ValueError(f"{rule}, got {buckets!r}")
    if bounds[-1] != math.inf:
        bounds.append(math.inf)
    return tuple(bounds)


def instrument(pool: PoolT, buckets: Sequence[float] = DEFAULT_BUCKETS) -> PoolT:
    """Measure ``pool``'s queue wait and peaks, for every task whatever method queued it;
    return ``pool`` itself. A pool that is not instrumented pays nothing.

    Example::

        notify = instrument(ggopool.new_pool("notify", 100))
        notify.go(send_webhook, order_id)        # measured, as is every other method

    It attaches a `Saturation` instrument (`ggopool.Pool.add_instrument`): tasks queued
    from now on are measured. ``buckets`` are the histogram's upper bounds in seconds,
    increasing (``+Inf`` is added). Instrumenting a pool again changes nothing; with
    other buckets it raises ValueError. ``pool.remove_instrument(saturation(pool))``
    undoes it.
    """
    if not isinstance(pool, Pool):
        raise TypeError(f"pool must be a ggopool.Pool, got {pool!r}")
    bounds = _check_buckets(buckets)
    existing = saturation(pool)
    if existing is not None:
        if existing._bounds != bounds:
            raise ValueError(
                f"pool {pool.name!r} is already instrumented with buckets "
                f"{existing._bounds[:-1]!r}, got {tuple(buckets)!r}"
            )
        return pool
    pool.add_instrument(Saturation(pool, bounds))
    return pool


# -- the collector --------------------------------------------------------------------------

_Pools = Iterable[Pool]


class PoolCollector:
    """A prometheus_client collector for ggopool pools, read at scrape time.

    Example::

        REGISTRY.register(PoolCollector([orders_pool]))

    Rules:

    * It reports the default pool (``default=True``), every pool in ggopool's registry at
      the time of the scrape (``registered=True``, see `ggopool.register_pool`), and the
      ``pools`` given: pools, or a callable that returns them at each scrape. Each pool
      once, labelled ``pool="<name>"``; two different pools with the same name make the
      scrape raise ValueError.
    * Each scrape calls each pool's ``stats()``: gauges ``ggopool_cap`` (``+Inf`` for an
      unbounded cap, the default pool's),
      ``ggopool_workers``, ``ggopool_workers_idle``, ``ggopool_tasks_running``,
      ``ggopool_tasks_pending``; counters ``ggopool_tasks_submitted_total``,
      ``..._completed_total``, ``..._failed_total``, ``..._cancelled_total``,
      ``..._rejected_total``.
    * For pools that were `instrument`-ed: the histogram
      ``ggopool_task_queue_wait_seconds`` and the gauges ``ggopool_tasks_running_peak``
      and ``ggopool_workers_peak`` (since the previous scrape, which this one ends).
    * ``stats()`` belongs to the pool's thread; scraped from another thread (the
      ``start_http_server`` thread, unpatched), the snapshot may be a moment inconsistent.
    * In prometheus_client's multiprocess mode a collector's values are seen only by a
      scrape of its own process: use `MultiProcessPublisher` there.
    """

    def __init__(
        self,
        pools: _Pools | Callable[[], _Pools] = (),
        *,
        registered: bool = True,
        default: bool = True,
    ) -> None:
        if type(registered) is not bool:
            raise TypeError(f"registered must be a bool, got {registered!r}")
        if type(default) is not bool:
            raise TypeError(f"default must be a bool, got {default!r}")
        if callable(pools):
            self._pools: Callable[[], _Pools] | None = pools
            self._fixed: list[Pool] = []
        else:
            self._pools = None
            self._fixed = self._check_pools(pools)
        self._registered = registered
        self._default = default

    def __repr__(self) -> str:
        return (
            f"<ggopool.prometheus.PoolCollector pools={len(self._fixed)}"
            f"{' (callable)' if self._pools is not None else ''} "
            f"registered={self._registered} default={self._default}>"
        )

    @staticmethod
    def _check_pools(pools: object) -> list[Pool]:
        rule = "pools must be an iterable of ggopool.Pool"
        if isinstance(pools, (str, bytes)) or not isinstance(pools, Iterable):
            raise TypeError(f"{rule}, got {pools!r}")
        found: list[Pool] = []
        for pool in pools:
            if not isinstance(pool, Pool):
                raise TypeError(f"{rule}, got {pool!r} in it")
            found.append(pool)
        return found

    def pools(self) -> list[Pool]:
        """The pools a scrape now would report, by name."""
        candidates: list[Pool] = [default_pool()] if self._default else []
        if self._registered:
            candidates.extend(list(_registry.values()))
        candidates.extend(self._fixed)
        if self._pools is not None:
            candidates.extend(self._check_pools(self._pools()))
        by_name: dict[str, Pool] = {}
        for pool in candidates:
            if by_name.setdefault(pool.name, pool) is not pool:
                raise ValueError(
                    f"two different pools are named {pool.name!r}: the pools a "
                    "PoolCollector reports must have different names"
                )
        return [by_name[name] for name in sorted(by_name)]

    def describe(self) -> list[Metric]:
        """The metrics' names and types, without reading any pool (so registering with a
        registry does not end a period of the peaks)."""
        return self._families([], lambda measured: (0, 0))

    def collect(self) -> list[Metric]:
        """Read every pool now; ends the peaks' period."""
        return self._families(self.pools(), Saturation._take_peaks)

    def _families(
        self, pools: list[Pool], peaks: Callable[[Saturation], tuple[int, int]]
    ) -> list[Metric]:
        gauges = [GaugeMetricFamily(name, doc, labels=_LABELS) for name, doc, _ in _GAUGES]
        counters = [CounterMetricFamily(name, doc, labels=_LABELS) for name, doc, _ in _COUNTERS]
        wait = HistogramMetricFamily(*_WAIT, labels=_LABELS)
        peak_running = GaugeMetricFamily(*_PEAK_RUNNING, labels=_LABELS)
        peak_workers = GaugeMetricFamily(*_PEAK_WORKERS, labels=_LABELS)
        for pool in pools:
            stats = pool.stats()
            label = [pool.name]
            for family, (_, _, field) in zip(gauges, _GAUGES, strict=True):
                value = getattr(stats, field)
                if field == "cap" and value >= UNLIMITED:
                    value = math.inf  # the default pool's: no bound, not 9.2e18
                family.add_metric(label, value)
            for counter, (_, _, field) in zip(counters, _COUNTERS, strict=True):
                counter.add_metric(label, getattr(stats, field))
            measured = saturation(pool)
            if measured is None:
                continue
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(measured._bounds, measured._wait_buckets, strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            wait.add_metric(label, buckets, measured._wait_sum)
            running, workers = peaks(measured)
            peak_running.add_metric(label, running)
            peak_workers.add_metric(label, workers)
        return [*gauges, *counters, wait, peak_running, peak_workers]


# -- multiprocess mode ----------------------------------------------------------------------

#: The file whose changes tell every process that a scrape read their values (see
#: MultiProcessPublisher.scrape). Not a ``.db`` file, so MultiProcessCollector skips it.
SCRAPES_FILE = "ggopool_scrapes"


class MultiProcessPublisher:
    """Write a `PoolCollector`'s values into this process's files of prometheus_client's
    multiprocess mode, so that a scrape of any process (say, any gunicorn worker) reports
    the pools of every process.

    In each worker process (gunicorn's ``post_fork``, or on first use), and in the
    ``/metrics`` handler::

        publisher = MultiProcessPublisher(PoolCollector([orders_pool]))
        publisher.start()                     # every second, in this process
        ...
        body = publisher.scrape()             # in /metrics, served by any worker
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])

    Rules:

    * prometheus_client must be in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set
      before it is imported), or the constructor raises RuntimeError.
    * `publish` writes this process's values now: gauges with prometheus_client's
      ``multiprocess_mode="liveall"`` (one series per live process, labelled ``pid``),
      counters and the queue-wait histogram summed over processes, as prometheus_client
      does for its own metrics. `start` publishes at the hub's first turn, then every
      ``interval`` seconds, on an unreferenced hub timer (it keeps no ``gevent.wait()``
      waiting); a scrape sees the other processes' values as they were at most
      ``interval`` seconds ago. A process whose hub never runs (a gunicorn master that
      imported the application with ``--preload``) never publishes.
    * `scrape` publishes this process's values, renders every process's files (with
      ``MultiProcessCollector``), and marks the scrape in the directory. Each process's
      next publication then starts a new period of its peaks; until then its peaks keep
      growing. So a peak is reported by at least one scrape, and a scrape reports the peaks
      since the previous one, give or take one ``interval``.
    * Call ``prometheus_client.multiprocess.mark_process_dead(pid)`` when a worker exits
      (gunicorn's ``child_exit``): its gauges go, its counts stay in the sums.
    """

    def __init__(self, collector: PoolCollector, interval: float = 1.0) -> None:
        if not isinstance(collector, PoolCollector):
            raise TypeError(f"collector must be a PoolCollector, got {collector!r}")
        if type(interval) is bool or not isinstance(interval, (int, float)):
            raise TypeError(f"interval must be a number of seconds > 0, got {interval!r}")
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be a number of seconds > 0, got {interval!r}")
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not multiprocess_mode() or not path:
            raise RuntimeError(
                "prometheus_client is not in multiprocess mode: set PROMETHEUS_MULTIPROC_DIR "
                "to a directory before prometheus_client is imported"
            )
        self._collector = collector
        self._interval = float(interval)
        self._path = path
        self._scrapes = os.path.join(path, SCRAPES_FILE)
        self._seen_scrapes: tuple[int, int] | None = None
        # Per instrumented pool: the peaks of the period the next scrape will report.
        self._periods: weakref.WeakKeyDictionary[Saturation, tuple[int, int]] = (
            weakref.WeakKeyDictionary()
        )
        self._values: dict[tuple[str, str, tuple[tuple[str, str], ...]], Any] = {}
        self._timer: Any = None
        _publishers.add(self)

    def _after_fork_in_child(self) -> None:
        # The child's peaks start a period of their own; its values go to files of its own
        # pid (prometheus_client sees the pid change). A started timer goes on publishing.
        self._periods.clear()
        self._seen_scrapes = None

    def __repr__(self) -> str:
        state = "started" if self._timer is not None else "stopped"
        return f"<ggopool.prometheus.MultiProcessPublisher {self._path!r} {state}>"

    @property
    def path(self) -> str:
        """The multiprocess directory."""
        return self._path

    def start(self) -> None:
        """Publish as soon as this thread's hub runs, then every ``interval`` seconds.

        Not before the hub runs: a gunicorn master that imports the application
        (``--preload``) never runs gevent's hub, serves nothing, and so never publishes a
        series of its own; each worker forked from it publishes from its first turn.
        """
        if self._timer is not None:
            return
        timer = gevent.get_hub().loop.timer(0.0, self._interval, ref=False)
        timer.start(self.publish)
        self._timer = timer

    def stop(self) -> None:
        """Stop publishing every ``interval`` (what was published stays)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()

    def _scrape_mark(self) -> tuple[int, int]:
        try:
            st = os.stat(self._scrapes)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def publish(self) -> None:
        """Write this process's values to its multiprocess files now."""
        mark = self._scrape_mark()
        scraped = mark != self._seen_scrapes
        self._seen_scrapes = mark
        periods = self._periods

        def peaks(measured: Saturation) -> tuple[int, int]:
            # The peaks since this process's last publication. After a scrape, the period
            # before it was reported: the new one starts with them, which no scrape saw.
            running, workers = measured._take_peaks()
            if not scraped and measured in periods:
                before_running, before_workers = periods[measured]
                running, workers = max(running, before_running), max(workers, before_workers)
            periods[measured] = (running, workers)
            return running, workers

        for family in self._collector._families(self._collector.pools(), peaks):
            self._write(family)

    def _write(self, family: Metric) -> None:
        if family.type == "histogram":
            # The files hold each bucket's own count; MultiProcessCollector adds them up
            # (and derives _count from them).
            below: dict[tuple[tuple[str, str], ...], float] = {}
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    labels = tuple((k, v) for k, v in sample.labels.items() if k != "le")
                    own = sample.value - below.get(labels, 0)
                    self._set(family, sample.name, sample.labels, own)
                    below[labels] = sample.value
                elif sample.name.endswith("_sum"):
                    self._set(family, sample.name, sample.labels, sample.value)
            return
        for sample in family.samples:
            self._set(family, sample.name, sample.labels, sample.value)

    def _set(self, family: Metric, name: str, labels: dict[str, str], value: float) -> None:
        key = (family.name, name, tuple(labels.items()))
        mmaped = self._values.get(key)
        if mmaped is None:
            mmaped = values.ValueClass(
                family.type,
                family.name,
                name,
                tuple(labels),
                tuple(labels.values()),
                family.documentation,
                multiprocess_mode="liveall",  # read for gauges only
            )
            self._values[key] = mmaped
        mmaped.set(value)

    def scrape(self) -> bytes:
        """Publish, then render every process's metrics in the text format
        (``prometheus_client.CONTENT_TYPE_LATEST``), then mark the scrape."""
        self.publish()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._path)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
        # One byte appended: every process sees the file's size and time change.
        fd = os.open(self._scrapes, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
            if os.fstat(fd).st_size >= 4096:
                os.ftruncate(fd, 0)  # any change is a new mark; keep the file small
        finally:
            os.close(fd)
        return body
