"""`ggopool.locust` across the edges of a test: the drain at test_stop keeps to its time in
all, a second test in one process counts from zero, and a distributed master's final sums
wait for every connected worker, even one that has sent no report.

Locust runs in subprocesses only: ``import locust`` monkey-patches the process it runs in.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from tests.locust_helpers import counts, distributed
from tests.subprocess_helpers import run_python

# Locust as a library: one local runner, started and stopped as its web UI does (the
# scripts import User, constant, task and Environment before it).
LOCAL_RUNNER = """
    class Idle(User):
        wait_time = constant(0.1)

        @task
        def nothing(self):
            pass

    def start(runner):
        # As the web UI starts a test: the users spawn in a greenlet of the runner's.
        runner.start(1, spawn_rate=100)
        runner.spawning_greenlet.join(10)
        assert runner.state == "running", runner.state

    env = Environment(user_classes=[Idle])
    runner = env.create_local_runner()
"""

DRAIN_SCRIPT = (
    """
    import time
    import gevent
    from locust import User, constant, task
    from locust.env import Environment
    import ggopool
    from ggopool.locust import track

"""
    + LOCAL_RUNNER
    + """    # "held" holds a task queued before it was tracked (not counted, but the drain waits
    # for all the pool holds) and a counted one that ends 1.5 s into the drain; "stuck"
    # a counted task that outlives it. Each pool is given 2 s.
    held = ggopool.new_pool("held", 2)
    held.go(gevent.sleep, 60)
    track(held, env, drain_timeout=2)
    stuck = track(ggopool.new_pool("stuck", 1), env, drain_timeout=2)
    start(runner)
    stuck.go(gevent.sleep, 60)
    held.go(gevent.sleep, 1.5)
    began = time.monotonic()
    runner.stop()  # test_stopping, the users stop, test_stop: the drain
    print("stop took", time.monotonic() - began)
"""
)


def test_the_drain_at_test_stop_takes_at_most_drain_timeout_in_all() -> None:
    out = run_python(DRAIN_SCRIPT)
    [took] = re.findall(r"^stop took ([\d.]+)$", out.stdout, re.MULTILINE)
    # Both pools waited till the one deadline, 2 s after the stop began: not 2 s each, and
    # not 2 s more once the counted task of "held" was done (3.5 s).
    assert 1.8 <= float(took) < 3.0, out.stdout + out.stderr
    for pool in ("held", "stuck"):
        assert f"ggopool pool {pool!r}: 1 tasks unfinished" in out.stderr, out.stderr


RESTART_SCRIPT = (
    """
    import json
    from dataclasses import asdict
    import gevent
    from locust import User, constant, task
    from locust.env import Environment
    import ggopool
    from ggopool.locust import counts, track

"""
    + LOCAL_RUNNER
    + """    jobs = track(ggopool.new_pool("jobs", 4), env)

    def say(when, pool_counts, **more):
        print(json.dumps({"when": when, **asdict(pool_counts), **more}))

    # The first test: 5 tasks run, one of them fails, one more is cancelled.
    start(runner)
    for _ in range(4):
        jobs.go(gevent.sleep, 0)
    jobs.go(lambda: 1 / 0)
    jobs.submit(gevent.sleep, 0).cancel()
    runner.stop()
    say("first", counts(env)["jobs"])

    # A second test in the same process, as the web UI's "new test" starts one.
    start(runner)
    say("at start", counts(env)["jobs"], workers=jobs.worker_count())
    for _ in range(2):
        jobs.go(gevent.sleep, 0)
    runner.stop()
    say("second", counts(env)["jobs"])
"""
)


def test_a_second_test_in_one_process_counts_from_zero() -> None:
    out = run_python(RESTART_SCRIPT)
    said = out.stdout + out.stderr
    fields = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [f.pop("when") for f in fields] == ["first", "at start", "second"], said
    first, at_start, second = fields
    done = ("submitted", "run", "failed", "cancelled")
    assert [first[k] for k in done] == [6, 5, 1, 1], said
    assert [at_start[k] for k in done] == [0, 0, 0, 0], said
    # The peak starts at the workers alive now (parked since the first test), not at the
    # first test's peak.
    assert at_start["peak_workers"] == at_start["workers"], said
    assert [second[k] for k in done] == [2, 2, 0, 0], said


SILENT_WORKERS_LOCUSTFILE = """
    import locust.runners
    import ggopool
    from locust import User, constant, task
    from ggopool.locust import track

    # The workers report their stats once as they connect, before the test starts, then
    # not again before they quit: the run is shorter than the report interval.
    locust.runners.WORKER_REPORT_INTERVAL = 3600

    jobs = track(ggopool.new_pool("jobs", 4))

    class Worker(User):
        wait_time = constant(0.05)

        @task
        def work(self):
            jobs.go(sum, (1, 2))
"""


def test_the_masters_final_sums_wait_for_a_worker_that_has_sent_no_report(
    tmp_path: Path,
) -> None:
    locustfile = tmp_path / "silent.py"
    locustfile.write_text(textwrap.dedent(SILENT_WORKERS_LOCUSTFILE))
    code, master, w1, w2 = distributed(str(locustfile), "http://127.0.0.1:9", run_time="1s")
    assert code == 0, master.output
    [first] = counts(w1.output, r"ggopool pool 'jobs': ")
    [second] = counts(w2.output, r"ggopool pool 'jobs': ")
    assert first[0] > 0, w1.output
    assert second[0] > 0, w2.output
    # Logged once, when the second worker's final counts came, not at the first's.
    [total] = counts(master.output, r"ggopool pool 'jobs', sum over (?:\d+) workers: ")
    assert "sum over 2 workers" in master.output, master.output
    assert total == tuple(a + b for a, b in zip(first, second, strict=True)), master.output
