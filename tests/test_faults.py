"""Faults injected into running pools: killed workers, a panic handler that raises,
KeyboardInterrupt and SystemExit from tasks, a task that blocks the hub, the cap changed
under load, idle expiry racing new tasks. Through all of them no task is lost or run twice.

Every random choice comes from a seeded ``random.Random``; with no real I/O in the tasks,
gevent's scheduling is deterministic, so each run injects the same faults.
"""

from __future__ import annotations

import contextvars
import random
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event
from greenlet import GreenletExit

import ggopool
from ggopool import Config, FailedTask
from tests.conftest import HubErrors
from tests.subprocess_helpers import run_python

SEED = 20240601


def check_stats(pool: ggopool.Pool) -> ggopool.PoolStats:
    s = pool.stats()
    assert s.submitted == s.completed + s.failed + s.cancelled + s.running + s.pending
    return s


# -- GreenletExit thrown into running workers -------------------------------------------------


def test_greenlet_exit_thrown_into_running_workers_at_random_loses_no_task() -> None:
    rng = random.Random(SEED)
    pool = ggopool.new_pool("faults", 8, Config(idle_timeout=None))
    n = 5_000
    starts: Counter[int] = Counter()
    finished: set[int] = set()
    killed: set[int] = set()
    running: dict[int, Any] = {}  # task -> the worker greenlet running it
    over_cap: list[tuple[int, int]] = []

    def task(i: int, yields: int) -> None:
        starts[i] += 1
        running[i] = gevent.getcurrent()
        if pool.worker_count() > pool.cap:
            over_cap.append((pool.worker_count(), pool.cap))
        try:
            for _ in range(yields):
                gevent.sleep(0)
        except GreenletExit:
            killed.add(i)
            raise
        finally:
            del running[i]
        finished.add(i)

    handles: list[ggopool.Task[None]] = []
    for i in range(n):
        if i % 2:
            pool.go(task, i, rng.randrange(4))
        else:
            handles.append(pool.submit(task, i, rng.randrange(4)))

    thrown = 0
    task_kills = 0
    while pool.task_count() or running:
        gevent.sleep(0)
        if running and rng.random() < 0.3:
            i = rng.choice(sorted(running))
            if i % 2 == 0 and rng.random() < 0.5:
                handles[i // 2].kill(block=False)  # aimed at the task: its worker goes on
                task_kills += 1
            else:
                gevent.kill(running[i])  # aimed at the worker: it ends, another takes over
                thrown += 1
    assert pool.join(timeout=None)
    print(
        f"\n{n} tasks; GreenletExit thrown into {thrown} workers and {task_kills} tasks; "
        f"{len(killed)} tasks killed mid-run"
    )
    assert thrown > 20
    assert task_kills > 20
    assert set(starts) == set(range(n))
    assert set(starts.values()) == {1}  # every task ran, none twice
    assert finished | killed == set(range(n))
    assert not finished & killed
    # A kill is thrown from the hub a moment later: by then the task may have finished,
    # and the exit lands in the worker's next task, or in the worker parked.
    assert 0 < len(killed) <= thrown + task_kills
    assert over_cap == []
    s = check_stats(pool)
    assert (s.submitted, s.completed, s.failed, s.cancelled) == (n, n, 0, 0)
    assert all(
        isinstance(h.value, GreenletExit) == (2 * k in killed) for k, h in enumerate(handles)
    )
    assert pool.worker_count() <= pool.cap
    assert pool.submit(lambda: "alive").get() == "alive"


# -- the panic handler -----------------------------------------------------------------------


def test_a_panic_handler_that_raises_is_reported_and_every_worker_goes_on(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("faults", 3)
    calls: list[int] = []
    ran: list[int] = []

    def handler(ctx: contextvars.Context, exc: Exception) -> None:
        calls.append(int(str(exc)))
        raise RuntimeError(f"handler failed on {exc}")

    def task(i: int) -> None:
        ran.append(i)
        gevent.sleep(0)
        if i % 3 == 0:
            raise ValueError(str(i))

    pool.set_panic_handler(handler)
    workers = set()
    for i in range(30):
        pool.go(task, i)
    pool.go(lambda: workers.add(gevent.getcurrent()))
    assert pool.join(timeout=None)
    assert sorted(ran) == list(range(30))
    assert calls == list(range(0, 30, 3))
    errors = hub_errors.take()
    assert len(errors) == 10
    for context, type_, value in errors:
        assert isinstance(context, FailedTask)
        assert repr(context).startswith("<panic handler ")
        assert type_ is RuntimeError
        assert str(value).startswith("handler failed on ")
    s = check_stats(pool)
    assert (s.completed, s.failed) == (21, 10)


def test_a_panic_handler_that_raises_greenlet_exit_ends_its_worker_only() -> None:
    pool = ggopool.new_pool("faults", 1)
    ran: list[int] = []

    def handler(ctx: contextvars.Context, exc: Exception) -> None:
        raise GreenletExit

    def task(i: int) -> None:
        ran.append(i)
        if i == 0:
            raise ValueError("first")

    pool.set_panic_handler(handler)
    for i in range(5):
        pool.go(task, i)
    assert pool.join(timeout=None)
    assert ran == [0, 1, 2, 3, 4]  # the worker ended in the handler; a new one took over
    assert check_stats(pool).failed == 1


# -- KeyboardInterrupt and SystemExit from tasks, as with gevent.spawn ----------------------

SYSTEM_ERROR_SCRIPT = textwrap.dedent(
    """
    import sys
    import gevent
    from gevent.event import Event
    import ggopool

    how, name, caught = sys.argv[1], sys.argv[2], sys.argv[3] == "caught"
    exc_type = {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}[name]

    def task():
        raise exc_type("from a task")

    pool = ggopool.new_pool("p", 2)
    if how == "spawn":
        gevent.spawn(task)
    elif how == "go":
        pool.go(task)
    else:
        pool.submit(task)
    try:
        Event().wait(timeout=30)
        print("main greenlet: nothing raised")
    except BaseException as exc:
        print(f"main greenlet: {type(exc).__name__}: {exc}")
        if not caught:
            raise
    # The pool still works afterwards.
    print("after:", pool.submit(lambda: 42).get(timeout=10))
    """
)


def run_system_error(how: str, name: str, caught: bool) -> tuple[int, str, str]:
    out = run_python(SYSTEM_ERROR_SCRIPT, how, name, "caught" if caught else "raise", check=False)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.parametrize("name", ["KeyboardInterrupt", "SystemExit"])
def test_system_errors_from_tasks_reach_the_main_greenlet_as_with_gevent_spawn(
    name: str,
) -> None:
    for caught in (True, False):
        code, stdout, stderr = run_system_error("spawn", name, caught)
        expected = f"main greenlet: {name}: from a task\n"
        assert stdout.startswith(expected), (stdout, stderr)
        for how in ("go", "submit"):
            got_code, got_stdout, got_stderr = run_system_error(how, name, caught)
            assert (got_code, got_stdout) == (code, stdout), (how, got_stderr)
            # gevent prints a KeyboardInterrupt's report (not a SystemExit's); so does ggopool.
            assert (name in got_stderr) == (name in stderr), (how, stderr, got_stderr)
        if caught:
            assert stdout == expected + "after: 42\n"
            assert code == 0


# -- a task that blocks the hub ------------------------------------------------------------


def test_a_task_that_blocks_the_hub_delays_the_rest_which_then_recover() -> None:
    pool = ggopool.new_pool("faults", 4)
    events: list[str] = []
    gate = Event()

    def blocker() -> None:
        events.append("block start")
        time.sleep(0.2)  # not monkey-patched: the whole hub stops
        events.append("block end")

    def waiter(i: int) -> None:
        events.append(f"wait {i}")
        gevent.sleep(0.01)  # a timer that expires while the hub is blocked
        gate.wait()
        events.append(f"done {i}")

    def yielder(i: int) -> None:
        for _ in range(3):
            gevent.sleep(0)
        events.append(f"yielded {i}")

    for i in range(3):
        pool.go(waiter, i)
    pool.go(blocker)
    for i in range(20):
        pool.go(yielder, i)
    gevent.idle()
    start, end = events.index("block start"), events.index("block end")
    assert end == start + 1  # nothing else ran while the hub was blocked
    assert events[:3] == ["wait 0", "wait 1", "wait 2"]
    gate.set()
    assert pool.join(timeout=None)
    assert sorted(e for e in events if e.startswith("done")) == [f"done {i}" for i in range(3)]
    assert len([e for e in events if e.startswith("yielded")]) == 20
    s = check_stats(pool)
    assert (s.completed, s.running, s.pending) == (24, 0, 0)
    assert pool.worker_count() <= 4


# -- set_cap 1,000 times under 100,000 tasks ---------------------------------------------------


def test_set_cap_changed_a_thousand_times_while_a_hundred_thousand_tasks_run() -> None:
    rng = random.Random(SEED)
    n, changes = 100_000, 1_000
    pool = ggopool.new_pool("faults", 8, Config(idle_timeout=None))
    runs = bytearray(n)
    live: set[int] = set()
    allowed: set[int] = set()  # tasks running when the cap was last set
    violations: list[str] = []

    def task(i: int) -> None:
        runs[i] += 1
        live.add(i)
        # The documented rule: above the cap only workers whose task started before it
        # was set, and they leave after it. So every task starts within the cap.
        over = len(live) - pool.cap
        if over > len(live & allowed):
            violations.append(f"task {i}: {len(live)} running, cap {pool.cap}")
        if pool.worker_count() > pool.cap + len(live & allowed):
            violations.append(f"task {i}: {pool.worker_count()} workers, cap {pool.cap}")
        gevent.sleep(0)
        live.discard(i)

    for i in range(n):
        pool.go(task, i)
    done = 0
    while done < changes:
        cap = rng.randint(1, 16)
        before = pool.stats()
        allowed.clear()
        allowed.update(live)
        pool.set_cap(cap)
        after = pool.stats()
        done += 1
        assert after.cap == cap
        if cap < before.workers:
            # Workers not inside a task (parked, to be started, woken) above the new cap
            # leave at once; running ones stay until their task is done.
            assert after.workers == max(cap, before.running), (before, after)
            assert after.idle == max(0, before.idle - (before.workers - cap))
        else:
            assert after.workers <= cap
        assert after.running == before.running  # no task was stopped
        for _ in range(rng.randint(1, 20)):
            gevent.sleep(0)
    assert pool.join(timeout=None)
    print(f"\n{n} tasks under {changes} cap changes")
    assert violations[:5] == []
    assert runs == bytearray([1]) * n
    s = check_stats(pool)
    assert (s.submitted, s.completed, s.failed) == (n, n, 0)
    assert pool.worker_count() <= pool.cap


def test_a_worker_woken_before_the_cap_is_lowered_starts_no_task_above_it() -> None:
    pool = ggopool.new_pool("faults", 3, Config(idle_timeout=None))
    held, once = Event(), Event()
    pool.go(held.wait)
    pool.go(held.wait)
    pool.go(once.wait)
    gevent.idle()
    once.set()
    gevent.idle()
    assert (pool.stats().running, pool.stats().idle) == (2, 1)
    seen: list[int] = []
    pool.go(lambda: seen.append(pool.stats().running))  # wakes the parked worker
    pool.set_cap(1)
    gevent.idle()
    # Two tasks run, above the new cap of 1, until they end; the queued one waits.
    assert seen == []
    assert pool.task_count() == 1
    held.set()
    assert pool.join(timeout=None)
    assert seen == [1]
    assert pool.worker_count() <= 1


# -- idle expiry racing new submissions ---------------------------------------------------------


def test_idle_expiry_racing_new_submissions_loses_nothing() -> None:
    rng = random.Random(SEED)
    idle_timeout = 0.002
    pool = ggopool.new_pool("faults", 4, Config(idle_timeout=idle_timeout))
    runs: Counter[int] = Counter()
    submitted = 0
    peak_workers = 0
    for _ in range(300):
        for _ in range(rng.randint(1, 6)):
            pool.go(runs.update, (submitted,))
            submitted += 1
        peak_workers = max(peak_workers, pool.worker_count())
        # Not synchronisation: the workload. Pauses around the idle timeout make new
        # tasks arrive just before, as and just after parked workers expire.
        gevent.sleep(rng.choice([0, idle_timeout / 2, idle_timeout, idle_timeout * 1.5]))
    assert pool.join(timeout=None)
    assert runs == Counter(range(submitted))  # every task once
    assert peak_workers <= 4
    s = check_stats(pool)
    assert (s.submitted, s.completed) == (submitted, submitted)
    # Expiry takes real time: poll for it, bounded.
    with gevent.Timeout(30):
        while pool.worker_count():
            gevent.sleep(idle_timeout)
    assert pool.stats().idle == 0
    pool.go(runs.update, (-1,))  # and the pool starts again from no workers
    assert pool.join(timeout=None)
    assert runs[-1] == 1


# -- rarer paths: kills that cross wake-ups, threads, handles -----------------------------------


def test_a_worker_killed_while_its_wake_up_is_on_its_way_is_replaced() -> None:
    pool = ggopool.new_pool("faults", 1, Config(idle_timeout=None))
    workers: list[Any] = []
    pool.go(lambda: workers.append(gevent.getcurrent()))
    gevent.idle()
    assert pool.stats().idle == 1
    [parked] = workers
    # The kill is queued first, so it lands after go() has woken the worker but before
    # the worker has run: it dies with its wake-up on the way.
    gevent.get_hub().loop.run_callback(parked.throw, GreenletExit)
    pool.go(lambda: workers.append(gevent.getcurrent()))
    gevent.idle()
    assert parked.dead
    assert len(workers) == 2
    assert workers[1] is not parked  # a new worker took the task
    s = check_stats(pool)
    assert (s.workers, s.idle, s.completed, s.running) == (1, 1, 2, 0)


def test_pool_kill_from_one_of_its_own_tasks_ends_that_worker_too() -> None:
    pool = ggopool.new_pool("faults", 2, Config(idle_timeout=None))
    gate = Event()
    other = pool.submit(gate.wait)
    killer = pool.submit(pool.kill)
    gevent.idle()
    assert killer.ready()
    assert isinstance(killer.value, GreenletExit)
    assert isinstance(other.value, GreenletExit)
    assert pool.worker_count() == 0
    assert pool.submit(lambda: "alive").get() == "alive"


def test_two_greenlets_killing_the_pool_at_once_both_return_true() -> None:
    pool = ggopool.new_pool("faults", 3, Config(idle_timeout=None))
    gate = Event()
    for _ in range(3):
        pool.go(gate.wait)
    gevent.idle()
    killers = [gevent.spawn(pool.kill) for _ in range(2)]
    gevent.joinall(killers, raise_error=True)
    assert [k.value for k in killers] == [True, True]
    assert pool.worker_count() == 0


def run_in_thread(fn: Callable[[], object]) -> None:
    thread = threading.Thread(target=fn)
    thread.start()
    thread.join()  # blocks the hub briefly: the thread needs nothing from it


def test_try_go_from_another_thread_hands_over_and_go_is_refused_once_closed() -> None:
    pool = ggopool.new_pool("faults", 2)
    ran: list[str] = []
    results: list[object] = []
    run_in_thread(lambda: results.append(pool.try_go(ran.append, "try_go")))
    assert pool.stats().submitted == 1  # counted from the moment try_go returned
    assert pool.join(timeout=None)
    assert results == [True]
    assert ran == ["try_go"]
    pool.close()

    def go_after_close() -> None:
        try:
            pool.go(ran.append, "after close")
        except ggopool.PoolClosed as exc:
            results.append(str(exc))

    run_in_thread(go_after_close)
    assert results == [True, "pool 'faults' is closed: it accepts no new tasks"]
    assert pool.stats().rejected == 1


def test_join_waits_for_a_task_accepted_from_another_thread() -> None:
    pool = ggopool.new_pool("faults", 2)
    ran: list[int] = []
    run_in_thread(lambda: pool.go(ran.append, 1))  # accepted: go() returned
    assert pool.join(timeout=None)
    assert ran == [1]


def test_task_handle_edge_cases() -> None:
    pool = ggopool.new_pool("faults", 1)
    task = pool.submit(lambda: 1)
    task.unlink(print)  # never linked: nothing to undo
    task.rawlink(print)
    task.unlink(repr)  # a callback it was not linked to
    task.unlink(print)
    assert task.get() == 1
    task.kill()  # done: nothing to kill
    assert task.get() == 1
    group = pool.group()
    group.go(int, 3)
    assert repr(group) == "<ggopool.TaskGroup of pool 'faults' tasks=1>"
    assert group.wait()
