"""The multiprocess publisher's timer is the process's least concern: a started publisher
keeps neither ``gevent.wait()`` waiting nor the process from exiting, in the process that
started it and in a child forked from it (where it goes on publishing)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.deploy_helpers import subprocess_env
from tests.prometheus_helpers import Scrape
from tests.subprocess_helpers import run_python

# Each process runs a few tasks with the publisher started, then waits for everything the
# hub has to do, under a bound it must not reach; then the script ends as any would, the
# publisher still started.
STARTED_AND_LEFT = """
    import os
    import gevent
    import ggopool
    from ggopool.prometheus import MultiProcessPublisher, PoolCollector, instrument

    def say(*words):
        # One write per line: the parent and the child share the pipe.
        os.write(1, (" ".join(map(str, words)) + "\\n").encode())

    pool = instrument(ggopool.new_pool("mp", 2))
    publisher = MultiProcessPublisher(PoolCollector([pool]), interval=0.01)
    publisher.start()

    def work(who):
        for _ in range(3):
            pool.go(gevent.sleep, 0.05)
        # True: the loop ran out of things to do; False: the bound passed.
        finished = gevent.wait(timeout=10)
        say(who, os.getpid(), "wait", finished, "completed", pool.stats().completed)

    work("parent")
    # The child watcher's SIGCHLD handler, installed before the child can exit: a
    # child that exits first is otherwise never seen, and waitpid waits for ever.
    gevent.get_hub().loop.install_sigchld()
    child = gevent.fork()
    if child == 0:
        work("child")
        os._exit(0)
    _, status = os.waitpid(child, 0)
    say("status", status)
"""


def test_a_started_publisher_keeps_neither_gevent_wait_nor_the_process_waiting(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    # The script's waits are bounded by 10 s each; the exit by this timeout.
    out = run_python(
        STARTED_AND_LEFT, env=subprocess_env(PROMETHEUS_MULTIPROC_DIR=str(directory)), timeout=40
    )
    said = sorted(line.split() for line in out.stdout.splitlines())
    assert [words[0] for words in said] == ["child", "parent", "status"], out.stdout
    child, parent, status = said
    assert child[2:] == ["wait", "True", "completed", "3"], out.stdout
    assert parent[2:] == ["wait", "True", "completed", "3"], out.stdout
    assert status == ["status", "0"]
    # Not vacuous: the timer ran, in both processes, while their hubs ran.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    found = Scrape(generate_latest(registry).decode())
    pids = {labels["pid"] for labels in found.labels("ggopool_workers")}
    assert pids == {child[1], parent[1]}
