"""Task handles, join/close/kill, max_pending backpressure, map, groups and stats."""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event
from gevent.lock import Semaphore
from greenlet import GreenletExit

import ggopool
from ggopool import Config, PoolClosed, PoolFull, TaskCancelled
from tests.conftest import HubErrors


def boom(msg: str = "boom") -> None:
    raise ValueError(msg)


def check_stats(pool: ggopool.Pool) -> ggopool.PoolStats:
    s = pool.stats()
    assert s.submitted == s.completed + s.failed + s.cancelled + s.running + s.pending
    assert s.workers <= s.cap or s.idle == 0
    return s


# -- Task handles ---------------------------------------------------------------------


def test_submit_returns_a_handle_with_the_value() -> None:
    pool = ggopool.new_pool("t", 2)

    def add(a: int, b: int = 0) -> int:
        return a + b

    task = pool.submit(add, 2, b=3)
    assert not task.ready()
    assert not task.done()
    assert task.value is None
    assert task.get() == 5
    assert task.result() == 5
    assert task.wait() == 5
    assert task.ready()
    assert task.done()
    assert task.successful()
    assert task.value == 5
    assert task.exception is None
    assert not task.cancelled()
    assert "ggopool.Task" in repr(task)


def test_submitted_exception_goes_to_get_not_to_the_panic_handler() -> None:
    pool = ggopool.new_pool("t", 2)
    handled: list[object] = []
    pool.set_panic_handler(lambda ctx, exc: handled.append(exc))
    task = pool.submit(boom, "bad")
    task.join()
    assert not task.successful()
    assert isinstance(task.exception, ValueError)
    with pytest.raises(ValueError, match=r"^bad$") as info:
        task.get()
    assert info.traceback[-1].name == "boom"  # the task's own traceback survives
    assert handled == []
    assert check_stats(pool).failed == 1


def test_get_with_a_timeout_raises_gevent_timeout_and_wait_returns_none() -> None:
    pool = ggopool.new_pool("t", 1)
    gate = Event()
    task = pool.submit(gate.wait)
    with pytest.raises(gevent.Timeout):
        task.get(timeout=0.01)
    with pytest.raises(gevent.Timeout):
        task.get(block=False)
    assert task.wait(timeout=0.01) is None
    gate.set()
    assert task.get() is True


def test_cancel_before_start_never_runs_and_get_raises_cancelled() -> None:
    pool = ggopool.new_pool("t", 1)
    gate = Event()
    pool.go(gate.wait)
    ran: list[int] = []
    task = pool.submit(ran.append, 1)
    assert pool.task_count() == 2
    assert task.cancel() is True
    assert task.cancel() is True  # idempotent, as Future.cancel
    assert task.cancelled()
    assert task.ready()
    assert pool.task_count() == 1
    with pytest.raises(TaskCancelled):
        task.get()
    with pytest.raises(concurrent.futures.CancelledError):
        task.result()
    gate.set()
    assert pool.join(5)
    assert ran == []
    s = check_stats(pool)
    assert (s.completed, s.cancelled) == (1, 1)


def test_cancel_after_start_returns_false_and_the_task_finishes() -> None:
    pool = ggopool.new_pool("t", 1)
    gate = Event()
    task = pool.submit(lambda: gate.wait() and "done")
    gevent.idle()
    assert task.cancel() is False
    assert not task.cancelled()
    gate.set()
    assert task.get() == "done"


def test_kill_a_queued_task_cancels_it() -> None:
    pool = ggopool.new_pool("t", 1)
    gate = Event()
    pool.go(gate.wait)
    task = pool.submit(print, "never")
    task.kill()
    assert task.cancelled()
    gate.set()


def test_kill_a_running_task_blocked_in_io_and_the_worker_recovers() -> None:
    pool = ggopool.new_pool("t", 1)
    gate = Event()
    cleaned: list[str] = []
    runners: list[object] = []

    def blocked() -> None:
        runners.append(gevent.getcurrent())
        try:
            gate.wait()
        finally:
            cleaned.append("finally ran")

    task = pool.submit(blocked)
    after = pool.submit(lambda: runners.append(gevent.getcurrent()))
    gevent.idle()
    task.kill(timeout=5)
    assert task.ready()
    assert task.successful()
    assert isinstance(task.value, GreenletExit)
    assert cleaned == ["finally ran"]
    after.get(timeout=5)
    assert runners[0] is runners[1]  # the same worker took the next task
    assert pool.worker_count() == 1


def test_kill_from_inside_the_task_ends_only_the_task() -> None:
    pool = ggopool.new_pool("t", 1)
    handles: list[ggopool.Task[None]] = []

    def suicidal() -> None:
        handles[0].kill()
        raise AssertionError("not reached")

    handles.append(pool.submit(suicidal))
    assert isinstance(handles[0].get(timeout=5), GreenletExit)
    assert pool.submit(lambda: 7).get(timeout=5) == 7


def test_add_done_callback_runs_on_success_failure_and_cancel(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("t", 1)
    gate = Event()
    seen: list[Any] = []
    pool.go(gate.wait)
    ok = pool.submit(lambda: 1)
    bad = pool.submit(boom)
    dropped = pool.submit(lambda: 2)
    for task in (ok, bad, dropped):
        task.add_done_callback(lambda t: seen.append(t))
    dropped.cancel()
    gate.set()
    pool.join(5)
    gevent.idle()
    assert seen == [dropped, ok, bad]
    with pytest.raises(TypeError, match=r"^fn must be callable, got 3$"):
        ok.add_done_callback(3)  # type: ignore[arg-type]


def test_spawn_runs_on_the_default_pool_and_works_with_joinall() -> None:
    def square(i: int) -> int:
        return i * i

    tasks = [ggopool.spawn(square, i) for i in range(10)]
    done = gevent.joinall(tasks, timeout=5)
    assert done == tasks
    assert [t.value for t in tasks] == [i * i for i in range(10)]
    # In the order their notifications run, as for greenlets: all of them.
    assert set(gevent.wait(tasks, timeout=5)) == set(tasks)


# -- join, close, kill, with ----------------------------------------------------------


def test_join_waits_for_queued_and_running_tasks_and_times_out_false() -> None:
    pool = ggopool.new_pool("t", 2)
    assert pool.join() is True  # nothing to wait for
    gate = Event()
    for _ in range(5):
        pool.go(gate.wait)
    assert pool.join(timeout=0.01) is False
    gate.set()
    assert pool.join(timeout=5) is True
    assert check_stats(pool).completed == 5


def test_close_while_tasks_are_queued_runs_them_and_refuses_new_ones() -> None:
    pool = ggopool.new_pool("t", 1)
    gate = Event()
    done: list[int] = []
    pool.go(gate.wait)
    for i in range(3):
        pool.go(done.append, i)
    pool.close()
    pool.close()
    assert pool.closed
    with pytest.raises(PoolClosed, match=r"^pool 't' is closed: it accepts no new tasks$"):
        pool.go(done.append, 99)
    with pytest.raises(PoolClosed):
        pool.submit(done.append, 99)
    with pytest.raises(PoolClosed):
        pool.try_go(done.append, 99)
    assert issubclass(PoolClosed, RuntimeError)
    gate.set()
    assert pool.join(5)
    assert done == [0, 1, 2]
    gevent.idle()
    assert pool.worker_count() == 0  # a closed pool's workers do not park
    s = check_stats(pool)
    assert (s.rejected, s.submitted) == (3, 4)


def test_with_block_closes_and_joins() -> None:
    done: list[int] = []
    with ggopool.new_pool("t", 3) as pool:
        for i in range(10):
            pool.go(done.append, i)
    assert pool.closed
    assert sorted(done) == list(range(10))


def test_pool_kill_cancels_queued_and_kills_running() -> None:
    pool = ggopool.new_pool("t", 2, Config(idle_timeout=None))
    gate = Event()
    ran: list[int] = []
    running = [pool.submit(gate.wait) for _ in range(2)]
    queued = [pool.submit(ran.append, i) for i in range(3)]
    pool.go(ran.append, 99)
    gevent.idle()
    assert pool.kill(timeout=5) is True
    assert all(isinstance(t.get(), GreenletExit) for t in running)
    assert all(t.cancelled() for t in queued)
    assert ran == []
    assert pool.worker_count() == 0
    assert pool.task_count() == 0
    s = check_stats(pool)
    assert (s.cancelled, s.completed, s.running, s.pending) == (4, 2, 0, 0)
    assert pool.submit(lambda: "alive").get(timeout=5) == "alive"  # still usable


def test_pool_kill_with_parked_workers() -> None:
    pool = ggopool.new_pool("t", 3, Config(idle_timeout=None))
    gate = Event()
    for _ in range(3):
        pool.go(gate.wait)
    gevent.idle()
    gate.set()
    gevent.idle()
    assert pool.worker_count() == 3
    assert pool.kill(timeout=5) is True
    assert pool.worker_count() == 0


# -- max_pending ------------------------------------------------------------------------


def test_max_pending_makes_go_wait_for_room_in_an_ordinary_greenlet() -> None:
    pool = ggopool.new_pool("t", 1, Config(max_pending=2))
    gate = Event()
    pool.go(gate.wait)
    gevent.idle()  # the worker holds the first task; the queue is empty
    order: list[str] = []

    def producer() -> None:
        for i in range(4):
            pool.go(order.append, f"task {i}")
            order.append(f"queued {i}")

    g = gevent.spawn(producer)
    gevent.idle()
    assert order == ["queued 0", "queued 1"]  # blocked on the third
    assert pool.task_count() == 2
    assert not g.dead
    gate.set()
    g.join(5)
    assert pool.join(5)
    assert [x for x in order if x.startswith("task")] == [f"task {i}" for i in range(4)]


def test_full_queue_from_the_hub_raises_pool_full(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("t", 1, Config(max_pending=1))
    gate = Event()
    pool.go(gate.wait)
    gevent.idle()
    pool.go(print)
    results: list[object] = []

    def from_hub() -> None:
        try:
            pool.go(print)
        except PoolFull as exc:
            results.append(exc)

    gevent.get_hub().loop.run_callback(from_hub)
    gevent.idle()
    [exc] = results
    assert str(exc) == (
        "pool 't' is full: max_pending=1 tasks are queued, and waiting for room from "
        "the hub could deadlock"
    )
    assert pool.task_count() == 1
    gate.set()
    pool.join(5)
    assert check_stats(pool).rejected == 1


def test_full_queue_from_one_of_its_own_workers_raises_pool_full() -> None:
    pool = ggopool.new_pool("t", 1, Config(max_pending=1))
    gate = Event()

    def submits_to_its_own_full_pool() -> str:
        pool.go(gate.wait)  # fills the queue: the only worker is this one
        try:
            pool.go(print)
        except PoolFull as exc:
            return str(exc)
        return "no error"

    task = pool.submit(submits_to_its_own_full_pool)
    msg = task.get(timeout=5)
    assert msg.endswith("waiting for room from one of its own workers could deadlock")
    gate.set()
    assert pool.join(5)


def test_try_go_never_waits() -> None:
    pool = ggopool.new_pool("t", 1, Config(max_pending=1))
    gate = Event()
    assert pool.try_go(gate.wait) is True
    gevent.idle()
    assert pool.try_go(print) is True
    assert pool.try_go(print) is False
    assert pool.task_count() == 1
    with pytest.raises(TypeError, match=r"^fn must be callable, got 1$"):
        pool.try_go(1)  # type: ignore[arg-type]
    gate.set()
    pool.join(5)
    assert check_stats(pool).rejected == 1


def test_close_wakes_greenlets_waiting_for_room_with_pool_closed() -> None:
    pool = ggopool.new_pool("t", 1, Config(max_pending=1))
    gate = Event()
    pool.go(gate.wait)
    gevent.idle()
    pool.go(print)
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            pool.go(print)
        except PoolClosed as exc:
            errors.append(exc)

    g = gevent.spawn(producer)
    gevent.idle()
    pool.close()
    g.join(5)
    assert len(errors) == 1
    gate.set()


def test_max_pending_must_be_an_int_at_least_one() -> None:
    with pytest.raises(ValueError, match=r"^max_pending must be an int >= 1, got 0$"):
        Config(max_pending=0)
    with pytest.raises(TypeError, match=r"^max_pending must be an int >= 1, got 1.5$"):
        Config(max_pending=1.5)  # type: ignore[arg-type]


# -- map, imap_unordered, group -------------------------------------------------------------


def test_map_returns_results_in_order() -> None:
    pool = ggopool.new_pool("t", 3)
    assert pool.map(lambda x: x * 2, range(10)) == [x * 2 for x in range(10)]
    assert pool.map(lambda x: x, []) == []


def test_map_with_an_exception_in_the_middle_raises_it_after_the_rest_finish() -> None:
    pool = ggopool.new_pool("t", 2)
    finished: list[int] = []

    def f(x: int) -> int:
        gevent.sleep(0)
        if x in (3, 6):
            raise ValueError(f"bad {x}")
        finished.append(x)
        return x

    with pytest.raises(ValueError, match=r"^bad 3$"):
        pool.map(f, range(8))
    assert sorted(finished) == [0, 1, 2, 4, 5, 7]


def test_imap_unordered_yields_as_tasks_complete() -> None:
    pool = ggopool.new_pool("t", 3)
    gates = [Event() for _ in range(3)]

    def f(i: int) -> int:
        gates[i].wait()
        return i

    it = pool.imap_unordered(f, range(3))
    gates[2].set()
    assert next(it) == 2
    gates[0].set()
    assert next(it) == 0
    gates[1].set()
    assert list(it) == [1]


def test_group_waits_for_all_and_returns_true() -> None:
    pool = ggopool.new_pool("t", 2)
    with pool.group() as g:
        tasks = [g.go(int, i) for i in range(5)]
    assert [t.get() for t in tasks] == list(range(5))
    assert g.wait() is True
    assert g.tasks == tasks


def test_group_wait_raises_the_first_failure_and_times_out_false() -> None:
    pool = ggopool.new_pool("t", 2)
    gate = Event()
    g = pool.group()
    g.go(gate.wait)
    g.go(boom, "first")
    assert g.wait(timeout=0.01) is False
    gate.set()
    with pytest.raises(ValueError, match=r"^first$"):
        g.wait(5)


def test_group_whose_first_task_fails_with_cancel_on_error_cancels_the_rest() -> None:
    pool = ggopool.new_pool("t", 1)
    ran: list[int] = []
    g = pool.group(cancel_on_error=True)
    g.go(boom, "first")
    rest = [g.go(ran.append, i) for i in range(5)]
    with pytest.raises(ValueError, match=r"^first$"):
        g.wait(5)
    assert ran == []
    assert all(t.cancelled() for t in rest)
    assert check_stats(pool).cancelled == 5


def test_group_tasks_respect_the_pool_cap() -> None:
    pool = ggopool.new_pool("t", 2)
    sem = Semaphore(0)
    g = pool.group()
    for _ in range(6):
        g.go(sem.acquire)
    gevent.idle()
    assert pool.worker_count() == 2
    assert pool.task_count() == 4
    for _ in range(6):
        sem.release()
    assert g.wait(5)


def test_group_context_manager_lets_the_block_exception_through() -> None:
    pool = ggopool.new_pool("t", 2)
    g = pool.group()

    def block() -> None:
        with g:
            g.go(boom)
            raise KeyError("block")

    with pytest.raises(KeyError):
        block()
    assert g.tasks[0].ready()  # the group still waited for its task
    with pytest.raises(TypeError, match=r"^cancel_on_error must be a bool, got 1$"):
        pool.group(cancel_on_error=1)  # type: ignore[arg-type]


# -- stats ----------------------------------------------------------------------------


def test_stats_counts_every_outcome(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("stats", 2, Config(max_pending=10))
    gate = Event()
    pool.go(gate.wait)
    pool.go(gate.wait)
    pool.go(boom)
    pool.submit(boom)
    c = pool.submit(print)
    c.cancel()
    gevent.idle()
    s = check_stats(pool)
    assert (s.name, s.cap, s.workers, s.running, s.pending) == ("stats", 2, 2, 2, 2)
    gate.set()
    pool.join(5)
    s = check_stats(pool)
    assert (s.submitted, s.completed, s.failed, s.cancelled, s.running, s.pending) == (
        5,
        2,
        2,
        1,
        0,
        0,
    )
    assert [t for _, t, _ in hub_errors.take()] == [ValueError]  # the go() one only
    with pytest.raises(AttributeError):
        s.cap = 3  # type: ignore[misc]


def test_join_from_one_of_its_own_tasks_without_a_timeout_is_a_runtime_error() -> None:
    pool = ggopool.new_pool("t", 2)

    def joins_its_own_pool() -> None:
        pool.join()

    task = pool.submit(joins_its_own_pool)
    with pytest.raises(
        RuntimeError,
        match=r"^cannot join pool 't' from one of its own tasks without a timeout: "
        r"it would wait for itself forever$",
    ):
        task.get(timeout=5)


def test_join_from_one_of_its_own_tasks_waits_out_its_timeout_as_gevents() -> None:
    pool = ggopool.new_pool("t", 2)
    other = Event()
    pool.go(other.wait)

    def joins_its_own_pool() -> tuple[bool, bool]:
        started = time.monotonic()
        quiet = pool.join(0.05)
        return quiet, time.monotonic() - started >= 0.05

    # gevent's Group.join from a member waits for every member, itself included: it
    # returns only as the timeout passes, even once the others are done.
    other.set()
    assert pool.submit(joins_its_own_pool).get(timeout=5) == (False, True)
    assert pool.join(5)


@pytest.mark.parametrize(
    ("timeout", "exc"),
    [("1", TypeError), (True, TypeError), (-1, ValueError), (float("nan"), ValueError)],
)
def test_every_timeout_is_checked_before_anything_happens(
    timeout: object, exc: type[Exception]
) -> None:
    pool = ggopool.new_pool("t", 1)
    gate = Event()
    running = pool.submit(gate.wait)
    queued = pool.submit(gate.wait)
    gevent.idle()
    msg = rf"^timeout must be None or a number of seconds >= 0, got {re.escape(repr(timeout))}$"
    calls: list[Callable[[], object]] = [
        lambda: pool.join(timeout),  # type: ignore[arg-type]
        lambda: pool.kill(timeout),  # type: ignore[arg-type]
        lambda: running.get(timeout=timeout),  # type: ignore[arg-type]
        lambda: running.wait(timeout),  # type: ignore[arg-type]
        lambda: running.join(timeout),  # type: ignore[arg-type]
        lambda: running.result(timeout),  # type: ignore[arg-type]
        lambda: running.kill(timeout=timeout),  # type: ignore[arg-type]
        lambda: pool.group().wait(timeout),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(exc, match=msg):
            call()
    gevent.idle()
    assert not running.ready()
    assert not queued.ready()
    assert pool.worker_count() == 1
    gate.set()
    assert pool.join(float("inf"))
