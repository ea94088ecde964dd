"""Locust against the load-test app, headless and distributed, with `ggopool.locust`.

Locust runs in subprocesses only: ``import locust`` monkey-patches the process it runs in.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from pathlib import Path

from tests.deploy_helpers import (
    Proc,
    headless,
    imported_with_ggopool,
    start_app,
    subprocess_env,
)
from tests.locust_helpers import counts, distributed, entries
from tests.prometheus_helpers import WAIT, Scrape


def test_importing_ggopool_does_not_import_locust() -> None:
    assert imported_with_ggopool("locust") == []


def test_headless_run_has_no_failures_and_counts_the_fanned_out_assets(tmp_path: Path) -> None:
    app, url = start_app()
    try:
        json_file = tmp_path / "stats"
        locust = Proc(headless("loadtests/locustfile.py", url, "4s", "--json-file", str(json_file)))
        try:
            code = locust.wait(timeout=40)
        finally:
            locust.stop()
    finally:
        app.stop()
    assert code == 0, locust.output
    stats = entries(json_file)
    assert {name: e["num_failures"] for name, e in stats.items()} == dict.fromkeys(
        ["/", "/assets/[name]", "/dashboard", "/orders"], 0
    ), locust.output
    pages, assets = stats["/"]["num_requests"], stats["/assets/[name]"]["num_requests"]
    assert pages > 0
    # Every page's six assets went through the tracked pool, and every task is counted.
    [(submitted, run, failed, cancelled, peak)] = counts(locust.output, r"ggopool pool 'assets': ")
    assert submitted == run == assets == 6 * pages
    assert failed == cancelled == 0
    assert 1 <= peak <= 32


FAILING_LOCUSTFILE = """
    import ggopool
    from locust import User, constant, task
    from ggopool.locust import track

    jobs = track(ggopool.new_pool("jobs", 4))

    def boom(order):
        raise ZeroDivisionError("boom")

    class Worker(User):
        wait_time = constant(0.5)

        @task
        def work(self):
            jobs.go(boom, 3)
"""


def test_a_pool_task_that_raises_fails_the_run(tmp_path: Path) -> None:
    locustfile = tmp_path / "failing.py"
    locustfile.write_text(textwrap.dedent(FAILING_LOCUSTFILE))
    locust = Proc(headless(str(locustfile), "http://127.0.0.1:9", "2s"))
    try:
        code = locust.wait(timeout=30)
    finally:
        locust.stop()
    assert code == 3, locust.output
    assert "task boom(3) of pool 'jobs' failed: ZeroDivisionError('boom')" in locust.output
    assert 'raise ZeroDivisionError("boom")' in locust.output  # the traceback
    [(submitted, run, failed, _, _)] = counts(locust.output, r"ggopool pool 'jobs': ")
    assert submitted == run == failed > 0


def test_distributed_master_sums_the_workers_pool_counts(tmp_path: Path) -> None:
    json_file = tmp_path / "stats"
    app, url = start_app()
    try:
        # Only the fan-out user, so that both workers run it.
        code, master, w1, w2 = distributed(
            "loadtests/locustfile.py", url, "--json-file", str(json_file), "Browser"
        )
    finally:
        app.stop()
    assert code == 0, master.output
    [first] = counts(w1.output, r"ggopool pool 'assets': ")
    [second] = counts(w2.output, r"ggopool pool 'assets': ")
    [total] = counts(master.output, r"ggopool pool 'assets', sum over 2 workers: ")
    # Both workers fanned out.
    assert first[1] > 0
    assert second[1] > 0
    assert total == tuple(a + b for a, b in zip(first, second, strict=True))
    assert total[2] == 0
    stats = entries(json_file)
    assert stats["/assets/[name]"]["num_failures"] == 0
    # Not == total[1]: the master's request stats get the workers' last samples in a
    # report it waits only 0.5 s for when it quits; the pool counts come in their own
    # message, and are exact.
    assert 0 < stats["/assets/[name]"]["num_requests"] <= total[1]


def test_distributed_a_pool_task_that_raises_on_a_worker_fails_the_run(tmp_path: Path) -> None:
    locustfile = tmp_path / "failing.py"
    locustfile.write_text(textwrap.dedent(FAILING_LOCUSTFILE))
    code, master, w1, w2 = distributed(str(locustfile), "http://127.0.0.1:9")
    assert code == 3, master.output
    # Each worker logged its tasks' failures; the master got them as Locust exceptions.
    for worker in (w1, w2):
        assert "task boom(3) of pool 'jobs' failed" in worker.output
    [(submitted, run, failed, _, _)] = counts(
        master.output, r"ggopool pool 'jobs', sum over 2 workers: "
    )
    assert submitted == run == failed > 0


def test_loadtests_run_starts_the_app_runs_locust_and_prints_the_summary() -> None:
    run = Proc([sys.executable, "-m", "loadtests.run", "--users", "4", "--run-time", "2"])
    try:
        code = run.wait(timeout=45)
    finally:
        run.stop()
    assert code == 0, run.output
    assert re.search(r"Aggregated\s+\d+\s+0\(0\.00%\)", run.output), run.output
    assert "ggopool pool 'assets': " in run.output
    assert "loadtests.app stopped" in run.output


SURFACE_LOCUSTFILE = """
    import json, os
    from dataclasses import asdict
    import gevent
    from gevent.event import Event
    from locust import User, constant, events, task
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import CollectorRegistry, generate_latest
    import ggopool
    import ggopool.otel
    from ggopool.locust import track
    from ggopool.prometheus import PoolCollector, instrument
    from tests.pool_surface import exercise

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Tracked, measured and traced. A drain that waited for a task that never runs would
    # wait 30 s.
    both = ggopool.otel.instrument(instrument(ggopool.new_pool("both", 4)), provider)
    assert track(both, drain_timeout=30) is both
    registry = CollectorRegistry()
    registry.register(PoolCollector([both], registered=False, default=False))
    seen = []

    def boom():
        raise ZeroDivisionError("boom")

    class Surface(User):
        wait_time = constant(0.05)

        @task
        def surface(self):
            if seen:
                return
            seen.append(exercise(both))
            # Cancelled before they start: by a group's failure, and by Task.kill.
            first, rest = Event(), Event()
            both.go(first.wait)
            for _ in range(3):
                both.go(rest.wait)
            gevent.idle()
            group = both.group(cancel_on_error=True)
            group.go(boom)
            for _ in range(3):
                group.go(rest.wait)
            killed = both.submit(rest.wait)
            killed.kill()
            first.set()  # one worker takes boom, which cancels the rest of the group
            try:
                group.wait(10)
            except ZeroDivisionError:
                pass
            rest.set()

    @events.quitting.add_listener
    def dump(environment, **kwargs):
        outcomes = [s.attributes["ggopool.task.outcome"] for s in exporter.get_finished_spans()]
        with open(os.environ["SURFACE_OUT"], "w") as f:
            json.dump(
                {
                    "seen": asdict(seen[0]),
                    "metrics": generate_latest(registry).decode(),
                    "outcomes": outcomes,
                },
                f,
            )
"""


def test_every_method_of_a_tracked_measured_and_traced_pool_works_in_a_locust_run(
    tmp_path: Path,
) -> None:
    locustfile = tmp_path / "surface.py"
    locustfile.write_text(textwrap.dedent(SURFACE_LOCUSTFILE))
    out = tmp_path / "surface.json"
    env = subprocess_env(SURFACE_OUT=str(out))
    started = time.monotonic()
    locust = Proc(headless(str(locustfile), "http://127.0.0.1:9", "2s", "-u", "1"), env)
    try:
        code = locust.wait(timeout=40)
    finally:
        locust.stop()
    elapsed = time.monotonic() - started
    assert code == 0, locust.output
    got = json.loads(out.read_text())
    seen = got["seen"]
    # exercise() and then 9 more: 4 held, boom and 3 of its group, one killed while queued.
    submitted = seen["queued"] + 9
    cancelled = seen["cancelled"] + 4
    run = submitted - cancelled
    [(n, ran, failed, gone, _)] = counts(locust.output, r"ggopool pool 'both': ")
    assert (n, ran, failed, gone) == (submitted, run, 1, cancelled), locust.output
    # Nothing stayed in flight: the drain did not wait for the tasks that never ran.
    assert "unfinished" not in locust.output
    assert elapsed < 25, locust.output
    metrics = Scrape(got["metrics"])
    assert metrics.value(WAIT + "_count", pool="both") == run
    assert metrics.value("ggopool_tasks_submitted_total", pool="both") == submitted
    assert metrics.value("ggopool_tasks_cancelled_total", pool="both") == cancelled
    outcomes = got["outcomes"]
    assert len(outcomes) == submitted
    assert outcomes.count("cancelled") == cancelled
    assert outcomes.count("failed") == 1
    assert outcomes.count("killed") == seen["killed"]


BACKLOG_LOCUSTFILE = """
    import gevent
    import ggopool
    from locust import User, constant, task
    from ggopool.locust import track

    # The docs' fire-and-forget example: bounded, so go() waits while 8 tasks are queued.
    fast = track(ggopool.new_pool("fast", 4, ggopool.Config(max_pending=8)))
    stuck = track(ggopool.new_pool("stuck", 1))
    started = []

    class Firehose(User):
        wait_time = constant(0)

        @task
        def fire(self):
            if not started:
                started.append(True)
                stuck.go(gevent.sleep, 60)  # outlives any drain
            fast.go(gevent.sleep, 0.01)
"""


def test_a_bounded_pool_leaves_no_backlog_and_the_drain_ends_with_locusts_stop_timeout(
    tmp_path: Path,
) -> None:
    locustfile = tmp_path / "backlog.py"
    locustfile.write_text(textwrap.dedent(BACKLOG_LOCUSTFILE))
    extra = ("--stop-timeout", "1")
    locust = Proc(headless(str(locustfile), "http://127.0.0.1:9", "2s", *extra))
    try:
        code = locust.wait(timeout=40)
    finally:
        locust.stop()
    assert code == 0, locust.output
    [(submitted, run, failed, cancelled, _)] = counts(locust.output, r"ggopool pool 'fast': ")
    assert submitted == run > 0, locust.output
    assert failed == cancelled == 0
    assert not re.search(r"ggopool pool 'fast': \d+ tasks unfinished", locust.output)
    # The stuck task: given Locust's --stop-timeout (1 s), not the default 5 s.
    assert re.search(
        r"ggopool pool 'stuck': 1 tasks unfinished \(0 queued, 1 running\) 1\.0 s after "
        "the test stopped",
        locust.output,
    ), locust.output
