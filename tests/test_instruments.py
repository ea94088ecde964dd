"""Instruments on a pool: what each hook is told, for every way into the pool; a raising
instrument reported and detached; bad input; threads and fork."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from typing import Any

import gevent
import pytest
from gevent.event import Event

import ggopool
from ggopool._pool import NO_THREAD
from tests.conftest import HubErrors
from tests.deploy_helpers import imported_with_ggopool
from tests.pool_surface import exercise


class Recorder(ggopool.Instrument):
    """Every hook call, in order: ("queued", call), ..., ("finished", call, outcome, exc)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def task_queued(self, task: ggopool.TaskInfo) -> None:
        assert task.started_at is None
        self.events.append(("queued", task.call))

    def task_started(self, task: ggopool.TaskInfo) -> None:
        assert task.started_at is not None
        assert task.started_at >= task.queued_at
        self.events.append(("started", task.call))

    def task_finished(
        self, task: ggopool.TaskInfo, outcome: str, exc: BaseException | None
    ) -> None:
        self.events.append(("finished", task.call, outcome, type(exc).__name__ if exc else None))

    def worker_started(self, pool: ggopool.Pool) -> None:
        self.events.append(("worker_started", pool.name))

    def worker_exited(self, pool: ggopool.Pool) -> None:
        self.events.append(("worker_exited", pool.name))

    def outcomes(self) -> Counter[str]:
        return Counter(e[2] for e in self.events if e[0] == "finished")

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e[0] == kind)


def recorded(pool: ggopool.Pool) -> Recorder:
    recorder = Recorder()
    pool.add_instrument(recorder)
    return recorder


def test_each_task_is_queued_started_and_finished_once_in_that_order() -> None:
    pool = ggopool.new_pool("order", 2, ggopool.Config(idle_timeout=0))
    recorder = recorded(pool)
    pool.go(abs, -1)
    assert pool.submit(abs, -2).get(timeout=5) == 2
    assert pool.join(5)
    gevent.idle()
    tasks = [e for e in recorder.events if not e[0].startswith("worker")]
    assert tasks == [
        ("queued", "abs(-1)"),
        ("queued", "abs(-2)"),
        ("started", "abs(-1)"),
        ("finished", "abs(-1)", "completed", None),
        ("started", "abs(-2)"),
        ("finished", "abs(-2)", "completed", None),
    ]
    # Every worker that started has exited (idle_timeout=0: none parks).
    assert recorder.count("worker_started") == recorder.count("worker_exited") >= 1
    assert pool.worker_count() == 0


def test_every_public_method_is_seen() -> None:
    pool = ggopool.new_pool("surface", 4)
    recorder = recorded(pool)
    seen = exercise(pool)
    assert recorder.count("queued") == seen.queued
    assert recorder.count("started") == seen.started
    assert recorder.outcomes() == Counter(
        completed=seen.started - seen.killed, killed=seen.killed, cancelled=seen.cancelled
    )
    # spawn_later, on the default pool: seen when its time comes; one cancelled while it
    # waits was never queued, and is not seen at all.
    default = ggopool.default_pool()
    later = recorded(default)
    try:
        waiting = ggopool.spawn_later(30, abs, -9)
        assert waiting.cancel()
        assert ggopool.spawn_later(0.01, abs, -3).get(timeout=5) == 3
        assert [e for e in later.events if e[0] != "worker_started"] == [
            ("queued", "abs(-3)"),
            ("started", "abs(-3)"),
            ("finished", "abs(-3)", "completed", None),
        ]
    finally:
        default.remove_instrument(later)


def test_outcomes_failed_killed_and_cancelled_each_way(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("outcomes", 1)
    recorder = recorded(pool)
    failures: list[str] = []

    def handler(ctx: object, exc: Exception) -> None:
        failed = ggopool.failed_task()
        assert failed is not None
        failures.append(failed.call)

    pool.set_panic_handler(handler)

    def boom(n: int) -> None:
        raise ZeroDivisionError(n)

    pool.go(boom, 1)
    with pytest.raises(ZeroDivisionError):
        pool.submit(boom, 2).get(timeout=5)
    assert failures == ["test_outcomes_failed_killed_and_cancelled_each_way.<locals>.boom(1)"]

    held = Event()
    running = pool.submit(held.wait)
    gevent.idle()
    queued = [pool.submit(abs, -i) for i in range(3)]
    pool.go(abs, -10)
    assert queued[0].cancel()
    queued[1].kill()
    running.kill(block=False)  # killed while it runs
    assert pool.kill(timeout=5)  # drops queued[2] and go(abs, -10) before the worker can
    with pool.group(cancel_on_error=True) as group:
        pool.go(held.clear)
    assert pool.join(5)
    group = pool.group(cancel_on_error=True)
    group.go(boom, 3)
    never = group.go(abs, -4)
    with pytest.raises(ZeroDivisionError):
        group.wait(5)
    assert never.cancelled()
    finished = {e[1]: e[2:] for e in recorder.events if e[0] == "finished"}
    name = "test_outcomes_failed_killed_and_cancelled_each_way.<locals>.boom"
    assert finished == {
        f"{name}(1)": ("failed", "ZeroDivisionError"),
        f"{name}(2)": ("failed", "ZeroDivisionError"),
        f"{name}(3)": ("failed", "ZeroDivisionError"),
        "Event.wait": ("killed", "GreenletExit"),
        "abs(0)": ("cancelled", None),
        "abs(-1)": ("cancelled", None),
        "abs(-2)": ("cancelled", None),
        "abs(-10)": ("cancelled", None),
        "abs(-4)": ("cancelled", None),
        "Event.clear": ("completed", None),
    }
    assert recorder.count("queued") == recorder.count("finished") == len(finished)
    # The ones that never started were never started for the instrument either.
    assert recorder.count("started") == 5
    assert not hub_errors.errors


def test_a_raising_instrument_is_reported_detached_and_breaks_no_task(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("raising", 2)

    class Broken(ggopool.Instrument):
        def __repr__(self) -> str:
            return "<Broken>"

        def task_started(self, task: ggopool.TaskInfo) -> None:
            raise ValueError("broken instrument")

    broken = Broken()
    pool.add_instrument(broken)
    fine = recorded(pool)
    assert pool.instruments == (broken, fine)
    assert pool.submit(abs, -5).get(timeout=5) == 5
    pool.go(abs, -6)
    assert pool.join(5)
    [(context, kind, exc)] = hub_errors.take()
    assert kind is ValueError
    assert str(exc) == "broken instrument"
    assert repr(context) == "<instrument <Broken> of pool 'raising', detached because it raised>"
    assert broken not in pool.instruments
    assert len(pool.instruments) == 1
    assert fine.outcomes() == Counter(completed=2)


def test_an_instrument_sees_only_what_is_queued_while_it_is_attached() -> None:
    pool = ggopool.new_pool("attach", 1)
    held = Event()
    pool.go(held.wait)
    pool.go(abs, -1)  # queued before: never seen
    recorder = recorded(pool)
    pool.go(abs, -2)
    gevent.idle()
    later = recorded(pool)  # abs(-2) is queued already: later never hears of it
    pool.remove_instrument(recorder)  # nor, from now on, does recorder
    pool.go(abs, -3)
    held.set()
    assert pool.join(5)
    assert [e for e in recorder.events if e[0] == "queued"] == [("queued", "abs(-2)")]
    assert len(recorder.events) <= 2  # and perhaps a worker_started
    assert [e[:2] for e in later.events] == [
        ("queued", "abs(-3)"),
        ("started", "abs(-3)"),
        ("finished", "abs(-3)"),
    ]
    pool.remove_instrument(later)
    assert pool.instruments == ()
    assert pool._fast_ident == pool._ident  # go() is back on its fast path
    pool.add_instrument(later)
    assert pool._fast_ident == NO_THREAD


def test_an_object_that_only_defines_hooks_may_be_attached() -> None:
    pool = ggopool.new_pool("duck", 1)
    finished: list[str] = []

    class Duck:
        def task_finished(self, task: ggopool.TaskInfo, outcome: str, exc: object) -> None:
            finished.append(f"{task!r} {outcome}")

    pool.add_instrument(Duck())  # type: ignore[arg-type]
    pool.go(abs, -1)
    assert pool.join(5)
    assert finished == ["<task abs(-1) of pool 'duck'> completed"]


def test_bad_instruments_raise_and_change_nothing() -> None:
    pool = ggopool.new_pool("bad", 1)
    rule = (
        "instrument must be a ggopool.Instrument or define one of its hooks (task_queued, "
        "task_started, task_finished, worker_started, worker_exited), got"
    )
    with pytest.raises(TypeError, match=rf"^{re.escape(rule)} 3$"):
        pool.add_instrument(3)  # type: ignore[arg-type]
    recorder = recorded(pool)
    with pytest.raises(
        ValueError, match=r"^<.*Recorder object at .*> is already attached to pool 'bad'$"
    ):
        pool.add_instrument(recorder)
    with pytest.raises(
        ValueError, match=r"^<.*Recorder object at .*> is not attached to pool 'bad'$"
    ):
        pool.remove_instrument(Recorder())
    assert pool.instruments == (recorder,)


def test_tasks_handed_over_by_a_thread_are_seen() -> None:
    pool = ggopool.new_pool("threads", 2)
    recorder = recorded(pool)
    done = Event()
    errors: list[BaseException] = []

    def client() -> None:
        try:
            pool.go(abs, -1)
            pool.submit(abs, -2)
            assert pool.try_go(abs, -3)
            pool.ctx_go(__import__("contextvars").Context(), abs, -4)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    with gevent.Timeout(10):
        while recorder.count("finished") < 4:
            gevent.sleep(0.01)
    thread.join(10)
    done.set()
    assert not errors
    assert sorted(e[1] for e in recorder.events if e[0] == "finished") == [
        "abs(-1)",
        "abs(-2)",
        "abs(-3)",
        "abs(-4)",
    ]


FORK = """
    import os
    import gevent
    from gevent.event import Event
    import ggopool

    class Recorder(ggopool.Instrument):
        def __init__(self):
            self.finished = []

        def task_finished(self, task, outcome, exc):
            self.finished.append(f"{task.call} {outcome}")

    pool = ggopool.new_pool("fork", 1)
    recorder = Recorder()
    pool.add_instrument(recorder)
    gate = Event()
    pool.go(gate.wait)
    gevent.idle()
    pool.go(abs, -1)
    pool.submit(abs, -2)
    pid = gevent.fork()
    if pid == 0:
        # Left to the parent, so cancelled here; the instrument stays attached.
        pool.go(abs, -3)
        assert pool.join(5)
        os.write(1, f"child {recorder.finished}\\n".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    gate.set()
    assert pool.join(5)
    print("parent", recorder.finished)
"""


def test_in_a_forked_child_the_tasks_left_to_the_parent_are_cancelled() -> None:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "child ['abs(-1) cancelled', 'abs(-2) cancelled', 'abs(-3) completed']",
        "parent ['Event.wait completed', 'abs(-1) completed', 'abs(-2) completed']",
    ]


def test_an_instrument_of_workers_only_leaves_go_on_its_fast_path() -> None:
    pool = ggopool.new_pool("workers-only", 2, ggopool.Config(idle_timeout=0))
    seen: list[str] = []

    class Workers(ggopool.Instrument):
        def worker_started(self, pool: ggopool.Pool) -> None:
            seen.append(f"started {pool.worker_count()}")

        def worker_exited(self, pool: ggopool.Pool) -> None:
            seen.append(f"exited {pool.worker_count()}")

    pool.add_instrument(Workers())
    assert pool._fast_ident == pool._ident
    held = Event()
    pool.go(held.wait)
    pool.go(held.wait)
    gevent.idle()
    held.set()
    assert pool.join(5)
    gevent.idle()
    assert seen == ["started 2", "started 2", "exited 1", "exited 0"]


def test_importing_ggopool_does_not_import_opentelemetry() -> None:
    assert imported_with_ggopool("opentelemetry") == []


@pytest.mark.parametrize("hook", ["task_queued", "task_finished", "worker_started"])
def test_a_raising_hook_of_any_kind_is_reported_and_detached(
    hook: str, hub_errors: HubErrors
) -> None:
    pool = ggopool.new_pool(f"raising-{hook}", 1)

    def broken(*args: object) -> None:
        raise ValueError(hook)

    instrument = type("Broken", (ggopool.Instrument,), {hook: broken})()
    pool.add_instrument(instrument)
    assert pool.submit(abs, -7).get(timeout=5) == 7
    assert pool.join(5)
    [(context, kind, exc)] = hub_errors.take()
    assert (kind, str(exc)) == (ValueError, hook)
    assert "detached because it raised" in repr(context)
    assert pool.instruments == ()


def test_when_reporting_a_raising_hook_fails_too_one_line_goes_to_stderr(
    hub_errors: HubErrors, capfd: pytest.CaptureFixture[str]
) -> None:
    pool = ggopool.new_pool("unreportable", 1)

    class Broken(ggopool.Instrument):
        def task_started(self, task: ggopool.TaskInfo) -> None:
            raise ValueError("broken")

    def handle_error(*args: object) -> None:
        raise RuntimeError("handle_error broken too")

    pool.add_instrument(Broken())
    hub = gevent.get_hub()
    hub.handle_error = handle_error  # type: ignore[method-assign,assignment]
    try:
        assert pool.submit(abs, -8).get(timeout=5) == 8
    finally:
        hub.handle_error = hub_errors.handle_error  # type: ignore[method-assign,assignment]
    assert pool.instruments == ()
    assert capfd.readouterr().err == (
        "ggopool: pool 'unreportable': an instrument raised ValueError and reporting it "
        "failed; it is detached\n"
    )


def test_attaching_and_removing_from_another_thread_is_handed_over() -> None:
    pool = ggopool.new_pool("attach-threads", 1)
    recorder = Recorder()
    thread = threading.Thread(target=pool.add_instrument, args=(recorder,))
    thread.start()
    thread.join(10)
    with gevent.Timeout(10):
        while not pool.instruments:
            gevent.sleep(0.01)  # the pool's hub takes the hand-over
    assert pool.instruments == (recorder,)
    thread = threading.Thread(target=pool.remove_instrument, args=(recorder,))
    thread.start()
    thread.join(10)
    with gevent.Timeout(10):
        while pool.instruments:
            gevent.sleep(0.01)
    assert pool._fast_ident == pool._ident


class InFlight(ggopool.Instrument):
    """Keeps each task it was told of in a dict until it finishes, as a tracer keeps its
    spans; records what it was told out of order."""

    def __init__(self) -> None:
        self.tasks: dict[ggopool.TaskInfo, str] = {}
        self.out_of_order: list[str] = []

    def task_queued(self, task: ggopool.TaskInfo) -> None:
        if task in self.tasks:
            self.out_of_order.append(f"queued twice: {task.call}")
        self.tasks[task] = "queued"

    def task_started(self, task: ggopool.TaskInfo) -> None:
        if self.tasks.get(task) != "queued":
            self.out_of_order.append(f"started before queued: {task.call}")
        self.tasks[task] = "started"

    def task_finished(
        self, task: ggopool.TaskInfo, outcome: str, exc: BaseException | None
    ) -> None:
        if self.tasks.pop(task, None) is None:
            self.out_of_order.append(f"finished before queued: {task.call}")


@pytest.mark.parametrize("how", ["cancel", "kill"])
def test_a_task_cancelled_while_it_waits_for_a_queue_place_is_queued_then_finished(
    how: str,
) -> None:
    # start_later's way in, which spawn_later's is too (Task._queue_later).
    pool = ggopool.new_pool("in-order", 1, ggopool.Config(max_pending=1))
    recorder = recorded(pool)
    in_flight = InFlight()
    pool.add_instrument(in_flight)
    held = Event()
    pool.go(held.wait)
    gevent.idle()
    pool.go(abs, -1)  # the one queue place is taken

    def the_later_one() -> None:
        raise AssertionError("it never runs")

    task = pool.task(the_later_one)
    task.start_later(0)
    for _ in range(2000):  # its time comes; it waits for a queue place
        if pool.stats().pending == 2:
            break
        gevent.sleep(0.001)
    assert pool.stats().pending == 2
    if how == "cancel":
        assert task.cancel()
    else:
        task.kill(block=False)
    held.set()
    assert pool.join(5)
    assert in_flight.out_of_order == []
    assert in_flight.tasks == {}  # nothing held for ever
    mine = [e[0::2] for e in recorder.events if "the_later_one" in e[1]]
    assert mine == [("queued",), ("finished", "cancelled")]


class Removals(ggopool.Instrument):
    def __init__(self, fail_in: str = "") -> None:
        self.removed_from: list[str] = []
        self.fail_in = fail_in

    def task_started(self, task: ggopool.TaskInfo) -> None:
        if self.fail_in == "task_started":
            raise ValueError("hook")

    def removed(self, pool: ggopool.Pool) -> None:
        assert self not in pool.instruments  # told once the pool's state says so
        self.removed_from.append(pool.name)
        if self.fail_in == "removed":
            raise KeyError("removed")


def test_an_instrument_is_told_once_when_it_is_removed_or_detached(
    hub_errors: HubErrors,
) -> None:
    a, b = ggopool.new_pool("removal-a", 1), ggopool.new_pool("removal-b", 1)
    removals = Removals()
    a.add_instrument(removals)
    b.add_instrument(removals)
    a.remove_instrument(removals)
    assert removals.removed_from == ["removal-a"]
    with pytest.raises(ValueError):
        a.remove_instrument(removals)  # not attached: nothing more
    assert removals.removed_from == ["removal-a"]
    assert b.instruments == (removals,)

    raising = Removals(fail_in="task_started")
    a.add_instrument(raising)
    a.go(abs, -1)
    assert a.join(5)
    assert raising.removed_from == ["removal-a"]  # detached because it raised
    [(_, type_, _)] = hub_errors.take()
    assert type_ is ValueError

    failing = Removals(fail_in="removed")
    a.add_instrument(failing)
    a.remove_instrument(failing)
    [(context, type_, _)] = hub_errors.take()  # reported; it is removed all the same
    assert type_ is KeyError
    assert "removal-a" in repr(context)
    assert a.instruments == ()
    assert a.submit(abs, -2).get(timeout=5) == 2


class YieldsWhenQueued(ggopool.Instrument):
    """A task_queued hook that yields (against the rules): what else runs meanwhile may
    start the task, or cancel it (``meanwhile``, in a greenlet of its own)."""

    def __init__(self, meanwhile: Any = None) -> None:
        self.meanwhile = meanwhile

    def task_queued(self, task: ggopool.TaskInfo) -> None:
        if self.meanwhile is not None:
            gevent.spawn(self.meanwhile, task)
        gevent.sleep(0)


def cancel(task: ggopool.TaskInfo) -> None:
    assert task.task is not None
    assert task.task.cancel()


@pytest.mark.parametrize("ends", ["runs", "is cancelled"])
def test_each_instrument_hears_of_a_task_as_queued_first_even_if_another_yields(
    ends: str,
) -> None:
    pool = ggopool.new_pool("queued-first", 1, ggopool.Config(idle_timeout=None))
    held = Event()
    if ends == "is cancelled":
        pool.go(held.wait)  # the one worker is busy: the task stays queued
        gevent.idle()
    pool.add_instrument(YieldsWhenQueued(cancel if ends == "is cancelled" else None))
    in_flight = InFlight()
    pool.add_instrument(in_flight)
    recorder = recorded(pool)
    # It starts and ends, or is cancelled, while the first instrument's hook yields.
    pool.submit(abs, -1)
    gevent.idle()
    held.set()
    assert pool.join(5)
    assert in_flight.out_of_order == []
    assert in_flight.tasks == {}
    mine = [e[0::2] for e in recorder.events if len(e) > 1 and e[1].startswith("abs(")]
    if ends == "runs":
        assert mine == [("queued",), ("started",), ("finished", "completed")]
    else:
        assert mine == [("queued",), ("finished", "cancelled")]
