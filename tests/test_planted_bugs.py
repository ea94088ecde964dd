"""Rules the README states that only a stress test, a hang or nothing at all used to check.

Each was found by planting a bug in a copy of the code and watching the suite stay green;
each test here fails, at once and by name, when its rule is broken.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, NoReturn

import gevent
import pytest
from gevent.event import Event
from gevent.monkey import get_original
from greenlet import GreenletExit

import ggopool
from ggopool import Config, _shutdown
from tests.conftest import HubErrors, parked_in_order, wait_then_worker
from tests.subprocess_helpers import printed_lines

HANG = 5.0

#: time.sleep even if a test monkey-patched it: blocks the hub for real.
block_the_hub = get_original("time", "sleep")


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
    # gevent installs libev's SIGCHLD handler when it makes its first child watcher, which
    # the patched fork does in the parent after fork() returns: a child that exits before
    # that is never seen, and os.waitpid waits for ever. Installed first, it cannot miss.
    gevent.get_hub().loop.install_sigchld()
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
    assert sorted(printed_lines(FORK_RELEASES_PARKED)) == [
        # In the child each inherited worker ran to its end; a new one ran the new task.
        "child [True, True, True] 0 0 False",
        "parent [False, False, False] 3 0",
    ]


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


# -- set_cap lowering retires the longest-parked workers first ------------------------------------


def test_set_cap_lowering_retires_the_longest_parked_workers_first() -> None:
    pool = ggopool.new_pool("retire-order", 3, Config(idle_timeout=None))
    workers = parked_in_order(pool, 3)
    pool.set_cap(1)
    gevent.idle()
    assert [worker.dead for worker in workers] == [True, True, False]
    assert list(pool._parked) == workers[2:]
    assert pool.submit(gevent.getcurrent).get(timeout=HANG) is workers[2]


# -- Pool.kill(exception=X) throws X only into workers inside a task ------------------------------


@pytest.mark.parametrize("via", ["submit", "go"])
def test_pool_kill_with_an_exception_throws_it_only_into_workers_inside_a_task(
    hub_errors: HubErrors, via: str
) -> None:
    pool = ggopool.new_pool("kill-x", 2, Config(idle_timeout=None))
    idle, busy = parked_in_order(pool, 2)
    gate = Event()
    inside = pool.submit(gate.wait) if via == "submit" else None
    if inside is None:
        pool.go(gate.wait)
    gevent.idle()  # the most recently parked worker runs it; the other stays parked
    assert list(pool._parked) == [idle]
    stop = ValueError("stop")
    assert pool.kill(exception=stop, timeout=HANG) is True
    assert idle.dead
    assert busy.dead
    reports = hub_errors.take()
    if inside is not None:
        assert inside.exception is stop  # thrown into the task
        assert reports == []  # a submitted task's failure is its reader's
    else:
        # The go() task's failure, once; the parked worker ended with the plain exit,
        # reported nowhere (not as a worker that died between tasks).
        [(context, type_, value)] = reports
        assert type_ is ValueError
        assert value is stop
        assert isinstance(context, ggopool.FailedTask)


# -- in a forked child the gevent surface's members start empty -----------------------------------

FORK_MEMBERS = """
    from gevent import monkey
    monkey.patch_all()

    import os
    import time
    import gevent
    from gevent.event import Event
    import ggopool

    def say(*words):
        os.write(1, (" ".join(map(str, words)) + "\\n").encode())

    pool = ggopool.new_pool("members", 2)
    gate = Event()
    tasks = [pool.spawn(gate.wait) for _ in range(2)]
    gevent.idle()
    say("before", len(pool), pool.full(), pool.free_count())
    pid = os.fork()
    if pid == 0:
        started = time.monotonic()
        free = pool.wait_available(timeout=10)
        waited = time.monotonic() - started
        say("child", len(pool), pool.full(), free, waited < 5, list(pool))
        os._exit(0)
    gate.set()
    gevent.joinall(tasks, timeout=10)
    _, status = os.waitpid(pid, 0)
    say("parent", len(pool), status)
"""


def test_forked_child_starts_with_no_members() -> None:
    assert sorted(printed_lines(FORK_MEMBERS)) == [
        "before 2 True 0",
        "child 0 False 2 True []",
        "parent 0 0",
    ]


# -- a task that kills itself stops at once ---------------------------------------------------------


def test_a_task_that_kills_itself_stops_at_once() -> None:
    pool = ggopool.new_pool("self-kill", 1)
    reached: list[str] = []
    handle: list[ggopool.Task[None]] = []

    def kills_itself() -> None:
        handle[0].kill(block=False)
        reached.append("after the kill")  # a greenlet killing itself never gets here

    handle.append(pool.submit(kills_itself))
    worker = pool.submit(gevent.getcurrent)
    with gevent.Timeout(HANG):
        handle[0].join()
        assert isinstance(handle[0].value, GreenletExit)
        assert reached == []
        # The task ended, not its worker: it runs the next one.
        assert worker.get() is not None
    assert pool.worker_count() == 1


# -- Task.kill(block=True, timeout=t) returns after t for a task that survives kills ---------------


class SpecialError(Exception):
    pass


def survives_kills(shots: list[str]) -> None:
    while True:
        try:
            Event().wait()
        except SpecialError:
            return
        except GreenletExit:
            shots.append("shot")


def test_task_kill_with_a_timeout_returns_after_it_for_a_task_that_survives() -> None:
    pool = ggopool.new_pool("undead", 1)
    shots: list[str] = []
    task = pool.submit(survives_kills, shots)
    gevent.idle()
    started = time.monotonic()
    with gevent.Timeout(HANG):
        task.kill(block=True, timeout=0.05)
    waited = time.monotonic() - started
    assert 0.05 <= waited < HANG
    assert shots == ["shot"]
    assert not task.ready()
    task.kill(SpecialError, timeout=HANG)
    assert task.ready()


# -- cancel() of a pending spawn_later task stops its timer -----------------------------------------

CANCEL_LATER = """
    import time
    import gevent
    import ggopool

    task = ggopool.spawn_later(30, print, "ran")
    gevent.idle()  # its timer is started from the hub
    task.cancel()
    started = time.monotonic()
    print("wait", gevent.wait(timeout=20), round(time.monotonic() - started) == 0)
    print("cancelled", task.cancelled())
"""


def test_cancel_of_a_pending_spawn_later_task_stops_its_timer() -> None:
    # Nothing keeps the loop alive: gevent.wait() returns at once, True (no timeout).
    assert printed_lines(CANCEL_LATER) == ["wait True True", "cancelled True"]


# -- imap ends right after the last result when results complete out of order ---------------------


def test_imap_ends_right_after_the_last_result_when_results_come_out_of_order() -> None:
    pool = ggopool.new_pool("imap", 3)
    gates = [Event() for _ in range(3)]

    def held(i: int) -> int:
        gates[i].wait()
        return i

    results = pool.imap(held, range(3))
    gevent.idle()  # all three are running
    for gate in reversed(gates):  # the last item finishes first
        gate.set()
        gevent.idle()
    with gevent.Timeout(HANG, AssertionError("imap did not end after its last result")):
        assert list(results) == [0, 1, 2]


# -- the drain's progress note gives the time that is left ------------------------------------------


def test_drain_note_gives_the_time_left(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_shutdown, "NOTE_AFTER", 0.3)
    pool = ggopool.new_pool("drained", 1)
    gate = Event()
    pool.go(gate.wait)
    gevent.spawn_later(0.6, gate.set)  # after the note
    with caplog.at_level(logging.WARNING, logger="ggopool"):
        assert ggopool.drain(3.0) is True
    [note] = [r.getMessage() for r in caplog.records if r.name == "ggopool"]
    match = re.fullmatch(
        r"ggopool: draining: waiting up to (\d+\.\d) s more for 1 tasks of pools? .*'drained'.*",
        note,
    )
    assert match, note
    # 3.0 s less the 0.3 s before the note (not the 0.3 s since the drain started).
    assert 2.0 <= float(match.group(1)) <= 2.7, note


# -- a failed spawn_later task nobody reads is reported ---------------------------------------------


def test_failed_spawn_later_task_is_reported_through_the_hub(hub_errors: HubErrors) -> None:
    def fail(url: str) -> NoReturn:
        raise ValueError(f"cannot fetch {url}")

    task = ggopool.spawn_later(0, fail, "/bad")
    with gevent.Timeout(HANG):
        task.join()
    [(context, type_, value)] = hub_errors.take()
    assert context is task
    assert type_ is ValueError
    assert value is task.exception


# -- join(timeout, raise_error=True) that times out raises a member's failure ---------------------


def test_join_that_times_out_raises_a_failed_members_error(hub_errors: HubErrors) -> None:
    # gevent's Group.join(raise_error=True) checks the members after its wait, timed out
    # or not.
    pool = ggopool.new_pool("join", 2)
    gate = Event()

    def fails_when_let_go() -> NoReturn:
        gate.wait()
        raise ValueError("member failed")

    pool.spawn(fails_when_let_go)
    pool.spawn(Event().wait)  # never ends: the join times out
    gevent.idle()
    gevent.get_hub().loop.run_callback(gate.set)  # the first fails while join waits
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"^member failed$"):
        pool.join(timeout=0.1, raise_error=True)
    assert time.monotonic() - started >= 0.1
    [(_, type_, _)] = hub_errors.take()  # and it was reported, as a spawned failure is
    assert type_ is ValueError
    pool.kill(timeout=HANG)


# -- wait_available(timeout) ends on time ------------------------------------------------------------


def test_wait_available_with_a_timeout_ends_on_time() -> None:
    pool = ggopool.new_pool("full", 1)
    pool.spawn(Event().wait)
    gevent.idle()
    assert pool.full()
    started = time.monotonic()
    with gevent.Timeout(HANG, AssertionError("wait_available(0.05) hung")):
        assert pool.wait_available(timeout=0.05) == 0
    assert 0.05 <= time.monotonic() - started < 1.0
    pool.kill(timeout=HANG)


# -- an idle timer firing while its worker is being woken --------------------------------------------


def test_idle_timer_firing_while_its_worker_is_woken_leaves_it_running(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("expire", 1, Config(idle_timeout=0.2))
    [worker] = parked_in_order(pool, 1)
    ran: list[Any] = []
    # A timer that wakes the worker just before its idle timer: the hub is blocked past
    # both, so both fire in one turn of the loop, the wake-up first, and the idle timer
    # finds its worker woken (its WORK switch not yet delivered).
    waker = gevent.get_hub().loop.timer(0.1)
    waker.start(lambda: pool.go(lambda: ran.append(gevent.getcurrent())))
    try:
        block_the_hub(0.4)
        gevent.idle()
        gevent.idle()
    finally:
        waker.close()
    assert ran == [worker]  # woken, it ran the task: the timer did not retire it
    assert hub_errors.take() == []  # and nothing failed in the hub
    s = pool.stats()
    assert (s.workers, s.idle, s.running) == (1, 1, 0)
    assert not worker.dead
