"""/metrics of the load-test app: in one process, and under ``gunicorn -k gevent -w 2
--preload`` with prometheus_client's multiprocess mode after a Locust run, where it lists
every pool of every worker process, each value checked against that process's ``/stats``."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import gevent
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

import ggopool
from tests.deploy_helpers import (
    Proc,
    answer_from_each_worker,
    client,
    fresh,
    gunicorn_args,
    gunicorn_booted,
    headless,
    running,
    settled,
    start_app,
    stats,
    subprocess_env,
    wait_until,
)
from tests.prometheus_helpers import (
    COUNTERS,
    GAUGES,
    STATS_SAMPLES,
    WAIT,
    Scrape,
    assert_matches_stats,
    expected,
)

POOLS = ("background", "fanout", "ggopool.DefaultPool")
MEASURED = ("background", "fanout")  # the app instruments these two


def stats_of_each_worker(url: str, pids: set[int]) -> dict[int, dict[str, Any]]:
    """One /stats answer from every worker (each answers for itself)."""
    return answer_from_each_worker(url, pids, "GET", "/stats")


def scrape_metrics(url: str) -> Scrape:
    http = client(url)
    try:
        with http.get("/metrics") as response:
            assert response.status_code == 200
            assert response.get("Content-Type", "").startswith("text/plain; version=")
            return Scrape(response.read().decode())
    finally:
        http.close()


def read_files(directory: Path) -> Scrape:
    """What a scrape would render now, read straight from the files (marks no scrape)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return Scrape(generate_latest(registry).decode())


def mismatches(metrics: Scrape, by_pid: dict[int, dict[str, Any]]) -> list[str]:
    """Every value of ``metrics`` that differs from the workers' /stats."""
    wrong = []
    for pool in POOLS:
        for name in GAUGES:
            for pid, s in by_pid.items():
                field = STATS_SAMPLES[name]
                want = expected(field, s["pool_stats"][pool][field])
                got = metrics.samples[name].get((("pid", str(pid)), ("pool", pool)))
                if got != want:
                    wrong.append(f"{name}{{pid={pid}, pool={pool}}} {got} != {want}")
        for name in COUNTERS:
            want = sum(s["pool_stats"][pool][STATS_SAMPLES[name]] for s in by_pid.values())
            got = metrics.samples[name].get((("pool", pool),))
            if got != want:
                wrong.append(f"{name}{{pool={pool}}} {got} != {want} (summed over workers)")
    for pool in MEASURED:
        # Every task of these pools goes through the instrumented object, and all ran.
        want = sum(
            s["pools"][pool]["completed"] + s["pools"][pool]["failed"] for s in by_pid.values()
        )
        got = metrics.samples[WAIT + "_count"].get((("pool", pool),))
        if got != want:
            wrong.append(f"{WAIT}_count{{pool={pool}}} {got} != {want}")
    return wrong


def test_one_process_serves_its_pools_from_a_collector_read_at_scrape_time() -> None:
    app, url = start_app("--background-cap", "3")
    try:
        for _ in range(5):
            status, ack = fresh(url, "POST", "/orders", {"sku": "S", "qty": 1})
            assert status == 202, ack
        http = client(url)

        def quiet() -> dict[str, Any] | None:
            s = stats(http)
            return s if settled(s) else None

        try:
            s = wait_until(quiet, timeout=10, what="the app's pools to run all tasks")
        finally:
            http.close()
        metrics = scrape_metrics(url)
    finally:
        app.stop()
    assert "pid" not in {key for labels in metrics.labels("ggopool_workers") for key in labels}
    assert metrics.pools() == set(POOLS)
    for pool in POOLS:
        assert_matches_stats(metrics, ggopool.PoolStats(**s["pool_stats"][pool]))
    assert metrics.value("ggopool_tasks_submitted_total", pool="background") == 10
    assert metrics.value(WAIT + "_count", pool="background") == 10
    assert 1 <= metrics.value("ggopool_tasks_running_peak", pool="background") <= 3


def test_metrics_list_every_pool_of_every_worker_with_the_values_of_its_stats(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    # gunicorn >= 25.1 opens a control socket in $XDG_RUNTIME_DIR: this test's in its tmp dir.
    env = subprocess_env(PROMETHEUS_MULTIPROC_DIR=str(directory), XDG_RUNTIME_DIR=str(tmp_path))
    args = gunicorn_args()
    with running(args, env) as gunicorn:
        url, master_pid, workers = gunicorn_booted(gunicorn)

        locust = Proc(headless("loadtests/locustfile.py", url, "3s"))
        try:
            assert locust.wait(timeout=40) == 0, locust.output
        finally:
            locust.stop()
        # Locust's users keep their connections: make sure both workers took orders.
        acks = answer_from_each_worker(url, workers, "POST", "/orders", {"sku": "M", "qty": 1})
        assert set(acks) == workers

        def quiet() -> dict[int, dict[str, Any]] | None:
            by_pid = stats_of_each_worker(url, workers)
            return by_pid if all(settled(s) for s in by_pid.values()) else None

        final = wait_until(quiet, timeout=30, what="every worker's pools to run all tasks")
        submitted = {
            pool: sum(s["pool_stats"][pool]["submitted"] for s in final.values()) for pool in POOLS
        }
        assert submitted["background"] > 0
        assert submitted["fanout"] > 0
        for s in final.values():
            assert s["pool_stats"]["background"]["submitted"] > 0  # each worker took orders

        def published() -> bool:
            # Each worker publishes every second: wait until both have published their
            # settled counts, reading the files without marking a scrape.
            files = read_files(directory)
            return all(
                files.samples["ggopool_tasks_submitted_total"].get((("pool", pool),))
                == submitted[pool]
                for pool in POOLS
            ) and all(
                # Nothing running and nothing still queued: a publish made between a task's
                # go() and its worker's start has the final count of submitted tasks, but
                # not the peaks that start raises.
                files.samples[gauge].get((("pid", str(pid)), ("pool", pool))) == 0
                for gauge in ("ggopool_tasks_running", "ggopool_tasks_pending")
                for pid in workers
                for pool in POOLS
            )

        wait_until(published, timeout=30, what="both workers to publish their counts")

        # The first scrape: the peaks since the workers started.
        first = scrape_metrics(url)
        assert first.types["ggopool_tasks_submitted"] == "counter"
        assert first.types["ggopool_workers"] == "gauge"
        assert first.types[WAIT] == "histogram"
        listed = {(labels["pid"], labels["pool"]) for labels in first.labels("ggopool_workers")}
        assert listed == {(str(pid), pool) for pid in workers for pool in POOLS}
        assert str(master_pid) not in {pid for pid, _ in listed}
        for pid, s in final.items():
            for pool in MEASURED:
                counted = s["pools"][pool]
                labels = {"pid": str(pid), "pool": pool}
                # The app counts its tasks running as they start, as the instrument does:
                # the same peak.
                running_peak = first.value("ggopool_tasks_running_peak", **labels)
                assert running_peak == counted["peak_running"]
                # The workers' peak is sampled as each worker starts. The app's own figure,
                # sampled after each go(), can differ either way (it may count a start not
                # made yet, or miss one made after its go() returned), so it is no reference:
                # every task running at the peak ran on a worker of its own, all alive at
                # the start of the last of them, and the cap bounds the workers.
                workers_peak = first.value("ggopool_workers_peak", **labels)
                assert running_peak <= workers_peak <= counted["cap"], (labels, counted)
                # A worker the kernel handed no request of a kind ran none of its tasks.
                assert 0 <= counted["peak_running"] <= counted["cap"]
        for pool in MEASURED:
            assert max(s["pools"][pool]["peak_running"] for s in final.values()) >= 1
            cumulative = list(first.buckets(pool).values())
            assert cumulative == sorted(cumulative)
            assert cumulative[-1] == first.value(WAIT + "_count", pool=pool)

        # Every value against the workers' /stats. Parked workers may expire (idle
        # timeout) between reading /stats and scraping: read both again until they agree.
        wrong: list[str] = []
        for _ in range(10):
            by_pid = stats_of_each_worker(url, workers)
            wrong = mismatches(scrape_metrics(url), by_pid)
            if not wrong:
                break
            gevent.sleep(1.1)  # the other worker's next publication
        assert not wrong, "\n".join(wrong)
        # Nothing was lost or run twice, by the app's own counts.
        for s in by_pid.values():
            assert s["orders"]["duplicates"] == 0
            for pool in MEASURED:
                counted = s["pools"][pool]
                assert counted["submitted"] == s["pool_stats"][pool]["submitted"]
                assert counted["completed"] == s["pool_stats"][pool]["completed"]
                assert counted["failed"] == s["pool_stats"][pool]["failed"] == 0

        # A worker that exits: the master's child_exit hook removes its gauges, and its
        # counts stay in the sums. The master boots a worker in its place.
        gone = min(workers)
        os.kill(gone, signal.SIGTERM)
        booted = gunicorn.wait_for(r"Booting worker with pid: (\d+)", 30, count=3)
        new = int(booted[2].group(1))
        workers = workers - {gone} | {new}
        assert gone not in workers
        # Stopped before it has its own signal handlers, it would miss the master's TERM.
        gunicorn.wait_for(rf"Worker ready \(pid: {new}\)", 30)

        def forgotten() -> Scrape | None:
            scrape = scrape_metrics(url)
            pids = {labels["pid"] for labels in scrape.labels("ggopool_workers")}
            return scrape if str(gone) not in pids else None

        after = wait_until(forgotten, timeout=15, what=f"the gauges of worker {gone} to go")
        alive = {labels["pid"] for labels in after.labels("ggopool_workers")}
        assert alive <= {str(pid) for pid in workers}
        for pool in MEASURED:
            # Counters only grow: the gone worker's counts are still in the sums.
            got = after.samples["ggopool_tasks_submitted_total"].get((("pool", pool),))
            assert got is not None
            assert got >= by_pid[gone]["pool_stats"][pool]["submitted"]

        gunicorn.stop()
        assert gunicorn.popen.returncode == 0, gunicorn.output
