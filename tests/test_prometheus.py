"""ggopool.prometheus in one process: the collector against stats(), the opt-in saturation
signals, bad input; and the multiprocess publisher in a subprocess with a real fork."""

from __future__ import annotations

import contextvars
import json
import math
import textwrap
from pathlib import Path

import gevent
import pytest
from gevent.event import Event
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

import ggopool
from ggopool.prometheus import (
    DEFAULT_BUCKETS,
    MultiProcessPublisher,
    PoolCollector,
    instrument,
    multiprocess_mode,
    saturation,
)
from tests.conftest import HubErrors
from tests.deploy_helpers import imported_with_ggopool, subprocess_env
from tests.pool_surface import exercise
from tests.prometheus_helpers import COUNTERS, GAUGES, WAIT, Scrape, assert_matches_stats
from tests.subprocess_helpers import run_python

_names = iter(range(1_000_000))


def unique(name: str) -> str:
    # The registry is global to the process: every test registers pools of its own names.
    return f"{name}-{next(_names)}"


def scrape(collector: PoolCollector, registry: CollectorRegistry | None = None) -> Scrape:
    if registry is None:
        registry = CollectorRegistry()
        registry.register(collector)
    return Scrape(generate_latest(registry).decode())


def test_importing_ggopool_does_not_import_prometheus_client() -> None:
    assert imported_with_ggopool("prometheus") == []


def test_a_scrape_reports_each_pools_stats_as_gauges_and_counters() -> None:
    pool = ggopool.new_pool(unique("held"), 2)
    closed = ggopool.new_pool(unique("closed"), 1)
    failures: list[Exception] = []
    pool.set_panic_handler(lambda ctx, exc: failures.append(exc))
    release = Event()

    def boom() -> None:
        raise ValueError("boom")

    pool.go(boom)
    pool.go(lambda: None)
    pool.go(lambda: None)
    gevent.idle()
    for _ in range(5):
        pool.go(release.wait)  # two run, three wait
    assert pool.submit(lambda: None).cancel()
    closed.close()
    with pytest.raises(ggopool.PoolClosed):
        closed.go(lambda: None)
    gevent.idle()

    collector = PoolCollector([pool, closed])
    held = scrape(collector)
    # The values a test can know, then every sample against stats() of the same moment.
    assert held.value("ggopool_tasks_running", pool=pool.name) == 2
    assert held.value("ggopool_tasks_pending", pool=pool.name) == 3
    assert held.value("ggopool_workers", pool=pool.name) == 2
    assert held.value("ggopool_tasks_submitted_total", pool=pool.name) == 9
    assert held.value("ggopool_tasks_completed_total", pool=pool.name) == 2
    assert held.value("ggopool_tasks_failed_total", pool=pool.name) == 1
    assert held.value("ggopool_tasks_cancelled_total", pool=pool.name) == 1
    assert held.value("ggopool_tasks_rejected_total", pool=closed.name) == 1
    for p in (pool, closed, ggopool.default_pool()):
        assert_matches_stats(held, p.stats())
    assert {name: held.types[name.removesuffix("_total")] for name in GAUGES + COUNTERS} == {
        **dict.fromkeys(GAUGES, "gauge"),
        **dict.fromkeys(COUNTERS, "counter"),
    }
    # Not instrumented: no histogram, no peaks.
    assert pool.name not in held.pools(WAIT + "_count")
    assert pool.name not in held.pools("ggopool_tasks_running_peak")

    release.set()
    assert pool.join(10)
    done = scrape(collector)
    assert done.value("ggopool_tasks_running", pool=pool.name) == 0
    assert done.value("ggopool_tasks_completed_total", pool=pool.name) == 7
    assert_matches_stats(done, pool.stats())
    assert len(failures) == 1


def test_the_default_pool_registered_pools_and_given_pools_are_reported_once_each() -> None:
    registered = ggopool.new_pool(unique("registered"), 1)
    ggopool.register_pool(registered)
    given = ggopool.new_pool(unique("given"), 1)
    later = ggopool.new_pool(unique("later"), 1)
    default = ggopool.default_pool().name

    everything = scrape(PoolCollector([given, given, registered]))
    assert {default, registered.name, given.name} <= everything.pools()
    assert later.name not in everything.pools()
    assert scrape(PoolCollector([given], registered=False, default=False)).pools() == {given.name}
    assert default not in scrape(PoolCollector(default=False)).pools()
    assert registered.name not in scrape(PoolCollector(registered=False)).pools()

    # A callable is asked at each scrape.
    current: list[ggopool.Pool] = [given]
    dynamic = PoolCollector(lambda: current, registered=False, default=False)
    assert scrape(dynamic).pools() == {given.name}
    current = [later, instrument(given)]
    assert scrape(dynamic).pools() == {later.name, given.name}
    assert dynamic.pools() == sorted([later, given], key=lambda p: p.name)
    assert "callable" in repr(dynamic)


def test_two_pools_with_one_name_make_the_scrape_raise() -> None:
    name = unique("twin")
    twins = PoolCollector([ggopool.new_pool(name, 1), ggopool.new_pool(name, 1)])
    message = (
        rf"^two different pools are named '{name}': the pools a PoolCollector reports "
        "must have different names$"
    )
    with pytest.raises(ValueError, match=message):
        twins.collect()


def test_bad_input_raises_a_clear_error_and_changes_nothing() -> None:
    pool = ggopool.new_pool(unique("bad"), 1)
    rule = "pools must be an iterable of ggopool.Pool"
    with pytest.raises(TypeError, match=rf"^{rule}, got 'abc'$"):
        PoolCollector("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rf"^{rule}, got 3$"):
        PoolCollector(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rf"^{rule}, got 1 in it$"):
        PoolCollector([pool, 1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=rf"^{rule}, got None in it$"):
        PoolCollector(lambda: [None], default=False).collect()  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"^registered must be a bool, got 1$"):
        PoolCollector(registered=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^default must be a bool, got None$"):
        PoolCollector(default=None)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match=r"^pool must be a ggopool.Pool, got 'p'$"):
        instrument("p")  # type: ignore[type-var]
    buckets_rule = "buckets must be a non-empty sequence of increasing numbers of seconds > 0"
    for bad in ([], [0.1, 0.05], [0.1, 0.1], [0], [-1.0], [math.nan]):
        with pytest.raises(ValueError, match=rf"^{buckets_rule}, got \[.*\]$"):
            instrument(pool, bad)
    for wrong in ("0.1", 0.1, [True], ["0.1"], None):
        with pytest.raises(TypeError, match=rf"^{buckets_rule}, got .*$"):
            instrument(pool, wrong)  # type: ignore[arg-type]
    assert saturation(pool) is None
    assert instrument(pool, [0.5, 1]) is pool
    measured = saturation(pool)
    assert measured is not None
    assert measured.buckets == (0.5, 1.0, math.inf)
    assert instrument(pool, (0.5, 1.0, math.inf)) is pool
    with pytest.raises(ValueError, match=r"^pool '.*' is already instrumented with buckets"):
        instrument(pool)
    assert pool.instruments == (measured,)  # one instrument, whatever was refused
    assert pool.stats().submitted == 0

    collector = PoolCollector()
    with pytest.raises(TypeError, match=r"^collector must be a PoolCollector, got 1$"):
        MultiProcessPublisher(1)  # type: ignore[arg-type]
    interval_rule = "interval must be a number of seconds > 0"
    for bad_interval in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=rf"^{interval_rule}, got {bad_interval}$"):
            MultiProcessPublisher(collector, bad_interval)
    with pytest.raises(TypeError, match=rf"^{interval_rule}, got '1'$"):
        MultiProcessPublisher(collector, "1")  # type: ignore[arg-type]
    assert not multiprocess_mode()
    with pytest.raises(RuntimeError, match=r"^prometheus_client is not in multiprocess mode"):
        MultiProcessPublisher(collector)


def test_the_queue_wait_histogram_counts_each_measured_task_at_its_start() -> None:
    pool = ggopool.new_pool(unique("wait"), 1)
    pool.go(lambda: None)  # queued before it was instrumented: not measured
    measured = instrument(pool)
    release = Event()
    measured.go(release.wait)  # the one worker holds this one
    measured.go(lambda: None)
    measured.submit(lambda: None)
    gevent.idle()
    before = scrape(PoolCollector([measured]))
    assert before.value(WAIT + "_count", pool=pool.name) == 1  # only release.wait started
    gevent.sleep(0.06)  # the two queued tasks wait at least this long
    release.set()
    assert pool.join(10)
    assert pool.submit(lambda: None).cancel()  # never starts: not in the histogram

    after = scrape(PoolCollector([measured]))
    buckets = after.buckets(pool.name)
    assert list(buckets) == [*DEFAULT_BUCKETS, math.inf]
    assert after.value(WAIT + "_count", pool=pool.name) == 3
    assert buckets[math.inf] == 3
    assert buckets[0.05] <= 1  # the two that waited for the worker waited > 0.06 s
    assert after.value(WAIT + "_sum", pool=pool.name) >= 0.12
    counts = list(buckets.values())
    assert counts == sorted(counts)  # cumulative
    assert after.types[WAIT] == "histogram"


def test_peaks_are_the_highest_values_since_the_last_scrape() -> None:
    pool = ggopool.new_pool(unique("peaks"), 4)
    measured = instrument(pool)
    collector = PoolCollector([measured])
    release = Event()
    for _ in range(3):
        measured.go(release.wait)
    gevent.idle()

    held = scrape(collector)
    assert held.value("ggopool_tasks_running_peak", pool=pool.name) == 3
    assert held.value("ggopool_workers_peak", pool=pool.name) == 3
    release.set()
    assert pool.join(10)
    # The period the first scrape started began with three running.
    after = scrape(collector)
    assert after.value("ggopool_tasks_running_peak", pool=pool.name) == 3
    assert after.value("ggopool_tasks_running", pool=pool.name) == 0
    quiet = scrape(collector)
    assert quiet.value("ggopool_tasks_running_peak", pool=pool.name) == 0
    assert quiet.value("ggopool_workers_peak", pool=pool.name) == 3  # parked, still alive

    # A burst between two scrapes, over before the second: the peak still shows it.
    burst = Event()
    for _ in range(4):
        measured.go(burst.wait)
    gevent.idle()
    burst.set()
    assert pool.join(10)
    seen = scrape(collector)
    assert seen.value("ggopool_tasks_running_peak", pool=pool.name) == 4
    assert seen.value("ggopool_workers_peak", pool=pool.name) == 4
    assert seen.value("ggopool_tasks_running", pool=pool.name) == 0


def test_registering_with_a_describing_registry_does_not_end_the_peaks_period() -> None:
    pool = ggopool.new_pool(unique("describe"), 2)
    measured = instrument(pool)
    release = Event()
    measured.go(release.wait)
    measured.go(release.wait)
    gevent.idle()
    release.set()
    assert pool.join(10)
    collector = PoolCollector([measured], registered=False, default=False)
    registry = CollectorRegistry(auto_describe=True)  # as prometheus_client's REGISTRY
    registry.register(collector)
    assert scrape(collector, registry).value("ggopool_tasks_running_peak", pool=pool.name) == 2
    assert "ggopool_task_queue_wait_seconds" in {m.name for m in collector.describe()}


def test_every_method_of_an_instrumented_pool_works_and_is_measured() -> None:
    pool = ggopool.new_pool(unique("surface"), 4)
    assert instrument(pool) is pool
    collector = PoolCollector([pool], registered=False, default=False)
    seen = exercise(pool)
    found = scrape(collector)
    assert found.value(WAIT + "_count", pool=pool.name) == seen.started
    assert found.value("ggopool_tasks_running", pool=pool.name) == 0
    assert found.value("ggopool_tasks_running_peak", pool=pool.name) == 2  # the two held
    assert found.value("ggopool_workers_peak", pool=pool.name) >= 2
    assert scrape(collector).value("ggopool_tasks_running_peak", pool=pool.name) == 0
    assert_matches_stats(found, pool.stats())


def test_instrumenting_leaves_the_failure_report_and_failed_task_as_they_were(
    hub_errors: HubErrors,
) -> None:
    pool = instrument(ggopool.new_pool(unique("report"), 2))

    def webhook(order_id: int, retries: int = 0) -> None:
        raise ZeroDivisionError(order_id)

    pool.go(webhook, 41, retries=3)
    assert pool.join(5)
    [(context, kind, _)] = hub_errors.take()
    assert kind is ZeroDivisionError
    assert repr(context) == f"<task {webhook.__qualname__}(41, retries=3) of pool {pool.name!r}>"
    assert (context.task, context.args, context.kwargs) == (webhook, (41,), {"retries": 3})

    calls: list[tuple[str, object, tuple[object, ...]]] = []

    def handler(ctx: contextvars.Context, exc: Exception) -> None:
        failed = ggopool.failed_task()
        assert failed is not None
        calls.append((failed.call, failed.task, failed.args))

    pool.set_panic_handler(handler)
    pool.go(webhook, 42)
    pool.spawn(webhook, 43)
    with pytest.raises(ZeroDivisionError):
        pool.submit(webhook, 44).get(timeout=5)  # to its reader only, as without instruments
    assert pool.join(5)
    assert calls == [
        (f"{webhook.__qualname__}(42)", webhook, (42,)),
        (f"{webhook.__qualname__}(43)", webhook, (43,)),
    ]
    assert scrape(PoolCollector([pool])).value(WAIT + "_count", pool=pool.name) == 4


def test_an_unbounded_cap_is_exported_as_plus_inf() -> None:
    bounded = ggopool.new_pool(unique("bounded"), 3)
    found = scrape(PoolCollector([bounded]))
    assert found.value("ggopool_cap", pool=ggopool.default_pool().name) == math.inf
    assert 'ggopool_cap{pool="ggopool.DefaultPool"} +Inf' in found.text
    # A bounded pool's cap stays a finite number (other tests' registered pools are scraped
    # too, so this one is looked up by its name).
    assert found.value("ggopool_cap", pool=bounded.name) == 3


PUBLISHER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import gevent
    from gevent.event import Event
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
    import ggopool
    from ggopool.prometheus import MultiProcessPublisher, PoolCollector, instrument

    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    pool = ggopool.new_pool("mp", 4)
    measured = instrument(pool)
    publisher = MultiProcessPublisher(PoolCollector([measured]), interval=0.05)
    out = {"pid": os.getpid()}

    def files():
        # What any process would scrape, read without marking a scrape.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        return generate_latest(registry).decode()

    def hold(n):
        release = Event()
        for _ in range(n):
            measured.go(release.wait)
        gevent.idle()
        release.set()
        assert pool.join(5)

    hold(3)
    publisher.publish()
    out["published"] = files()
    out["scrape1"] = publisher.scrape().decode()  # peak 3, then a new period
    publisher.publish()
    out["after_scrape"] = files()                 # the new period: nothing ran
    hold(2)
    out["scrape2"] = publisher.scrape().decode()  # peak 2
    publisher.start()
    hold(4)                                       # published by the timer
    with gevent.Timeout(10):
        while 'ggopool_tasks_completed_total{pool="mp"} 9.0' not in files():
            gevent.sleep(0.01)
    publisher.start()                             # already started: nothing changes
    publisher.stop()
    publisher.stop()
    hold(1)
    gevent.sleep(0.2)
    out["stopped"] = files()                      # the last hold is not published
    out["repr"] = repr(publisher)

    # A second process: the child's pool starts empty, its counts add to the parent's.
    # The child watcher's SIGCHLD handler, installed before the child can exit: a
    # child that exits first is otherwise never seen, and waitpid waits for ever.
    gevent.get_hub().loop.install_sigchld()
    child = gevent.fork()
    if child == 0:
        hold(5)
        publisher.publish()
        os._exit(0)
    os.waitpid(child, 0)
    out["child"] = child
    out["both"] = files()
    mark_process_dead(child)
    out["dead"] = files()

    # The file that marks scrapes is kept small: past 4 KiB it is emptied, still a change.
    marks = os.path.join(publisher.path, "ggopool_scrapes")
    with open(marks, "ab") as f:
        f.write(b"." * 5000)
    publisher.publish()
    hold(2)
    out["before_truncate"] = publisher.scrape().decode()
    out["marks_size"] = os.path.getsize(marks)
    publisher.publish()
    out["after_truncate"] = files()
    print(json.dumps(out))
    """
)


def test_the_multiprocess_publisher_writes_values_a_scrape_of_any_process_reads(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    out = run_python(PUBLISHER_SCRIPT, env=subprocess_env(PROMETHEUS_MULTIPROC_DIR=str(directory)))
    got = json.loads(out.stdout)
    pid, child = str(got["pid"]), str(got["child"])

    published = Scrape(got["published"])
    assert published.value("ggopool_tasks_running_peak", pool="mp", pid=pid) == 3
    assert published.value("ggopool_workers", pool="mp", pid=pid) == 3
    assert published.value("ggopool_tasks_submitted_total", pool="mp") == 3
    assert published.value(WAIT + "_count", pool="mp") == 3
    assert published.types["ggopool_tasks_submitted"] == "counter"
    assert published.types[WAIT] == "histogram"
    cumulative = list(published.buckets("mp").values())
    assert cumulative == sorted(cumulative)
    assert cumulative[-1] == 3

    assert Scrape(got["scrape1"]).value("ggopool_tasks_running_peak", pool="mp", pid=pid) == 3
    after = Scrape(got["after_scrape"])
    assert after.value("ggopool_tasks_running_peak", pool="mp", pid=pid) == 0
    assert after.value("ggopool_workers_peak", pool="mp", pid=pid) == 3  # parked
    scrape2 = Scrape(got["scrape2"])
    assert scrape2.value("ggopool_tasks_running_peak", pool="mp", pid=pid) == 2
    assert scrape2.value("ggopool_tasks_submitted_total", pool="mp") == 5

    stopped = Scrape(got["stopped"])
    assert stopped.value("ggopool_tasks_submitted_total", pool="mp") == 9
    # The period since scrape2 holds the burst of four.
    assert stopped.value("ggopool_tasks_running_peak", pool="mp", pid=pid) == 4
    assert "stopped" in got["repr"]

    both = Scrape(got["both"])
    assert {labels["pid"] for labels in both.labels("ggopool_workers")} == {pid, child}
    assert both.value("ggopool_tasks_submitted_total", pool="mp") == 9 + 5  # summed
    assert both.value("ggopool_tasks_submitted_total", pool="mp") == (
        both.value("ggopool_tasks_completed_total", pool="mp")
    )
    assert both.value("ggopool_tasks_running_peak", pool="mp", pid=child) == 4  # the cap
    assert both.value("ggopool_workers", pool="mp", pid=child) == 4  # the cap
    assert both.value(WAIT + "_count", pool="mp") == 9 + 5

    dead = Scrape(got["dead"])
    assert {labels["pid"] for labels in dead.labels("ggopool_workers")} == {pid}
    assert dead.value("ggopool_tasks_submitted_total", pool="mp") == 9 + 5  # counts stay

    assert got["marks_size"] == 0
    peak = "ggopool_tasks_running_peak"
    assert Scrape(got["before_truncate"]).value(peak, pool="mp", pid=pid) == 2
    assert Scrape(got["after_truncate"]).value(peak, pool="mp", pid=pid) == 0  # a new period


MASTER_SCRIPT = textwrap.dedent(
    """
    import os, time
    import gevent
    from ggopool.prometheus import MultiProcessPublisher, PoolCollector

    # Made and started at import, as an application loaded with gunicorn --preload does:
    # in the master, whose hub never runs.
    publisher = MultiProcessPublisher(PoolCollector(), interval=0.05)
    publisher.start()
    # The child watcher's SIGCHLD handler, installed before the child can exit: a
    # child that exits first is otherwise never seen, and waitpid waits for ever.
    gevent.get_hub().loop.install_sigchld()
    child = gevent.fork()
    if child == 0:
        gevent.sleep(0.2)  # a worker: its hub runs, and it publishes
        os._exit(0)
    os.waitpid(child, 0)  # not monkey-patched: the master's hub does not run
    time.sleep(0.2)
    print(os.getpid(), child)
    """
)


def test_a_publisher_started_where_the_hub_never_runs_publishes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    out = run_python(MASTER_SCRIPT, env=subprocess_env(PROMETHEUS_MULTIPROC_DIR=str(directory)))
    _master, child = out.stdout.split()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    found = Scrape(generate_latest(registry).decode())
    assert {labels["pid"] for labels in found.labels("ggopool_workers")} == {child}
    assert found.value("ggopool_cap", pool="ggopool.DefaultPool", pid=child) == math.inf
