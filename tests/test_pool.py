"""The pool's scheduling semantics: go() never switches, FIFO, gopool's spawn rule, the free
list, set_cap and contextvars. Workers are held on Events while counts are asserted."""

from __future__ import annotations

import contextvars
import time

import gevent
import greenlet
import pytest
from gevent.event import Event
from gevent.lock import Semaphore

import ggopool
from ggopool import Config

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def test_go_never_switches_and_task_starts_after_the_caller_yields() -> None:
    pool = ggopool.new_pool("t", 10)
    ran: list[int] = []
    switches: list[object] = []
    old = greenlet.settrace(lambda event, args: switches.append(event))
    try:
        for i in range(5):
            pool.go(ran.append, i)
    finally:
        greenlet.settrace(old)
    assert switches == []
    assert ran == []
    gevent.idle()
    assert ran == [0, 1, 2, 3, 4]


def test_tasks_start_in_fifo_order_across_workers() -> None:
    pool = ggopool.new_pool("t", 4)
    started: list[int] = []
    gate = Event()

    def task(i: int) -> None:
        started.append(i)
        gate.wait()

    for i in range(20):
        pool.go(task, i)
    gevent.idle()
    assert started == [0, 1, 2, 3]
    gate.set()
    gevent.idle()
    gevent.idle()
    assert started == list(range(20))


def test_threshold_ten_twelve_go_calls_leave_four_workers() -> None:
    # gopool: the first call starts a worker (none awake); calls 10, 11, 12 each see
    # task_count >= 10 and start one more.
    pool = ggopool.new_pool("t", 100, Config(scale_threshold=10))
    gate = Event()
    for _ in range(12):
        pool.go(gate.wait)
    # The rule asked for 4: gopool counts them at once; the hub makes them at its next
    # turn, and none exists yet.
    assert pool.worker_count() == 4
    assert pool.stats().workers == 0
    assert pool.task_count() == 12
    gevent.idle()
    assert pool.worker_count() == 4
    assert pool.task_count() == 8
    gate.set()


def test_below_threshold_one_worker_runs_everything() -> None:
    pool = ggopool.new_pool("t", 100, Config(scale_threshold=100))
    runners: set[object] = set()
    for _ in range(99):
        pool.go(lambda: runners.add(gevent.getcurrent()))
    assert pool.worker_count() == 1
    gevent.idle()
    assert len(runners) == 1


def test_worker_count_never_exceeds_cap_under_a_burst() -> None:
    pool = ggopool.new_pool("t", 7)
    gate = Event()
    running = 0
    peak = 0

    def task() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        gate.wait()
        running -= 1

    for _ in range(1000):
        pool.go(task)
        assert pool.worker_count() <= 7
    gevent.idle()
    assert pool.worker_count() == 7
    assert running == 7
    assert pool.task_count() == 993
    gate.set()
    with gevent.Timeout(10):
        while pool.task_count() or running:
            gevent.idle()
    assert peak == 7


def test_parked_worker_is_woken_instead_of_starting_a_new_one() -> None:
    pool = ggopool.new_pool("t", 10, Config(idle_timeout=None))
    gate = Event()
    for _ in range(3):
        pool.go(gate.wait)
    gevent.idle()
    first: set[object] = set()
    gate.set()
    gevent.idle()
    assert pool.worker_count() == 3  # all three parked, none exited
    hold = Event()

    def task() -> None:
        first.add(gevent.getcurrent())
        hold.wait()

    pool.go(task)
    assert pool.worker_count() == 3
    gevent.idle()
    assert len(first) == 1
    hold.set()


def test_workers_are_reused_raw_greenlets_not_one_greenlet_per_task() -> None:
    pool = ggopool.new_pool("t", 10, Config(idle_timeout=None))
    runners: list[object] = []
    for _ in range(50):
        pool.go(lambda: runners.append(gevent.getcurrent()))
        gevent.idle()
    assert len(runners) == 50
    assert len(set(map(id, runners))) == 1
    assert not isinstance(runners[0], gevent.Greenlet)
    assert pool.worker_count() == 1


def test_idle_timeout_zero_workers_exit_when_the_queue_is_empty() -> None:
    pool = ggopool.new_pool("t", 10, Config(idle_timeout=0))
    done: list[int] = []
    for i in range(30):
        pool.go(done.append, i)
    assert pool.worker_count() == 10
    gevent.idle()
    assert done == list(range(30))
    assert pool.worker_count() == 0


def test_parked_workers_exit_after_idle_timeout() -> None:
    pool = ggopool.new_pool("t", 10, Config(idle_timeout=0.01))
    gate = Event()
    for _ in range(5):
        pool.go(gate.wait)
    gevent.idle()
    gate.set()
    gevent.idle()
    assert pool.worker_count() == 5
    # Polling a condition under a timeout: the expiry itself is what takes time here.
    with gevent.Timeout(5):
        while pool.worker_count():
            gevent.sleep(0.005)
    # The pool still works after its workers expired.
    done = Event()
    pool.go(done.set)
    assert done.wait(5)


def test_each_parked_worker_leaves_idle_timeout_after_it_parked_the_longest_parked_first() -> None:
    timeout = 0.4
    pool = ggopool.new_pool("t", 2, Config(idle_timeout=timeout))
    first, second = Event(), Event()
    pool.go(first.wait)
    pool.go(second.wait)
    gevent.idle()
    workers = list(pool._greenlets)
    assert pool.stats().running == 2
    first.set()
    gevent.idle()
    [parked_first] = list(pool._parked)
    parked_first_at = time.monotonic()
    gevent.sleep(timeout / 2)
    second.set()
    gevent.idle()
    parked_second_at = time.monotonic()
    [parked_second] = [worker for worker in pool._parked if worker is not parked_first]
    # Polling under a timeout: the expiry itself is what takes time here.
    left_at: dict[object, float] = {}
    with gevent.Timeout(5):
        while len(left_at) < 2:
            gevent.sleep(0.005)
            for worker in (parked_first, parked_second):
                if worker.dead and worker not in left_at:
                    left_at[worker] = time.monotonic()
    # Each left once its own time had come, the longest parked first. (Parks are timed by
    # the loop's clock, which a loaded machine can leave behind the monotonic one: hence
    # the margin. Leaving with the first, the second would be half a timeout early.)
    assert left_at[parked_first] - parked_first_at >= timeout - 0.1
    assert left_at[parked_second] - parked_second_at >= timeout - 0.1
    assert left_at[parked_first] <= left_at[parked_second]
    assert all(worker.dead for worker in workers)
    assert pool._idle_timer is None  # nothing parked: the pool's idle timer is not running
    done = Event()
    pool.go(done.set)
    assert done.wait(5)


def test_wake_up_granted_as_the_idle_timer_fires_is_not_lost() -> None:
    pool = ggopool.new_pool("t", 2, Config(idle_timeout=0.01))
    done: list[int] = []
    for i in range(200):
        with gevent.Timeout(5):
            pool.go(done.append, i)
            while len(done) <= i:
                gevent.sleep(0.0005 * (i % 25))
    assert done == list(range(200))
    assert pool.worker_count() <= 2


def test_lowering_the_cap_loses_no_task_and_extra_workers_leave_after_their_task() -> None:
    pool = ggopool.new_pool("t", 10)
    gate = Event()
    done: list[int] = []

    def task(i: int) -> None:
        gate.wait()
        done.append(i)

    for i in range(25):
        pool.go(task, i)
    gevent.idle()
    assert pool.worker_count() == 10
    pool.set_cap(2)
    assert pool.cap == 2
    assert pool.worker_count() == 10  # running workers finish their current task first
    gate.set()
    gevent.idle()
    gevent.idle()
    assert sorted(done) == list(range(25))
    assert pool.worker_count() == 2


def test_lowering_the_cap_retires_parked_workers_at_once() -> None:
    pool = ggopool.new_pool("t", 10, Config(idle_timeout=None))
    gate = Event()
    for _ in range(6):
        pool.go(gate.wait)
    gevent.idle()
    gate.set()
    gevent.idle()
    assert pool.worker_count() == 6
    pool.set_cap(2)
    assert pool.worker_count() == 2
    gevent.idle()
    assert pool.worker_count() == 2
    ran = Event()
    pool.go(ran.set)
    assert ran.wait(5)
    assert pool.worker_count() == 2


def test_raising_the_cap_starts_workers_for_queued_tasks() -> None:
    pool = ggopool.new_pool("t", 1)
    gate = Event()
    for _ in range(5):
        pool.go(gate.wait)
    gevent.idle()
    assert pool.worker_count() == 1
    assert pool.task_count() == 4
    pool.set_cap(3)
    assert pool.worker_count() == 3
    gevent.idle()
    assert pool.task_count() == 2
    gate.set()


def test_bad_cap_leaves_the_cap_as_it_was() -> None:
    pool = ggopool.new_pool("t", 5)
    for bad, exc in [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)]:
        with pytest.raises(exc, match=rf"^cap must be an int >= 1, got {bad!r}$"):
            pool.set_cap(bad)  # type: ignore[arg-type]
        assert pool.cap == 5


def test_go_runs_the_task_in_the_callers_context() -> None:
    pool = ggopool.new_pool("t", 5)
    seen: list[str] = []
    token = request_id.set("req-42")
    try:
        pool.go(lambda: seen.append(request_id.get()))
    finally:
        request_id.reset(token)
    gevent.idle()
    assert seen == ["req-42"]


def test_nothing_a_task_sets_leaks_into_the_next_task_on_the_same_worker() -> None:
    pool = ggopool.new_pool("t", 1)
    seen: list[str] = []
    pool.go(request_id.set, "leaked")
    pool.go(lambda: seen.append(request_id.get()))
    gevent.idle()
    assert seen == ["-"]
    assert request_id.get() == "-"


def test_ctx_go_runs_each_task_in_its_own_copy_of_ctx() -> None:
    pool = ggopool.new_pool("t", 10)
    ctx = contextvars.Context()
    ctx.run(request_id.set, "shared")
    gate = Semaphore(0)
    seen: list[str] = []

    def task(i: int) -> None:
        seen.append(request_id.get())
        request_id.set(f"task-{i}")
        gate.acquire()  # all run at once with the same ctx
        seen.append(request_id.get())

    for i in range(3):
        pool.ctx_go(ctx, task, i)
    gevent.idle()
    assert seen == ["shared"] * 3
    for _ in range(3):
        gate.release()
    gevent.idle()
    assert sorted(seen[3:]) == ["task-0", "task-1", "task-2"]
    assert ctx[request_id] == "shared"


def test_args_and_kwargs_are_passed() -> None:
    pool = ggopool.new_pool("t", 1)
    got: list[object] = []
    pool.go(lambda *a, **k: got.append((a, k)), 1, 2, x=3)
    pool.ctx_go(contextvars.Context(), lambda *a, **k: got.append((a, k)), 4, y=5)
    gevent.idle()
    assert got == [((1, 2), {"x": 3}), ((4,), {"y": 5})]


def test_name_and_cap_are_read_only() -> None:
    pool = ggopool.new_pool("orders", 3)
    assert pool.name == "orders"
    assert pool.cap == 3
    with pytest.raises(AttributeError):
        pool.name = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        pool.cap = 4  # type: ignore[misc]
    assert "orders" in repr(pool)
