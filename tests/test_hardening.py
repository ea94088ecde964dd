"""No hang and no wrong count: one test per way a task, a kill or the world once hung a
pool or broke its counts.

Each test drives the pool into the state where the fault bites (workers held on an
Event, kills queued in a known order on the hub's callback list) and then checks what
the pool promises: every task handle becomes ready, ``kill()`` and ``join()`` return,
``worker_count()`` stays within ``0..cap``, no dead worker is woken, and the next task
runs. Waits that would hang on a broken pool sit under a short ``gevent.Timeout`` so they
fail fast.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import gevent
import pytest
from gevent.event import Event
from greenlet import GreenletExit

import ggopool
from ggopool import Config, FailedTask, TaskCancelled
from tests.conftest import HubErrors
from tests.faulty import BrokenRepr, BrokenReprError, recurse
from tests.subprocess_helpers import printed_lines

#: How long a wait that hangs on a broken pool is given before the test fails.
HANG = 5.0


@contextmanager
def must_not_hang(what: str) -> Iterator[None]:
    with gevent.Timeout(HANG, AssertionError(f"{what} hung for {HANG} s")):
        yield


def fail(*args: object) -> NoReturn:
    raise ValueError("task failed")


def check_counts(pool: ggopool.Pool) -> ggopool.PoolStats:
    """The counts a pool must keep whatever happened to it."""
    s = pool.stats()
    # Above the cap only by workers still running a task begun before set_cap lowered it.
    assert 0 <= s.workers <= s.cap + s.running, s
    assert 0 <= s.idle <= s.workers, s
    assert min(s.running, s.pending) >= 0, s
    assert s.submitted == s.completed + s.failed + s.cancelled + s.running + s.pending, s
    assert pool.task_count() == s.pending, s
    return s


def runs_next_task(pool: ggopool.Pool) -> None:
    """The pool still works: a fresh task runs to the end."""
    with must_not_hang("the next task"):
        assert pool.submit(lambda: "alive").get() == "alive"


def worker_of(pool: ggopool.Pool) -> Any:
    """Run a task that returns the greenlet it ran on; that worker is parked after it."""
    task = pool.submit(gevent.getcurrent)
    with must_not_hang("a task"):
        worker = task.get()
    gevent.idle()
    return worker


def go_leaving_a_timeout(pool: ggopool.Pool) -> list[gevent.Timeout]:
    """Queue a task that starts a 0 s Timeout and returns without cancelling it: once the
    task has run, the list holds that Timeout, which fires into whatever its worker does
    next."""
    left: list[gevent.Timeout] = []

    def leave_a_timeout() -> None:
        left.append(gevent.Timeout(0))
        left[0].start()

    pool.go(leave_a_timeout)
    return left


def take_one(hub_errors: HubErrors, pool: ggopool.Pool, type_: type[BaseException]) -> Any:
    """The one error reported through the hub: of ``type_``, its context naming ``pool``."""
    [(context, reported, value)] = hub_errors.take()
    assert reported is type_, (context, reported, value)
    assert repr(pool.name) in repr(context), context
    return value


# -- 1. a failure with a deep traceback ---------------------------------------------------------


def test_task_with_deep_traceback_becomes_ready() -> None:
    pool = ggopool.new_pool("deep", 2)
    task = pool.submit(recurse, 0)
    gevent.idle()
    assert task.ready()
    with pytest.raises(RecursionError):
        task.get(block=False)
    with must_not_hang("map() over deep failures"), pytest.raises(RecursionError):
        pool.map(recurse, [0, 1])
    with must_not_hang("imap_unordered() over a deep failure"), pytest.raises(RecursionError):
        list(pool.imap_unordered(recurse, [0]))
    group = pool.group()
    group.go(recurse, 0)
    with must_not_hang("TaskGroup.wait()"), pytest.raises(RecursionError):
        group.wait()
    s = check_counts(pool)
    assert s.failed == 5  # one, map() of two, imap_unordered() of one, the group's one
    runs_next_task(pool)


def test_go_task_with_deep_traceback_is_reported_and_its_worker_goes_on(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("deep", 1)
    pool.go(recurse, 0)
    gevent.idle()
    take_one(hub_errors, pool, RecursionError)
    assert check_counts(pool).failed == 1
    runs_next_task(pool)


# -- 2. a report that raises ------------------------------------------------------------------


@pytest.mark.parametrize("handler", [False, True], ids=["hub", "panic_handler"])
def test_worker_survives_a_handle_error_that_raises(hub_errors: HubErrors, handler: bool) -> None:
    pool = ggopool.new_pool("loud", 2, Config(idle_timeout=None))
    if handler:
        pool.set_panic_handler(fail)  # its failure goes to the hub, which raises too
    hub = gevent.get_hub()
    reports: list[Any] = []

    def raising_handle_error(context: Any, type_: Any, value: Any, tb: Any) -> None:
        reports.append((context, type_))
        raise OSError("broken pipe")

    hub.handle_error = raising_handle_error  # type: ignore[method-assign,assignment]
    try:
        for _ in range(2 * pool.cap + 1):
            pool.go(fail)
        gevent.idle()
    finally:
        hub.handle_error = hub_errors.handle_error  # type: ignore[method-assign,assignment]
    # Each failure was reported once, with a context naming the pool; nothing else was.
    assert len(reports) == 2 * pool.cap + 1, reports
    assert all(repr(pool.name) in repr(context) for context, _ in reports), reports
    s = check_counts(pool)
    assert (s.workers, s.running, s.failed) == (s.idle, 0, 2 * pool.cap + 1)
    runs_next_task(pool)


def test_worker_survives_default_report_to_a_broken_stderr(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("loud", 1, Config(idle_timeout=None))
    hub = gevent.get_hub()

    class BrokenPipe(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError("stderr is gone")

    del hub.handle_error  # gevent's own handle_error, printing to exception_stream
    hub.exception_stream = BrokenPipe()
    try:
        for _ in range(3):
            pool.go(fail)
        gevent.idle()
    finally:
        del hub.exception_stream
        hub.handle_error = hub_errors.handle_error  # type: ignore[method-assign,assignment]
    s = check_counts(pool)
    assert (s.workers, s.failed) == (1, 3)
    runs_next_task(pool)


# -- 3. a failing callable whose repr raises --------------------------------------------------


def test_failing_task_whose_repr_raises_is_reported_and_worker_survives(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("repr", 1, Config(idle_timeout=None))
    task = functools.partial(fail, BrokenRepr())
    for _ in range(3):
        pool.go(task)
    gevent.idle()
    reports = hub_errors.take()
    assert [type_ for _, type_, _ in reports] == [ValueError] * 3
    for context, _, _ in reports:
        assert isinstance(context, FailedTask)
        assert "'repr'" in repr(context)  # formatting the report never raises
    s = check_counts(pool)
    assert (s.workers, s.failed) == (1, 3)
    runs_next_task(pool)


def test_failure_whose_exception_repr_raises_is_reported_and_worker_survives(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("repr", 1, Config(idle_timeout=None))

    def raise_broken() -> None:
        raise BrokenReprError

    pool.go(raise_broken)
    gevent.idle()
    take_one(hub_errors, pool, BrokenReprError)
    runs_next_task(pool)


def test_default_report_of_task_whose_repr_raises_keeps_the_worker(
    hub_errors: HubErrors,
) -> None:
    # gevent's own handle_error formats the context with saferepr, then repr: both raise.
    pool = ggopool.new_pool("repr", 1, Config(idle_timeout=None))
    hub = gevent.get_hub()
    stream = io.StringIO()
    del hub.handle_error
    hub.exception_stream = stream
    try:
        for _ in range(2):
            pool.go(functools.partial(fail, BrokenRepr()))
        gevent.idle()
    finally:
        del hub.exception_stream
        hub.handle_error = hub_errors.handle_error  # type: ignore[method-assign,assignment]
    assert stream.getvalue().count("ValueError: task failed") == 2, stream.getvalue()
    assert stream.getvalue().count("of pool 'repr'> failed with ValueError") == 2
    s = check_counts(pool)
    assert (s.workers, s.failed) == (1, 2)
    runs_next_task(pool)


# -- 4. cancelling and killing a task whose repr raises ---------------------------------------


def test_cancel_of_task_whose_repr_raises_makes_it_ready() -> None:
    pool = ggopool.new_pool("repr", 1, Config(idle_timeout=None))
    gate = Event()
    pool.go(gate.wait)
    cancelled = pool.submit(functools.partial(fail, BrokenRepr()))
    killed = pool.submit(functools.partial(fail, BrokenRepr()))
    group = pool.group()
    grouped = group.go(functools.partial(fail, BrokenRepr()))
    assert isinstance(repr(cancelled), str)
    assert cancelled.cancel() is True
    killed.kill()
    assert grouped.cancel() is True
    for task in (cancelled, killed, grouped):
        assert task.cancelled()
        assert task.ready()
    for task in (cancelled, grouped):
        with pytest.raises(TaskCancelled):
            task.get(block=False)
    # Killed before it started: the kill's outcome, as for a gevent.Greenlet killed then.
    assert isinstance(killed.get(block=False), GreenletExit)
    assert killed.successful()
    with must_not_hang("TaskGroup.wait()"):
        assert group.wait() is True
    assert check_counts(pool).cancelled == 3
    gate.set()
    with must_not_hang("join()"):
        assert pool.join()
    runs_next_task(pool)


def test_pool_kill_cancels_queued_tasks_whose_repr_raises() -> None:
    pool = ggopool.new_pool("repr", 1, Config(idle_timeout=None))
    gate = Event()
    running = pool.submit(gate.wait)
    queued = [pool.submit(functools.partial(fail, BrokenRepr())) for _ in range(3)]
    gevent.idle()
    with must_not_hang("Pool.kill()"):
        assert pool.kill(timeout=None) is True
    assert isinstance(running.value, GreenletExit)
    for task in queued:
        assert task.cancelled()
        assert task.ready()
    s = check_counts(pool)
    assert (s.workers, s.pending, s.cancelled) == (0, 0, 3)
    runs_next_task(pool)


# -- 5. an exception thrown into a parked or just-woken worker --------------------------------

THROWN: list[Callable[[], BaseException]] = [GreenletExit, ValueError, lambda: gevent.Timeout(1)]


@pytest.mark.parametrize("make_exc", THROWN, ids=["GreenletExit", "ValueError", "Timeout"])
def test_exception_thrown_into_parked_worker_ends_it_cleanly(
    hub_errors: HubErrors, make_exc: Callable[[], BaseException]
) -> None:
    pool = ggopool.new_pool("thrown", 1, Config(idle_timeout=None))
    worker = worker_of(pool)
    assert pool.stats().idle == 1
    exc = make_exc()
    gevent.kill(worker, exc)
    gevent.idle()
    assert worker.dead
    if not isinstance(exc, GreenletExit):
        assert take_one(hub_errors, pool, type(exc)) is exc
    s = check_counts(pool)
    assert (s.workers, s.idle) == (0, 0)
    runs_next_task(pool)  # a cap-1 pool included
    assert check_counts(pool).workers == 1


@pytest.mark.parametrize("make_exc", THROWN, ids=["GreenletExit", "ValueError", "Timeout"])
def test_exception_thrown_into_just_woken_worker_ends_it_and_task_still_runs(
    hub_errors: HubErrors, make_exc: Callable[[], BaseException]
) -> None:
    pool = ggopool.new_pool("thrown", 1, Config(idle_timeout=None))
    worker = worker_of(pool)
    exc = make_exc()
    # Queued first, so it lands after go() has taken the worker off the free list and
    # before the worker runs.
    gevent.kill(worker, exc)
    ran: list[Any] = []
    pool.go(lambda: ran.append(gevent.getcurrent()))
    gevent.idle()
    assert worker.dead
    if not isinstance(exc, GreenletExit):
        assert take_one(hub_errors, pool, type(exc)) is exc
    assert len(ran) == 1
    assert ran[0] is not worker
    s = check_counts(pool)
    assert (s.workers, s.idle, s.completed) == (1, 1, 2)
    runs_next_task(pool)


@pytest.mark.parametrize("make_exc", [GreenletExit, ValueError], ids=["GreenletExit", "ValueError"])
@pytest.mark.parametrize("where", ["panic_handler", "hub_report"])
def test_exception_thrown_into_worker_reporting_a_failure_leaves_counts_right(
    hub_errors: HubErrors, make_exc: Callable[[], BaseException], where: str
) -> None:
    # The worker is inside the panic handler, or inside an application's handle_error,
    # both of which may yield (to log over the network), when the exception lands.
    pool = ggopool.new_pool("report", 1, Config(idle_timeout=None))
    hub = gevent.get_hub()
    inside = Event()
    reported: list[Any] = []

    def block(*args: Any) -> None:
        reported.append(args)
        inside.set()
        Event().wait()  # until the exception lands

    if where == "panic_handler":
        pool.set_panic_handler(block)
    else:
        hub.handle_error = block  # type: ignore[method-assign,assignment]
    ran: list[int] = []
    try:
        pool.go(fail)
        pool.go(ran.append, 1)  # queued behind it
        with must_not_hang("the report"):
            inside.wait()
        [worker] = list(pool._greenlets)
        exc = make_exc()
        gevent.kill(worker, exc)
        gevent.idle()
    finally:
        hub.handle_error = hub_errors.handle_error  # type: ignore[method-assign,assignment]
    assert len(reported) == 1
    assert ran == [1]  # the queued task ran: on the same worker, or on a new one
    if where == "panic_handler" and not isinstance(exc, GreenletExit):
        assert take_one(hub_errors, pool, type(exc)) is exc  # the handler's own failure
    s = check_counts(pool)
    assert (s.failed, s.completed, s.running) == (1, 1, 0)
    assert worker.dead is isinstance(exc, GreenletExit)
    assert s.workers == 1
    runs_next_task(pool)


# -- 6. Task.kill() racing Pool.kill() --------------------------------------------------------


@pytest.mark.parametrize("idle_timeout", [None, 10.0])
def test_pool_kill_racing_task_kill_ends_the_worker(idle_timeout: float | None) -> None:
    pool = ggopool.new_pool("race", 1, Config(idle_timeout=idle_timeout))
    gate = Event()
    task = pool.submit(gate.wait)
    gevent.idle()
    # task.kill() runs from the hub just before Pool.kill() throws into the workers, so
    # the pool's GreenletExit lands in the task after the task's own kill began.
    gevent.get_hub().loop.run_callback(functools.partial(task.kill, block=False))
    with must_not_hang("Pool.kill()"):
        assert pool.kill(timeout=None) is True
    assert isinstance(task.value, GreenletExit)
    s = check_counts(pool)
    assert (s.workers, s.running) == (0, 0)
    runs_next_task(pool)


# -- 7. kills racing retires ------------------------------------------------------------------


def three_parked(cap: int = 3) -> tuple[ggopool.Pool, list[Any]]:
    pool = ggopool.new_pool("retire", cap, Config(idle_timeout=None))
    gate = Event()
    tasks = [pool.submit(lambda: (gate.wait(), gevent.getcurrent())[1]) for _ in range(3)]
    gevent.idle()
    gate.set()
    gevent.idle()
    assert pool.stats().idle == 3
    return pool, [task.get(block=False) for task in tasks]


def at_most_cap_run_at_once(pool: ggopool.Pool, cap: int) -> None:
    pool.set_cap(cap)
    gate = Event()
    running: list[int] = []
    most: list[int] = [0]

    def task() -> None:
        running.append(1)
        most[0] = max(most[0], len(running))
        gate.wait()
        running.pop()

    for _ in range(cap + 2):
        pool.go(task)
    gevent.idle()
    assert len(running) == cap
    gate.set()
    with must_not_hang("join()"):
        assert pool.join()
    assert most[0] == cap
    check_counts(pool)


@pytest.mark.parametrize("retire", ["set_cap", "close"])
def test_gevent_kill_racing_a_retire_uncounts_the_worker_once(retire: str) -> None:
    pool, workers = three_parked()
    for worker in workers:
        gevent.kill(worker)  # queued: lands after the retire below took it off the list
    if retire == "set_cap":
        pool.set_cap(1)
    else:
        pool.close()
    gevent.idle()
    assert all(worker.dead for worker in workers)
    s = check_counts(pool)
    assert (s.workers, s.idle) == (0, 0)
    if retire == "set_cap":
        at_most_cap_run_at_once(pool, 2)


def test_pool_kill_racing_a_set_cap_retire_uncounts_each_worker_once() -> None:
    pool, workers = three_parked()
    # set_cap runs from the hub after Pool.kill() queued its throws, so the cap cut takes
    # the workers off the free list before the kills land.
    gevent.get_hub().loop.run_callback(pool.set_cap, 1)
    with must_not_hang("Pool.kill()"):
        assert pool.kill(timeout=None) is True
    gevent.idle()
    assert all(worker.dead for worker in workers)
    s = check_counts(pool)
    assert (s.workers, s.idle, s.cap) == (0, 0, 1)
    at_most_cap_run_at_once(pool, 2)


# -- 8. go() of a Task's bound methods --------------------------------------------------------


def test_pool_kill_treats_go_of_task_methods_as_plain_tasks() -> None:
    pool = ggopool.new_pool("bound", 1, Config(idle_timeout=None, max_pending=4))
    gate = Event()
    running = pool.submit(gate.wait)
    gevent.idle()
    queued = pool.submit(lambda: "never")
    pool.go(running.get)
    pool.go(queued.cancel)
    pool.go(running.kill)
    assert pool.task_count() == 4
    with must_not_hang("Pool.kill()"):
        assert pool.kill(timeout=None) is True
    assert isinstance(running.value, GreenletExit)  # killed while running, not cancelled
    assert queued.cancelled()
    s = check_counts(pool)
    assert (pool.task_count(), s.pending, s.workers) == (0, 0, 0)
    # Every slot is free again, and the bound still holds.
    assert all(pool.try_go(gate.wait) for _ in range(4))
    assert pool.try_go(gate.wait) is False
    gevent.idle()
    gate.set()
    with must_not_hang("join()"):
        assert pool.join()
    check_counts(pool)


# -- 9. tasks handed over from other threads --------------------------------------------------


def hand_over(pool: ggopool.Pool, ran: list[int], n: int) -> None:
    """Go() ``n`` tasks from another thread; the hub takes none while this blocks it."""

    def submitter() -> None:
        for i in range(n):
            pool.go(ran.append, i)

    thread = threading.Thread(target=submitter)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive()


def test_pool_kill_cancels_tasks_in_the_inbox_from_other_threads() -> None:
    pool = ggopool.new_pool("threads", 2)
    ran: list[int] = []
    hand_over(pool, ran, 5)
    handles: list[ggopool.Task[None]] = []
    thread = threading.Thread(target=lambda: handles.append(pool.submit(ran.append, 5)))
    thread.start()
    thread.join(HANG)
    assert pool.task_count() == 6
    with must_not_hang("Pool.kill()"):
        assert pool.kill(timeout=None) is True
    gevent.idle()
    assert ran == []
    [handle] = handles
    assert handle.cancelled()
    assert handle.ready()
    s = check_counts(pool)
    assert (pool.task_count(), s.pending, s.workers) == (0, 0, 0)
    runs_next_task(pool)
    assert ran == []


def test_pool_kill_cancels_tasks_from_other_threads_waiting_for_a_slot() -> None:
    pool = ggopool.new_pool("threads", 1, Config(max_pending=1, idle_timeout=None))
    gate = Event()
    pool.go(gate.wait)
    gevent.idle()
    pool.go(gate.wait)  # the one slot is taken
    ran: list[int] = []
    hand_over(pool, ran, 3)
    gevent.idle()  # the hub takes them: each waits for a slot
    assert pool.task_count() == 4
    with must_not_hang("Pool.kill()"):
        assert pool.kill(timeout=None) is True
    gevent.idle()
    assert ran == []
    s = check_counts(pool)
    assert (pool.task_count(), s.pending, s.workers) == (0, 0, 0)
    runs_next_task(pool)
    assert ran == []


# -- 10. a destroyed hub ----------------------------------------------------------------------


def test_go_after_the_hub_was_destroyed_runs_on_the_new_hub() -> None:
    outcome: list[object] = []

    def in_thread() -> None:
        try:
            pool = ggopool.new_pool("destroyed", 2, Config(idle_timeout=None))
            ran: list[str] = []
            pool.go(ran.append, "before")
            gevent.idle()
            gevent.get_hub().destroy(destroy_loop=True)
            before = pool.stats()
            with pytest.raises(TypeError):
                pool.go(42)  # type: ignore[arg-type]
            assert pool.stats() == before  # a go() that raises changes nothing
            spawned = gevent.spawn(ran.append, "spawn")  # gevent.spawn works here ...
            pool.go(ran.append, "after")  # ... and so does go()
            task = pool.submit(lambda: "submitted")
            with gevent.Timeout(HANG):
                spawned.join()
                assert task.get() == "submitted"
                assert pool.join()
            assert sorted(ran) == ["after", "before", "spawn"]
            s = check_counts(pool)
            assert (s.submitted, s.completed) == (3, 3)
            outcome.append("ok")
        except BaseException as exc:  # noqa: BLE001 - reported to the test's thread
            outcome.append(exc)
        finally:
            gevent.get_hub().destroy(destroy_loop=True)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(2 * HANG)
    assert not thread.is_alive()
    assert outcome == ["ok"]


# -- 11 and 12. fork --------------------------------------------------------------------------


FORK_QUEUED_TASK = """
    from gevent import monkey
    monkey.patch_all()

    import os
    import gevent
    from gevent.event import Event
    import ggopool


    def say(*words):
        # One write per line: the parent and the child share the pipe.
        os.write(1, (" ".join(map(str, words)) + "\\n").encode())

    pool = ggopool.new_pool("fork", 1, ggopool.Config(idle_timeout=None))
    gate = Event()
    pool.go(gate.wait)
    gevent.idle()
    queued = pool.submit(lambda: "parent")
    # The child watcher's SIGCHLD handler, installed before the child can exit: a
    # child that exits first is otherwise never seen, and waitpid waits for ever.
    gevent.get_hub().loop.install_sigchld()
    pid = os.fork()
    if pid == 0:
        seen = [queued.cancelled(), queued.ready()]
        try:
            queued.get(block=False)
        except ggopool.TaskCancelled:
            seen.append("TaskCancelled")
        except BaseException as exc:
            seen.append(type(exc).__name__)
        seen += [queued.cancel(), pool.task_count(), pool.stats().pending]
        seen.append(pool.submit(lambda: "child").get(timeout=10))
        seen += [pool.task_count(), pool.stats().pending]
        say("child", seen)
        os._exit(0)
    gate.set()
    say("parent", queued.get(timeout=10))
    _, status = os.waitpid(pid, 0)
    say("status", status)
"""


def test_task_queued_in_the_parent_is_cancelled_in_the_forked_child() -> None:
    lines = printed_lines(FORK_QUEUED_TASK)
    assert sorted(lines) == [
        "child [True, True, 'TaskCancelled', True, 0, 0, 'child', 0, 0]",
        "parent parent",
        "status 0",
    ]


FORK_CLOSED_POOL = """
    from gevent import monkey
    monkey.patch_all()

    import os
    import gevent
    import ggopool


    def say(*words):
        # One write per line: the parent and the child share the pipe.
        os.write(1, (" ".join(map(str, words)) + "\\n").encode())

    pool = ggopool.new_pool("fork", 2)
    pool.close()
    # The child watcher's SIGCHLD handler, installed before the child can exit: a
    # child that exits first is otherwise never seen, and waitpid waits for ever.
    gevent.get_hub().loop.install_sigchld()
    pid = os.fork()
    if pid == 0:
        try:
            pool.go(print, "ran in the child")
            refused = "accepted"
        except ggopool.PoolClosed as exc:
            refused = str(exc)
        say("child", pool.closed, refused)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    say("status", status)
"""


def test_pool_closed_before_fork_stays_closed_in_the_child() -> None:
    lines = printed_lines(FORK_CLOSED_POOL)
    assert sorted(lines) == [
        "child True pool 'fork' is closed: it accepts no new tasks",
        "status 0",
    ]


# -- 13. counts right after set_cap lowers the cap --------------------------------------------


@pytest.mark.parametrize("how", ["started", "woken"])
def test_worker_count_right_after_set_cap_lowers_it_keeps_the_cap(how: str) -> None:
    pool = ggopool.new_pool("cut", 10, Config(idle_timeout=None))
    if how == "woken":
        gate = Event()
        for _ in range(10):
            pool.go(gate.wait)
        gevent.idle()
        gate.set()
        gevent.idle()
        assert pool.stats().idle == 10
    ran: list[int] = []
    running: list[int] = []
    most = [0]

    def task(i: int) -> None:
        running.append(i)
        most[0] = max(most[0], len(running))
        gevent.sleep(0)
        running.remove(i)
        ran.append(i)

    for i in range(10):
        pool.go(task, i)  # ten workers started or woken; none has run yet
    pool.set_cap(1)
    s = pool.stats()
    assert s.running == 0
    assert pool.worker_count() <= 1, s  # nothing runs: the cap holds at once
    with must_not_hang("join()"):
        assert pool.join()
    assert sorted(ran) == list(range(10))
    assert most[0] == 1
    assert check_counts(pool).workers <= 1


def test_worker_count_after_set_cap_exceeds_cap_only_by_running_workers() -> None:
    pool = ggopool.new_pool("cut", 4, Config(idle_timeout=None))
    gate = Event()
    for _ in range(2):
        pool.go(gate.wait)
    gevent.idle()
    for _ in range(2):
        pool.go(gate.wait)  # two more workers started, not yet running
    pool.set_cap(1)
    s = pool.stats()
    assert s.running == 2
    assert pool.worker_count() <= 1 + s.running, s
    gevent.idle()
    assert check_counts(pool).running == 2
    gate.set()
    with must_not_hang("join()"):
        assert pool.join()
    assert check_counts(pool).workers <= 1


# -- 14. a Timeout or kill a task leaves behind ----------------------------------------------


def fired(timeout: gevent.Timeout) -> None:
    """Let the loop run until ``timeout`` has fired (bounded)."""
    for _ in range(100):
        if not timeout.pending:
            return
        gevent.idle()
    raise AssertionError(f"{timeout!r} never fired")


def test_timeout_a_task_left_running_ends_its_parked_worker_cleanly(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("leak", 1, Config(idle_timeout=None))
    left = go_leaving_a_timeout(pool)
    gevent.idle()
    assert pool.stats().idle == 1
    fired(left[0])  # lands in the parked worker
    assert take_one(hub_errors, pool, gevent.Timeout) is left[0]
    s = check_counts(pool)
    assert (s.workers, s.idle, s.completed) == (0, 0, 1)
    ran: list[int] = []
    pool.go(ran.append, 1)
    runs_next_task(pool)
    assert ran == [1]
    assert hub_errors.take() == []


def test_task_killing_its_own_worker_then_returning_spares_the_next_task() -> None:
    pool = ggopool.new_pool("leak", 1, Config(idle_timeout=None))
    ran: list[int] = []
    pool.go(lambda: gevent.kill(gevent.getcurrent()))
    gevent.idle()  # the kill lands in the parked worker
    s = check_counts(pool)
    assert (s.workers, s.completed) == (0, 1)
    pool.go(ran.append, 1)
    runs_next_task(pool)
    assert ran == [1]


def test_timeout_a_task_left_running_hits_the_next_task_on_that_worker(
    hub_errors: HubErrors,
) -> None:
    # The documented hazard: unlike a greenlet of its own, a worker runs the next task,
    # and a Timeout the previous task started and never cancelled fires into it.
    pool = ggopool.new_pool("leak", 1, Config(idle_timeout=None))
    gate = Event()
    left = go_leaving_a_timeout(pool)
    victim = pool.submit(gate.wait)  # runs next, on the same worker
    bystander = pool.submit(lambda: "unaffected")
    gevent.idle()
    fired(left[0])
    assert victim.ready()
    assert victim.exception is left[0]
    with must_not_hang("the next task"):
        assert bystander.get() == "unaffected"
    pool.go(gate.wait)
    gevent.idle()
    pool.go(fail)
    gate.set()
    gevent.idle()
    take_one(hub_errors, pool, ValueError)
    s = check_counts(pool)
    assert (s.workers, s.failed, s.completed) == (1, 2, 3)
    runs_next_task(pool)


def test_go_task_hit_by_a_timeout_a_previous_task_left_is_reported(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("leak", 1, Config(idle_timeout=None))
    gate = Event()
    left = go_leaving_a_timeout(pool)
    pool.go(gate.wait)
    gevent.idle()
    fired(left[0])
    assert take_one(hub_errors, pool, gevent.Timeout) is left[0]
    s = check_counts(pool)
    assert (s.workers, s.failed, s.completed) == (1, 1, 1)
    runs_next_task(pool)


def test_kill_a_task_aimed_at_its_own_worker_hits_the_next_task() -> None:
    # The same hazard with gevent.kill(getcurrent()): the next task is killed, as a
    # GreenletExit kills any task, and its worker ends; another takes the queue.
    pool = ggopool.new_pool("leak", 1, Config(idle_timeout=None))
    gate = Event()
    pool.go(lambda: gevent.kill(gevent.getcurrent()))
    victim = pool.submit(gate.wait)
    bystander = pool.submit(lambda: "unaffected")
    gevent.idle()
    assert isinstance(victim.value, GreenletExit)
    with must_not_hang("the next task"):
        assert bystander.get() == "unaffected"
    s = check_counts(pool)
    assert (s.workers, s.completed, s.failed) == (1, 3, 0)
    runs_next_task(pool)


# -- the documented Pool.kill() rules for all of the above ---------------------------------------


def test_pool_kill_returns_promptly_with_no_idle_timeout() -> None:
    pool = ggopool.new_pool("kill", 3, Config(idle_timeout=None))
    gate = Event()
    tasks = [pool.submit(gate.wait) for _ in range(5)]
    gevent.idle()
    with must_not_hang("Pool.kill()"):
        assert pool.kill(timeout=None) is True
    assert all(task.ready() for task in tasks)
    assert check_counts(pool).workers == 0
    assert pool.closed is False  # killed, not closed: it goes on
    runs_next_task(pool)


def test_every_finish_hook_runs_in_order_and_one_that_raises_is_reported(
    hub_errors: HubErrors,
) -> None:
    # What a task calls as it finishes (its pool's membership, a group, an apply_async
    # callback...): kept as one hook, then as a list, and each runs even if one raises.
    pool = ggopool.new_pool("hooks", 1)
    gate = Event()
    task = pool.submit(gate.wait)
    called: list[str] = []

    def broken(t: ggopool.Task[Any]) -> None:
        called.append("broken")
        raise ValueError("hook")

    task._add_hook(lambda t: called.append("first"))
    task._add_hook(broken)
    task._add_hook(lambda t: called.append("third"))
    gevent.idle()
    assert called == []  # held on the gate
    gate.set()
    assert task.get(timeout=5) is True
    assert called == ["first", "broken", "third"]
    [(context, kind, value)] = hub_errors.take()
    assert context is task
    assert kind is ValueError
    assert str(value) == "hook"
    # A hook added once the task is done runs at once.
    task._add_hook(lambda t: called.append("late"))
    assert called[-1] == "late"


# -- 15. a kill the task swallows, a second kill ------------------------------------------------


class SpecialError(Exception):
    """What the last kill of a task that survives kills is given, to end it."""


def swallows_the_exit(gate: Event, cleaned: list[str], cleanup_gate: Event | None = None) -> str:
    """gevent's clean-up idiom: catch the kill, clean up (maybe yielding), return."""
    try:
        gate.wait()
    except GreenletExit:
        if cleanup_gate is not None:
            cleanup_gate.wait()
        cleaned.append("cleaned")
        return "cleaned up"
    return "finished"


def survives_kills(shots: list[str]) -> str:
    """gevent's Undead: survives every kill but SpecialError, counting the shots."""
    while True:
        try:
            Event().wait()
        except SpecialError:
            shots.append("SpecialError")
            return "ended"
        except BaseException as exc:  # noqa: BLE001 - the point: it survives
            shots.append(type(exc).__name__)


@pytest.mark.parametrize("idle_timeout", [None, 10.0])
@pytest.mark.parametrize("via", ["go", "submit", "spawn"])
def test_pool_kill_ends_a_worker_whose_task_swallows_the_exit(
    idle_timeout: float | None, via: str
) -> None:
    pool = ggopool.new_pool("swallow", 2, Config(idle_timeout=idle_timeout))
    gate = Event()
    cleaned: list[str] = []
    getattr(pool, via)(swallows_the_exit, gate, cleaned)
    gevent.idle()
    worker = next(iter(pool._greenlets))
    with must_not_hang("Pool.kill()"):
        assert pool.kill(timeout=HANG) is True
    assert cleaned == ["cleaned"]
    assert worker.dead
    s = check_counts(pool)
    assert (s.workers, s.idle, s.running) == (0, 0, 0)
    runs_next_task(pool)


def test_pool_kill_without_blocking_ends_a_swallowing_worker_after_its_task() -> None:
    # The task cleans up for a while after catching the kill; meanwhile a task is queued
    # on the cap-1 pool. The worker runs no task after the one the kill was aimed at.
    pool = ggopool.new_pool("swallow", 1, Config(idle_timeout=None))
    gate, cleanup_gate = Event(), Event()
    cleaned: list[str] = []
    pool.go(swallows_the_exit, gate, cleaned, cleanup_gate)
    gevent.idle()
    [worker] = list(pool._greenlets)
    assert pool.kill(block=False) is False
    gevent.idle()  # the exit landed: the task is cleaning up
    after = pool.submit(gevent.getcurrent)
    gevent.idle()
    assert not after.ready()  # the cap is taken by the worker that is cleaning up
    assert check_counts(pool).workers == 1
    cleanup_gate.set()
    with must_not_hang("the task queued after the kill"):
        assert after.get() is not worker
    assert worker.dead
    assert cleaned == ["cleaned"]
    assert check_counts(pool).workers == 1


def test_pool_kill_with_an_exception_throws_it_once_and_ends_the_worker(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("swallow", 1, Config(idle_timeout=None))
    shots: list[str] = []
    task = pool.submit(survives_kills, shots)
    gevent.idle()
    [worker] = list(pool._greenlets)
    assert pool.kill(timeout=0.05, exception=ValueError) is False  # it survived
    assert shots == ["ValueError"]  # thrown once, and no GreenletExit after it
    assert pool.kill(timeout=0.05) is False  # a worker already leaving is not hit again
    assert shots == ["ValueError"]
    task.kill(SpecialError, timeout=HANG)  # a Task.kill is a new kill
    assert task.get(block=False) == "ended"
    gevent.idle()
    assert worker.dead  # it left after the task the pool's kill was aimed at
    assert check_counts(pool).workers == 0
    assert hub_errors.take() == []  # a submitted task that survived: nothing to report
    runs_next_task(pool)


@pytest.mark.parametrize("how", ["kill", "throw"])
def test_a_second_kill_of_a_task_is_a_new_kill(how: str) -> None:
    # gevent's test__greenletset.test_kill_fires_once: each kill throws its own exception.
    pool = ggopool.new_pool("undead", 1, Config(idle_timeout=None))
    shots: list[str] = []
    task = pool.submit(survives_kills, shots)
    gevent.idle()
    [worker] = list(pool._greenlets)
    task.kill(block=False)
    gevent.idle()
    assert shots == ["GreenletExit"]
    assert not task.ready()
    with must_not_hang("the second kill"):
        if how == "kill":
            task.kill(SpecialError, block=True)
        else:
            gevent.get_hub().loop.run_callback(task.throw, SpecialError)
            task.join()
    assert shots == ["GreenletExit", "SpecialError"]
    assert task.get(block=False) == "ended"
    # A Task.kill ends the task, not its worker: the worker goes on with the next task.
    with must_not_hang("the next task"):
        assert pool.submit(gevent.getcurrent).get() is worker
    check_counts(pool)


# -- 16. a report that yields -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["panic_handler", "hub_report"])
@pytest.mark.parametrize("done_before", [0, 3])
def test_counts_never_go_down_while_a_failure_report_yields(
    hub_errors: HubErrors, where: str, done_before: int
) -> None:
    # A panic handler (or an application's handle_error) that logs over the network.
    pool = ggopool.new_pool("report", 2, Config(idle_timeout=None))
    hub = gevent.get_hub()
    inside, done = Event(), Event()

    def slow_report(*args: Any) -> None:
        inside.set()
        done.wait()

    for _ in range(done_before):
        pool.go(int)
    gevent.idle()
    before = check_counts(pool)
    assert (before.completed, before.failed) == (done_before, 0)
    if where == "panic_handler":
        pool.set_panic_handler(slow_report)
    else:
        hub.handle_error = slow_report  # type: ignore[method-assign,assignment]
    try:
        pool.go(fail)
        with must_not_hang("the report"):
            inside.wait()
        s = check_counts(pool)
        # The failed task is done: counted failed, not running; completed stays.
        assert (s.completed, s.failed, s.running, s.submitted) == (
            done_before,
            1,
            0,
            done_before + 1,
        )
        assert s.workers == 1
        assert pool.join(timeout=0.01) is False  # join waits for the report as well
        done.set()
        with must_not_hang("join()"):
            assert pool.join()
    finally:
        hub.handle_error = hub_errors.handle_error  # type: ignore[method-assign,assignment]
    s = check_counts(pool)
    assert (s.completed, s.failed, s.running) == (done_before, 1, 0)
    runs_next_task(pool)


def fetch(url: str, retries: int = 0) -> NoReturn:
    raise ValueError(f"cannot fetch {url}")


@pytest.mark.parametrize("how", ["raised", "killed_before_it_ran"])
def test_report_of_a_failed_spawn_task_names_its_arguments(hub_errors: HubErrors, how: str) -> None:
    hub = gevent.get_hub()
    reports: list[str] = []
    pool = ggopool.new_pool("named", 1)

    def record(context: Any, type_: Any, value: Any, tb: Any) -> None:
        reports.append(f"{context!r} failed with {type_.__name__}")

    hub.handle_error = record  # type: ignore[method-assign,assignment]  # the report as made
    try:
        if how == "raised":
            task = pool.spawn(fetch, "/bad", retries=3)
            gevent.idle()
        else:
            gate = Event()
            pool.go(gate.wait)
            task = pool.spawn(fetch, "/bad", retries=3)
            task.kill(ValueError("stopped"), block=False)
            gate.set()
            gevent.idle()
    finally:
        hub.handle_error = hub_errors.handle_error  # type: ignore[method-assign,assignment]
    [report] = reports
    assert report.endswith(": fetch('/bad', retries=3)> failed with ValueError"), report
    # Done, it forgets its arguments after the report, as a dead greenlet does.
    assert (task.args, task.kwargs) == ((), {})
    assert repr(task).endswith(": fetch>")


def test_default_report_of_a_failed_spawn_task_prints_its_call(hub_errors: HubErrors) -> None:
    hub = gevent.get_hub()
    stream = io.StringIO()
    del hub.handle_error  # gevent's own handle_error, printing to exception_stream
    hub.exception_stream = stream
    try:
        ggopool.spawn(fetch, "/bad", retries=3)
        gevent.idle()
    finally:
        del hub.exception_stream
        hub.handle_error = hub_errors.handle_error  # type: ignore[method-assign,assignment]
    assert "fetch('/bad', retries=3)> failed with ValueError" in stream.getvalue()
