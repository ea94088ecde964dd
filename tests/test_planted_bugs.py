"""Rules the README states that only a stress test, a hang or nothing at all used to check.

Each was found by planting a bug in a copy of the code and watching the suite stay green;
each test here fails, at once and by name, when its rule is broken.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from typing import Any, NoReturn

import gevent
import pytest
from gevent.event import Event

import ggopool
from ggopool import Config

HANG = 5.0


def wait_then_worker(gate: Event) -> Any:
    """A task: wait for ``gate``, then return the worker greenlet it ran on."""
    gate.wait()
    return gevent.getcurrent()


def parked_in_order(pool: ggopool.Pool, n: int) -> list[Any]:
    """Park ``n`` workers one after the other; their greenlets, longest parked first."""
    gates = [Event() for _ in range(n)]
    tasks = [pool.submit(wait_then_worker, gate) for gate in gates]
    gevent.idle()
    for gate in gates:
        gate.set()
        gevent.idle()
    workers = [task.get(block=False) for task in tasks]
    assert len(set(workers)) == n
    assert pool.stats().idle == n
    return workers


# -- a group raises its first failure ---------------------------------------------------------


@pytest.mark.parametrize("how", ["wait", "with"])
def test_group_raises_the_first_failure_in_the_order_the_tasks_failed(how: str) -> None:
    pool = ggopool.new_pool("group", 2)
    gate = Event()

    def fails_second() -> NoReturn:
        gate.wait()
        raise ValueError("failed second")

    def fails_first() -> NoReturn:
        gate.set()
        raise KeyError("failed first")

    def run(group: ggopool.TaskGroup) -> None:
        if how == "wait":
            group.go(fails_second)  # submitted first, fails last
            group.go(fails_first)
            group.wait()
        else:
            with group:
                group.go(fails_second)
                group.go(fails_first)

    group = pool.group()
    with pytest.raises(KeyError, match="failed first"), gevent.Timeout(HANG):
        run(group)
    later, sooner = group.tasks
    assert isinstance(later.exception, ValueError)  # both failed: the first one won
    assert isinstance(sooner.exception, KeyError)


# -- a wake-up takes the most recently parked worker ------------------------------------------


def test_wake_up_takes_the_most_recently_parked_worker() -> None:
    pool = ggopool.new_pool("lifo", 3, Config(idle_timeout=None))
    workers = parked_in_order(pool, 3)
    # One task at a time: always the same, most recently parked worker, so the others'
    # idle timers run on and a pool needing one worker keeps one.
    for _ in range(3):
        assert pool.submit(gevent.getcurrent).get(timeout=HANG) is workers[-1]
        gevent.idle()
    # Two at once: the two most recently parked, the newest first.
    gate = Event()
    first = pool.submit(wait_then_worker, gate)
    second = pool.submit(wait_then_worker, gate)
    gevent.idle()
    gate.set()
    assert [first.get(timeout=HANG), second.get(timeout=HANG)] == [workers[2], workers[1]]


# -- a forked child releases the parked workers it inherited -----------------------------------

FORK_RELEASES_PARKED = """
    from gevent import monkey
    monkey.patch_all()

    import os
    import gevent
    from gevent.event import Event
    import ggopool


    def say(*words):
        # One write per line: the parent and the child share the pipe.
        os.write(1, (" ".join(map(str, words)) + "\\n").encode())

    pool = ggopool.new_pool("fork", 3, ggopool.Config(idle_timeout=None))
    gates = [Event() for _ in range(3)]
    tasks = [pool.submit(lambda g=g: (g.wait(), gevent.getcurrent())[1]) for g in gates]
    gevent.idle()
    for gate in gates:
        gate.set()
        gevent.idle()
    workers = [task.get() for task in tasks]
    assert pool.stats().idle == 3
    pid = os.fork()
    if pid == 0:
        for _ in range(3):
            gevent.idle()
        s = pool.stats()
        fresh = pool.submit(gevent.getcurrent).get(timeout=10)
        say("child", [w.dead for w in workers], s.workers, s.idle, fresh in workers)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    say("parent", [w.dead for w in workers], pool.stats().idle, status)
"""


def test_forked_child_releases_the_parked_workers_it_inherited() -> None:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK_RELEASES_PARKED)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == [
        # In the child each inherited worker ran to its end; a new one ran the new task.
        "child [True, True, True] 0 0 False",
        "parent [False, False, False] 3 0",
    ], out.stderr


# -- a thread's hand-over goes through the pool's hub --------------------------------------------


def test_go_from_another_thread_changes_nothing_until_the_pool_thread_takes_it() -> None:
    pool = ggopool.new_pool("threads", 2)
    pool_thread = threading.get_ident()
    ran: list[tuple[int, Any]] = []

    def task(i: int) -> None:
        ran.append((threading.get_ident(), gevent.getcurrent()))

    def submitter() -> None:
        for i in range(3):
            pool.go(task, i)

    thread = threading.Thread(target=submitter)
    thread.start()
    thread.join(HANG)  # blocks this thread's hub: it cannot take the tasks yet
    assert not thread.is_alive()
    # Accepted and counted as pending, but no worker was started from the other thread.
    s = pool.stats()
    assert (s.workers, s.idle, s.running, s.pending, s.submitted) == (0, 0, 0, 3, 3)
    assert ran == []
    with gevent.Timeout(HANG):
        assert pool.join()
    assert [ident for ident, _ in ran] == [pool_thread] * 3
    assert all(greenlet is not gevent.get_hub() for _, greenlet in ran)
    assert pool.stats().completed == 3


# -- a worker started or woken just before a cap cut takes no task above it ---------------------


@pytest.mark.parametrize("how", ["started", "woken"])
def test_worker_started_just_before_a_cap_cut_takes_no_task_above_it(how: str) -> None:
    pool = ggopool.new_pool("cut", 4, Config(idle_timeout=None))
    if how == "woken":
        parked_in_order(pool, 4)
    gate = Event()
    running: list[int] = []
    most = [0]

    def task(i: int) -> None:
        running.append(i)
        most[0] = max(most[0], len(running))
        gate.wait()
        running.remove(i)

    for i in range(4):
        pool.go(task, i)  # four workers started or woken; none has run yet
    pool.set_cap(1)
    gevent.idle()
    assert running == [0]
    assert pool.task_count() == 3
    gate.set()
    with gevent.Timeout(HANG):
        assert pool.join()
    assert most == [1]
    assert pool.worker_count() <= 1


# -- a kill on a bounded pool frees every slot ------------------------------------------------


def test_pool_kill_on_a_bounded_pool_frees_the_slots_of_what_it_cancelled() -> None:
    pool = ggopool.new_pool("bounded", 1, Config(max_pending=3, idle_timeout=None))
    gate = Event()
    pool.go(gate.wait)
    gevent.idle()
    pool.go(gate.wait)
    pool.submit(gate.wait)
    pool.go(gate.wait)
    assert pool.try_go(gate.wait) is False  # full
    assert pool.kill(timeout=HANG) is True
    ran: list[int] = []
    assert [pool.try_go(ran.append, i) for i in range(3)] == [True, True, True]
    assert pool.try_go(ran.append, 3) is False  # and the bound still holds
    with gevent.Timeout(HANG):
        assert pool.join()
    assert ran == [0, 1, 2]
    s = pool.stats()
    assert (s.cancelled, s.rejected, s.pending) == (3, 2, 0)
