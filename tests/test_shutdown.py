"""`ggopool.drain`, the exit drain's settings and ``with pool:`` on an interruption, in this
process. The stop paths of real processes are in the other ``test_shutdown_*.py`` files."""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import threading
import types
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event

import ggopool
from ggopool import Config, _shutdown
from tests.conftest import HubErrors
from tests.subprocess_helpers import run_python

REPORT = "ggopool: pool {!r}: {} tasks unfinished ({} queued, {} running) "


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ggopool"]


def test_drain_waits_for_tasks_that_running_tasks_queue_on_other_pools() -> None:
    a, b = ggopool.new_pool("drain-a", 1), ggopool.new_pool("drain-b", 1)
    ran: list[str] = []

    def third() -> None:
        gevent.sleep(0)
        ran.append("default")

    def second() -> None:
        gevent.sleep(0)
        ran.append("b")
        ggopool.go(third)

    def first() -> None:
        gevent.sleep(0)
        ran.append("a")
        b.go(second)

    a.go(first)
    assert a.join()  # a alone is quiet while b and the default pool still have work
    assert ran == ["a"]
    a.go(first)
    assert ggopool.drain(5)
    assert sorted(ran) == ["a", "a", "b", "b", "default", "default"]
    assert a.stats().pending == b.stats().pending == ggopool.default_pool().stats().pending == 0


def test_drain_reports_each_busy_pool_when_the_deadline_passes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = Event()
    a, b, quiet = (ggopool.new_pool(n, 1) for n in ("drain-x", "drain-y", "drain-quiet"))
    for _ in range(3):
        a.go(gate.wait)
    b.go(gate.wait)
    quiet.go(lambda: None)
    gevent.idle()
    with caplog.at_level(logging.WARNING, logger="ggopool"):
        assert ggopool.drain(0.05) is False
    assert warnings(caplog) == [
        REPORT.format("drain-x", 3, 2, 1) + "after the 0.1 s deadline",
        REPORT.format("drain-y", 1, 0, 1) + "after the 0.1 s deadline",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    # Unfinished, not cancelled: they run once they can.
    gate.set()
    assert ggopool.drain(5)
    assert a.stats().completed == 3
    assert b.stats().completed == 1


def test_drain_notes_what_it_waits_for_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_shutdown, "NOTE_AFTER", 0.02)
    first, second = Event(), Event()
    a, b = ggopool.new_pool("drain-noted-a", 1), ggopool.new_pool("drain-noted-b", 1)
    a.go(first.wait)
    a.go(first.wait)
    b.go(second.wait)
    # After the note, the drain goes on waiting: first for a, then for b.
    gevent.spawn_later(0.1, first.set)
    gevent.spawn_later(0.2, second.set)
    with caplog.at_level(logging.WARNING, logger="ggopool"):
        assert ggopool.drain()
    [note] = warnings(caplog)
    assert note == (
        "ggopool: draining: waiting as long as it takes for 3 tasks of pools "
        "'drain-noted-a', 'drain-noted-b'"
    )


def test_a_report_never_raises(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_shutdown, "NOTE_AFTER", 0.0)
    gate = Event()
    broken = [True]

    class BrokenStats(ggopool.Pool):
        def stats(self) -> ggopool.PoolStats:
            if broken[0]:
                raise RuntimeError("no stats")
            return super().stats()

    pool = BrokenStats("drain-broken-stats", 1)
    pool.go(gate.wait)
    gevent.idle()
    with caplog.at_level(logging.WARNING, logger="ggopool"):
        assert ggopool.drain(0.01) is False  # neither the note nor the report raised
    assert warnings(caplog) == []
    broken[0] = False
    monkeypatch.undo()
    gate.set()
    assert ggopool.drain(5)


def test_an_exception_thrown_into_the_drain_is_reported_and_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = Event()
    pool = ggopool.new_pool("drain-interrupted", 2)
    pool.go(gate.wait)
    gevent.idle()
    with (
        caplog.at_level(logging.WARNING, logger="ggopool"),
        pytest.raises(gevent.Timeout),
        gevent.Timeout(0.05),
    ):
        ggopool.drain()
    [line] = warnings(caplog)
    assert line.startswith(REPORT.format("drain-interrupted", 1, 0, 1))
    assert "when the drain was interrupted by Timeout after 0." in line
    gate.set()
    assert ggopool.drain(5)


def test_drain_from_a_task_or_the_hub_is_a_runtime_error(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("drain-self", 1)
    with pytest.raises(RuntimeError, match=r"^cannot drain from a task of pool 'drain-self': "):
        pool.submit(ggopool.drain).get()
    errors: list[BaseException] = []

    def from_the_hub() -> None:
        try:
            ggopool.drain()
        except RuntimeError as exc:
            errors.append(exc)

    gevent.get_hub().loop.run_callback(from_the_hub)
    gevent.idle()
    assert [str(e) for e in errors] == ["cannot drain from the hub: it would block the loop"]


def test_drain_checks_its_timeout_first() -> None:
    with pytest.raises(ValueError, match=r"^timeout must be None or a number of seconds >= 0, "):
        ggopool.drain(-1)
    with pytest.raises(TypeError, match=r"^timeout must be None or a number of seconds >= 0, "):
        ggopool.drain("1")  # type: ignore[arg-type]


def test_drain_leaves_the_pools_of_other_threads_to_them() -> None:
    made = threading.Event()
    done = threading.Event()
    pools: list[ggopool.Pool] = []

    def thread() -> None:
        pool = ggopool.new_pool("drain-other-thread", 1)
        gate = Event()
        pool.go(gate.wait)
        gevent.idle()
        pools.append(pool)
        made.set()
        while not done.is_set():
            gevent.sleep(0.01)
        gate.set()
        pool.join()

    t = threading.Thread(target=thread)
    t.start()
    try:
        assert made.wait(10)
        assert pools[0].stats().running == 1
        assert ggopool.drain(0) is True
    finally:
        done.set()
        t.join(10)
    assert not t.is_alive()


@pytest.mark.parametrize(
    ("deadline", "error"),
    [
        (-1, ValueError),
        (math.nan, ValueError),
        ("5", TypeError),
        (True, TypeError),
    ],
)
def test_set_exit_drain_refuses_a_bad_deadline_and_changes_nothing(
    deadline: Any, error: type[Exception]
) -> None:
    ggopool.set_exit_drain(3)
    with pytest.raises(
        error, match=rf"^deadline must be None or a number of seconds >= 0, got {deadline!r}$"
    ):
        ggopool.set_exit_drain(deadline)
    assert _shutdown._exit_deadline == 3.0


def test_the_exit_drain_runs_once_per_process_within_its_deadline_and_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = Event()
    pool = ggopool.new_pool("exit-drain", 1)
    pool.go(gate.wait)
    pool.go(gate.wait)
    gevent.idle()
    ggopool.set_exit_drain(math.inf)
    _shutdown._exit_drained_pid = None
    with caplog.at_level(logging.WARNING, logger="ggopool"):
        _shutdown.exit_drain(limit=0.01)  # gunicorn's limit wins over an infinite deadline
        _shutdown.exit_drain()  # once per process: no second wait, no second report
    assert _shutdown._exit_drained_pid == os.getpid()
    assert warnings(caplog) == [
        "ggopool: pool 'exit-drain': 2 tasks abandoned at exit (1 queued, 1 running) "
        "after the 0.0 s deadline"
    ]
    gate.set()
    assert ggopool.drain(5)


def test_the_exit_drain_turned_off_waits_for_nothing_and_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = Event()
    pool = ggopool.new_pool("exit-drain-off", 1)
    pool.go(gate.wait)
    gevent.idle()
    ggopool.set_exit_drain(None)
    _shutdown._exit_drained_pid = None
    with caplog.at_level(logging.WARNING, logger="ggopool"):
        _shutdown.exit_drain()
    assert warnings(caplog) == []
    gate.set()
    assert ggopool.drain(5)


def test_the_exit_drain_from_a_task_reports_without_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = ggopool.new_pool("exit-drain-task", 2)
    gate = Event()
    pool.go(gate.wait)
    ggopool.set_exit_drain(30)
    _shutdown._exit_drained_pid = None
    with caplog.at_level(logging.WARNING, logger="ggopool"):
        pool.submit(_shutdown.exit_drain).get()
    assert warnings(caplog) == [
        "ggopool: pool 'exit-drain-task': 2 tasks abandoned at exit (0 queued, 2 running) "
        "after the 0.0 s deadline"
    ]
    gate.set()
    assert ggopool.drain(5)


def test_interrupt_drain_without_a_drain_does_nothing() -> None:
    assert _shutdown.interrupt_drain() is False


class Interrupted(BaseException):
    pass


def leave_with(pool: ggopool.Pool, gate: Event, exc: BaseException) -> None:
    """Queue two tasks held on ``gate`` in ``with pool:``, then raise ``exc`` in the block."""
    with pool:
        pool.go(gate.wait)
        pool.go(gate.wait)
        gevent.idle()
        raise exc


def test_with_pool_waits_for_the_queue_after_an_exception_but_not_after_an_interruption() -> None:
    gate = Event()
    pool = ggopool.new_pool("with-error", 1)
    gevent.spawn_later(0.05, gate.set)
    with pytest.raises(ValueError, match=r"^in the block$"):
        leave_with(pool, gate, ValueError("in the block"))
    assert pool.closed
    assert pool.stats().completed == 2  # an error in the block loses nothing queued

    gate = Event()
    pool = ggopool.new_pool("with-interrupted", 1)
    with pytest.raises(Interrupted):
        leave_with(pool, gate, Interrupted())
    assert pool.closed
    stats = pool.stats()
    assert (stats.running, stats.pending) == (1, 1)  # not waited for, still queued
    gate.set()
    assert pool.join(5)
    assert pool.stats().completed == 2


def test_the_exit_drain_registers_with_atexit_where_threading_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", registered.append)

    def shutting_down(callback: object) -> None:
        raise RuntimeError("can't register atexit after shutdown")

    monkeypatch.setattr(threading, "_register_atexit", shutting_down)
    _shutdown._register(_shutdown.exit_drain)
    monkeypatch.delattr(threading, "_register_atexit")
    _shutdown._register(_shutdown.exit_drain)
    assert registered == [_shutdown.exit_drain, _shutdown.exit_drain]


# -- ggopool.gunicorn's hooks, called as gunicorn calls them ------------------------------------
# gunicorn runs them in real workers in test_shutdown_servers.py; here, the edges a worker
# rarely reaches. The worker is a stand-in with the attributes the hooks read.


def gunicorn_worker(pid: int, graceful_timeout: float, timeout: float) -> Any:
    cfg = types.SimpleNamespace(graceful_timeout=graceful_timeout, timeout=timeout)
    return types.SimpleNamespace(pid=pid, cfg=cfg, log=logging.getLogger("gunicorn.error"))


def test_gunicorn_worker_exit_in_the_master_does_nothing() -> None:
    from ggopool.gunicorn import worker_exit

    _shutdown._exit_drained_pid = None
    worker_exit(None, gunicorn_worker(os.getpid() + 1, 30, 30))  # a worker that had gone
    assert _shutdown._exit_drained_pid is None


def test_gunicorn_worker_exit_drains_until_a_second_before_graceful_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ggopool.gunicorn import worker_exit

    gate = Event()
    pool = ggopool.new_pool("gunicorn-limit", 1)
    pool.go(gate.wait)
    gevent.idle()
    ggopool.set_exit_drain(30)
    _shutdown._exit_drained_pid = None
    with caplog.at_level(logging.WARNING, logger="ggopool"):
        worker_exit(None, gunicorn_worker(os.getpid(), 1.1, 0))  # timeout 0: no heartbeat limit
    assert warnings(caplog) == [
        "ggopool: pool 'gunicorn-limit': 1 tasks abandoned at exit (0 queued, 1 running) "
        "after the 0.1 s deadline"
    ]
    gate.set()
    assert ggopool.drain(5)


def test_gunicorn_worker_int_outside_a_gevent_worker_returns_at_once() -> None:
    from ggopool.gunicorn import worker_int

    worker_int(gunicorn_worker(os.getpid(), 30, 30))  # from the main greenlet: no hold


# -- spawn_later's tasks are accepted work ------------------------------------------------


def test_drain_waits_for_a_spawn_later_task_whose_time_comes_within_its_deadline() -> None:
    ran: list[int] = []
    task = ggopool.spawn_later(0.05, ran.append, 1)
    assert ggopool.drain(5)
    assert ran == [1]
    assert task.successful()


def test_drain_reports_a_spawn_later_task_due_after_its_deadline_and_leaves_it_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[int] = []
    soon = ggopool.spawn_later(0.01, ran.append, 1)
    late = ggopool.spawn_later(60, ran.append, 2)
    with caplog.at_level(logging.WARNING, logger="ggopool"):
        assert ggopool.drain(1) is False  # returns once only the late one is left
    assert ran == [1]
    assert soon.successful()
    assert warnings(caplog) == [
        "ggopool: pool 'ggopool.DefaultPool': 1 spawn_later tasks unfinished, "
        "due after the 1.0 s deadline"
    ]
    assert not late.ready()  # it still runs when its time comes
    assert late.cancel()
    assert ggopool.drain(0)


def test_the_exit_drain_reports_a_spawn_later_task_it_cannot_wait_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    late = ggopool.spawn_later(60, lambda: None)
    ggopool.set_exit_drain(5)
    _shutdown._exit_drained_pid = None
    with caplog.at_level(logging.WARNING, logger="ggopool"):
        _shutdown.exit_drain()
    assert warnings(caplog) == [
        "ggopool: pool 'ggopool.DefaultPool': 1 spawn_later tasks abandoned at exit, "
        "due after the 5.0 s deadline"
    ]
    assert late.cancel()


SPAWN_LATER_AT_EXIT = """
import ggopool

ggopool.spawn_later(0.05, print, "ran before exit")
ggopool.spawn_later(60, print, "never")
"""


def test_at_exit_a_spawn_later_task_runs_if_due_within_the_deadline_else_is_logged() -> None:
    out = run_python(SPAWN_LATER_AT_EXIT)
    assert out.stdout == "ran before exit\n"
    assert out.stderr == (
        "ggopool: pool 'ggopool.DefaultPool': 1 spawn_later tasks abandoned at exit, "
        "due after the 5.0 s deadline\n"
    )


# -- after the exit drain, another thread's go() is refused, not lost ----------------------


HAND_OVERS: dict[str, Callable[[ggopool.Pool], object]] = {
    "go": lambda pool: pool.go(lambda: None),
    "submit": lambda pool: pool.submit(lambda: None),
    "spawn, waiting for room": lambda pool: pool.spawn(lambda: None),
    "ggopool.go, from a thread with no hub": lambda pool: ggopool.go(lambda: None),
    "the default pool's start_later": lambda pool: (
        ggopool.default_pool().task(lambda: None).start_later(0)
    ),
    "start_later": lambda pool: pool.task(lambda: None).start_later(0),
}


@pytest.mark.parametrize("hand_over", HAND_OVERS.values(), ids=HAND_OVERS.keys())
def test_after_the_exit_drain_a_hand_over_from_another_thread_raises_pool_closed(
    hand_over: Callable[[ggopool.Pool], object],
) -> None:
    pool = ggopool.new_pool("after-exit", 1, Config(spawn_waits_when_full=True))
    ggopool.set_exit_drain(5)
    _shutdown._exit_drained_pid = None
    _shutdown.exit_drain()
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            hand_over(pool)
        except BaseException as exc:  # noqa: BLE001 - the test checks it
            errors.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(10)
    [exc] = errors
    assert isinstance(exc, ggopool.PoolClosed)
    assert str(exc) in (
        f"pool {name!r} accepts no tasks from other threads: the interpreter is exiting "
        "and its exit drain has run"
        for name in ("after-exit", "ggopool.DefaultPool")
    )
    assert pool.stats().submitted == 0  # nothing accepted
    assert not ggopool.default_pool()._later  # nor waiting for its time
    ran: list[int] = []
    pool.go(ran.append, 1)  # the pool's own thread still queues
    assert pool.join(5)
    assert ran == [1]


THREAD_WAITING_AT_EXIT = """
import sys, threading, time
import gevent
import ggopool
from ggopool import Config

pool = ggopool.new_pool("full", 1, Config(spawn_waits_when_full=True))
holder = gevent.spawn(gevent.sleep, 60)  # a member that outlives the script
pool.add(holder)


def waits_for_room():
    try:
        pool.spawn(print, "never")
    except ggopool.PoolClosed as exc:
        print("refused:", exc)


threading.Thread(target=waits_for_room).start()
deadline = time.monotonic() + 10
while not pool._waiting_threads and time.monotonic() < deadline:
    time.sleep(0.001)  # until the thread waits in spawn() (the script ends right after)
assert pool._waiting_threads
gevent.idle()  # its greenlet waits for room in the hub too
"""


def test_a_thread_waiting_in_spawn_for_room_at_exit_is_refused_and_the_exit_ends() -> None:
    out = run_python(THREAD_WAITING_AT_EXIT)
    assert out.stdout == (
        "refused: pool 'full' accepts no tasks from other threads: the interpreter is "
        "exiting and its exit drain has run\n"
    )


THREAD_AFTER_EXIT = """
import os, sys, threading, time
import ggopool

log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
pool = ggopool.new_pool("producer", 4)
accepted = 0


def record(i):
    os.write(log, f"{i}\\n".encode())


def producer():
    # Non-daemon: the interpreter joins it after the exit drain, and it goes on handing
    # tasks over meanwhile, until they are refused.
    global accepted
    for i in range(20000):
        try:
            pool.go(record, i)
        except ggopool.PoolClosed as exc:
            print("refused:", exc, file=sys.stderr)
            break
        accepted += 1
        time.sleep(0.0005)
    print("accepted", accepted)


threading.Thread(target=producer).start()
"""


def test_a_thread_handing_tasks_over_while_the_interpreter_exits_loses_none(
    tmp_path: object,
) -> None:
    log = f"{tmp_path}/runs.log"
    out = run_python(THREAD_AFTER_EXIT, log)
    assert out.stderr == (
        "refused: pool 'producer' accepts no tasks from other threads: the interpreter is "
        "exiting and its exit drain has run\n"
    )
    [word, accepted] = out.stdout.split()
    assert word == "accepted"
    with open(log) as f:
        ran = sorted(int(line) for line in f)
    assert ran == list(range(int(accepted)))  # every accepted task ran, once


ATEXIT_GO = """
import atexit
import gevent
import ggopool

ggopool.set_exit_drain(0.5)
# atexit runs these first (last registered, first run), then ggopool's last look.
atexit.register(ggopool.go, gevent.sleep, 60)
atexit.register(ggopool.go, print, "queued by an atexit callback")
"""


ATEXIT_CANCEL_THEN_GO = """
import atexit
import ggopool

late = ggopool.spawn_later(60, print, "never")


def flush():
    late.cancel()  # one task fewer than at the drain, and one new one
    ggopool.go(print, "flushed")


atexit.register(flush)
"""


def test_a_task_queued_at_exit_after_a_cancel_still_runs() -> None:
    out = run_python(ATEXIT_CANCEL_THEN_GO)
    assert out.stdout == "flushed\n"


def test_a_task_queued_by_an_atexit_callback_runs_or_is_logged() -> None:
    out = run_python(ATEXIT_GO)
    assert out.stdout == "queued by an atexit callback\n"
    # After what was left of the 0.5 s deadline once the exit drain had run.
    assert re.fullmatch(
        r"ggopool: pool 'ggopool.DefaultPool': 1 tasks abandoned at exit \(0 queued, 1 running\) "
        r"after the 0\.[0-5] s deadline\n",
        out.stderr,
    ), out.stderr


def test_a_second_stop_signal_does_not_interrupt_a_requests_own_drain(
    hub_errors: HubErrors,
) -> None:
    # A request (a task of a server's connection pool) may drain the background pools; a
    # second stop signal ends the process's own drain, never a request's, whose
    # KeyboardInterrupt would reach the main greenlet through the hub.
    connections = ggopool.new_pool("connections", 10)
    _shutdown.serves_connections(connections)
    release = Event()
    drained: list[bool] = []
    try:
        ggopool.go(release.wait)

        def request() -> None:
            drained.append(ggopool.drain(10))

        connections.go(request)
        gevent.idle()
        assert _shutdown.interrupt_drain() is False
        release.set()
        assert connections.join(10)
        assert drained == [True]
    finally:
        release.set()
        _shutdown._connection_pools.discard(connections)
    assert hub_errors.take() == []
