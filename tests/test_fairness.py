"""A backlog of tasks that never yield does not starve the event loop: timers, sockets and
callbacks run while it is worked through, as they do between ``gevent.spawn`` greenlets.

Each task burns the CPU until gevent's switch interval has passed (so that the loop is
overdue after every task), and the tests count tasks, not seconds: a timer started before
the burst must fire before a bounded number of its tasks have run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
import pytest
from gevent import socket
from gevent.event import Event

import ggopool
from ggopool import Config
from ggopool._worker import CHECK_EVERY, NOT_OVERDUE, loop_watch
from tests.conftest import parked_in_order

#: A worker looks at the loop every CHECK_EVERY tasks; the first look starts its clock and
#: the second finds the loop overdue. The loop's turn comes before the next task.
WITHIN = 2 * CHECK_EVERY

#: Tasks in a burst: many more than WITHIN, so that a loop left waiting shows.
BURST = 5 * CHECK_EVERY


#: A 1 ms switch interval instead of 5: the same rule, five times fewer seconds of busy tasks.
pytestmark = pytest.mark.usefixtures("short_switch_interval")


def turns_done(pool: ggopool.Pool) -> None:
    """Wait until the workers (and starts) left waiting for a turn of the loop have had it:
    one each turn, so a bounded number of turns."""
    turns = loop_watch(pool._hub).turns
    for _ in range(100):
        if not turns:
            return
        gevent.idle()  # at least one turn of the loop
    raise AssertionError(f"still waiting for a turn: {turns!r}")


def busy_task(ran: list[int], i: int) -> Callable[[], None]:
    def task() -> None:
        # Without yielding, until the loop is overdue (the clock only decides how long
        # each task burns; what is asserted is a count of tasks).
        end = time.monotonic() + gevent.getswitchinterval()
        while time.monotonic() < end:
            pass
        ran.append(i)

    return task


def test_a_timer_started_before_a_burst_fires_before_it_ends() -> None:
    pool = ggopool.new_pool("burst", 1)
    ran: list[int] = []
    fired_after: list[int] = []
    seen: list[ggopool.PoolStats] = []

    def on_timer() -> None:
        fired_after.append(len(ran))
        seen.append(pool.stats())

    timer = gevent.get_hub().loop.timer(0.0)
    timer.start(on_timer)
    try:
        for i in range(BURST):
            pool.go(busy_task(ran, i))
        assert pool.join(30)
    finally:
        timer.close()
    assert ran == list(range(BURST))
    [n] = fired_after
    assert n <= WITHIN
    # The worker waits for the loop between two tasks: it is not counted as running one.
    [s] = seen
    assert (s.workers, s.idle, s.running, s.pending) == (1, 0, 0, BURST - n)
    # Once the loop has had its turn, nothing is overdue: a worker woken for a task then
    # runs it without reading the loop's iteration.
    turns_done(pool)
    watch = loop_watch(pool._hub)
    for _ in range(10):  # the turn's timer may run after the idle watcher of its iteration
        if watch.overdue == NOT_OVERDUE:
            break
        gevent.idle()
    assert watch.overdue == NOT_OVERDUE


def test_a_socket_is_read_while_a_burst_runs() -> None:
    pool = ggopool.new_pool("burst", 1)
    ran: list[int] = []
    left, right = socket.socketpair()
    read_after: list[int] = []

    def reader() -> None:
        left.recv(1)
        read_after.append(len(ran))

    try:
        reading = gevent.spawn(reader)
        gevent.idle()  # the reader waits on its socket
        right.send(b"x")  # ready now; only the loop's poll can tell the reader
        for i in range(BURST):
            pool.go(busy_task(ran, i))
        assert pool.join(30)
        reading.join(5)
    finally:
        left.close()
        right.close()
    [n] = read_after
    assert n <= WITHIN + 1


def test_gevent_spawn_lets_the_timer_in_too() -> None:
    # The baseline the pool matches: gevent's loop leaves a run of greenlet starts to run
    # its timers once the switch interval has passed (checked every 50 callbacks).
    ran: list[int] = []
    fired_after: list[int] = []
    timer = gevent.get_hub().loop.timer(0.0)
    timer.start(lambda: fired_after.append(len(ran)))
    try:
        greenlets = [gevent.spawn(busy_task(ran, i)) for i in range(120)]
        gevent.joinall(greenlets, timeout=30)
    finally:
        timer.close()
    assert ran == list(range(120))
    [n] = fired_after
    assert n < 120


def test_workers_woken_while_the_loop_is_overdue_wait_their_turn() -> None:
    # Four parked workers are woken by the burst; each would otherwise run tasks until its
    # own look at the loop, one after the other, before the loop could poll.
    pool = ggopool.new_pool("burst", 4, Config(idle_timeout=None))
    parked_in_order(pool, 4)
    ran: list[int] = []
    fired_after: list[int] = []
    timer = gevent.get_hub().loop.timer(0.0)
    timer.start(lambda: fired_after.append(len(ran)))
    try:
        for i in range(BURST):
            pool.go(busy_task(ran, i))
        assert pool.join(30)
    finally:
        timer.close()
    assert sorted(ran) == list(range(BURST))
    [n] = fired_after
    assert n <= WITHIN + 4
    turns_done(pool)  # the woken workers wait for their turn, find no task and park
    s = pool.stats()
    assert (s.workers, s.idle, s.running, s.pending, s.completed) == (4, 4, 0, 0, BURST + 4)


def test_a_burst_from_an_idle_pool_starts_no_worker_while_the_loop_is_overdue() -> None:
    # go() counts a worker to start for each queued task (cap 50); the starts run one each
    # turn of the loop while it is overdue, and those that find the queue empty are never
    # made, as before.
    pool = ggopool.new_pool("burst", 50)
    ran: list[int] = []
    for i in range(BURST):
        pool.go(busy_task(ran, i))
    assert pool.join(30)
    assert sorted(ran) == list(range(BURST))
    turns_done(pool)  # the start left waiting finds the queue empty
    s = pool.stats()
    assert (s.running, s.pending, s.completed) == (0, 0, BURST)
    assert s.workers == s.idle < 50
    assert pool._to_start == 0


def test_kill_while_a_worker_waits_for_the_loop_keeps_the_counts() -> None:
    pool = ggopool.new_pool("burst", 1)
    ran: list[int] = []
    seen: list[ggopool.PoolStats] = []
    killed = Event()

    def on_timer() -> None:
        # In the hub, between two tasks: the worker is waiting for its turn.
        seen.append(pool.stats())
        pool.kill(block=False)
        killed.set()

    timer = gevent.get_hub().loop.timer(0.0)
    timer.start(on_timer)
    try:
        for i in range(BURST):
            pool.go(busy_task(ran, i))
        assert killed.wait(10)
        with gevent.Timeout(5):
            while pool._greenlets:
                gevent.idle()  # the worker is thrown out of its wait, and ends
    finally:
        timer.close()
    [s] = seen
    assert (s.workers, s.running) == (1, 0)
    assert 0 < len(ran) <= WITHIN
    turns_done(pool)
    s = pool.stats()
    assert (s.workers, s.idle, s.running, s.pending) == (0, 0, 0, 0)
    assert (s.completed, s.submitted) == (len(ran), BURST)
    done = Event()
    pool.go(done.set)  # the pool still works
    assert done.wait(5)


def test_set_cap_lowered_while_workers_wait_for_the_loop_runs_no_task_above_it() -> None:
    pool = ggopool.new_pool("burst", 3, Config(idle_timeout=None))
    parked_in_order(pool, 3)
    ran: list[int] = []
    workers_at_start: list[int] = []  # of each task started after the cut
    cut = [False]

    def counted(i: int) -> Callable[[], None]:
        inner = busy_task(ran, i)

        def task() -> None:
            if cut[0]:
                workers_at_start.append(pool.worker_count())
            inner()

        return task

    def on_timer() -> None:
        # In the hub: the three woken workers wait for their turn, none inside a task.
        assert pool.stats().running == 0
        pool.set_cap(1)
        cut[0] = True

    timer = gevent.get_hub().loop.timer(0.0)
    timer.start(on_timer)
    try:
        for i in range(BURST):
            pool.go(counted(i))
        assert pool.join(30)
    finally:
        timer.close()
    assert cut[0]
    assert sorted(ran) == list(range(BURST))
    assert workers_at_start
    assert set(workers_at_start) == {1}
    s = pool.stats()
    assert (s.workers, s.running, s.pending) == (1, 0, 0)
