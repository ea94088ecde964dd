"""The gevent drop-in: every row of docs/migration.md's two tables, checked.

Each test is registered under the first cell of the row it checks (`row`), and
`test_every_row_of_the_migration_tables_has_a_test` fails if a row of the tables has no test.
Workers are held on Events while the tests assert; gevent.idle() lets the others run.
"""

from __future__ import annotations

import itertools
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gevent
import gevent.local
import gevent.pool
import greenlet
import pytest
from gevent.event import AsyncResult, Event
from gevent.queue import Queue
from greenlet import GreenletExit

import ggopool
from ggopool import Config, PoolFull, Task
from tests.conftest import HubErrors

F = TypeVar("F", bound=Callable[..., Any])

MIGRATION = Path(__file__).resolve().parent.parent / "docs" / "migration.md"
TABLES = ("## From gevent.spawn", "## From gevent.pool.Pool")

#: The first cell of a table row -> the tests that check it.
ROWS: dict[str, list[str]] = {}


def row(*cells: str) -> Callable[[F], F]:
    def register(test: F) -> F:
        for cell in cells:
            ROWS.setdefault(cell, []).append(test.__name__)
        return test

    return register


def table_rows() -> list[str]:
    """The first cells of the rows of the two migration tables."""
    cells: list[str] = []
    section = None
    for line in MIGRATION.read_text().splitlines():
        if line.startswith("## "):
            section = line if line in TABLES else None
        elif section and line.startswith("| ") and not line.startswith("| gevent |"):
            cells.append(line.split(" | ")[0][2:].strip())
    return cells


def test_every_row_of_the_migration_tables_has_a_test() -> None:
    cells = table_rows()
    assert len(cells) >= 35
    assert [cell for cell in cells if cell not in ROWS] == []
    assert [cell for cell in ROWS if cell not in cells] == []


class ExpectedError(Exception):
    pass


def fail(msg: str = "boom") -> None:
    raise ExpectedError(msg)


def value_of(task: Task[Any]) -> object:
    """``task.value`` as an object: a killed task's is its GreenletExit, which the type
    (``T | None``, as gevent's stubs give a greenlet's value) leaves out."""
    return task.value


def gevent_like_pool(size: int, name: str = "gevent-like") -> ggopool.Pool:
    return ggopool.new_pool(name, size, Config(spawn_waits_when_full=True))


# -- From gevent.spawn ----------------------------------------------------------------------


@row("`gevent.spawn(fn, *args, **kwargs)`")
def test_spawn_queues_on_the_default_pool_and_returns_a_task() -> None:
    def add(a: int, b: int = 0) -> int:
        return a + b

    task = ggopool.spawn(add, 2, b=3)
    assert isinstance(task, Task)
    assert task._pool is ggopool.default_pool()
    assert not task.ready()  # queued: it runs once the caller yields, as a greenlet would
    assert task.get() == 5
    with pytest.raises(TypeError, match=r"^fn must be callable, got 1$"):
        ggopool.spawn(1)  # type: ignore[arg-type]


@row("`gevent.spawn_later(seconds, fn, ...)`")
def test_spawn_later_queues_after_the_delay_and_a_kill_before_then_stops_it() -> None:
    ran: list[int] = []
    soon = ggopool.spawn_later(0.001, ran.append, 1)
    assert soon
    assert not soon.ready()
    gevent.idle()
    assert ran == []  # not before its time
    assert soon.get(timeout=5) is None
    assert ran == [1]

    submitted = ggopool.default_pool().stats().submitted
    later = ggopool.spawn_later(60, ran.append, 2)
    later.kill()
    assert later.dead
    assert later.successful()
    assert isinstance(value_of(later), GreenletExit)
    gevent.sleep(0.01)
    assert ran == [1]  # never queued, never run
    assert ggopool.default_pool().stats().submitted == submitted

    cancelled = ggopool.spawn_later(60, ran.append, 3)
    assert cancelled.cancel()
    assert cancelled.cancelled()
    with pytest.raises(ggopool.TaskCancelled):
        cancelled.get()
    with pytest.raises(ValueError, match=r"^seconds must be a finite number >= 0, got -1$"):
        ggopool.spawn_later(-1, print)
    with pytest.raises(TypeError, match=r"^seconds must be a finite number >= 0, got None$"):
        ggopool.spawn_later(None, print)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^fn must be callable, got 1$"):
        ggopool.spawn_later(1, 1)  # type: ignore[arg-type]


@row("`g.get(block=True, timeout=None)`")
def test_get_returns_raises_and_times_out_with_seconds_or_a_timeout_object(
    hub_errors: HubErrors,
) -> None:
    gate = Event()
    held = ggopool.spawn(gate.wait)
    with pytest.raises(gevent.Timeout):
        held.get(block=False)
    with pytest.raises(gevent.Timeout):
        held.get(timeout=0.01)
    timeout = gevent.Timeout(0.01)
    with pytest.raises(gevent.Timeout) as raised:
        held.get(timeout=timeout)
    assert raised.value is timeout
    timeout = gevent.Timeout(0.01, ExpectedError("mine"))
    with pytest.raises(ExpectedError, match=r"^mine$"):
        held.get(timeout=timeout)
    gate.set()
    assert held.get() is True

    failed = ggopool.spawn(fail, "bad")
    for _ in range(2):  # each get() raises with the task's own traceback, not a longer one
        with pytest.raises(ExpectedError, match=r"^bad$") as info:
            failed.get()
        frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert frames[-1] == "fail"
        assert frames.count("get") == 1
    hub_errors.take()


@row("`g.join(timeout=None)`")
def test_join_returns_none_on_timeout_and_when_done() -> None:
    gate = Event()
    task = ggopool.spawn(gate.wait)
    assert task.join(timeout=0.01) is None  # type: ignore[func-returns-value]
    assert not task.ready()
    assert task.join(timeout=gevent.Timeout(0.01)) is None  # type: ignore[func-returns-value]
    gate.set()
    assert task.join() is None  # type: ignore[func-returns-value]
    assert task.ready()


@row("`g.value`, `g.exception`, `g.exc_info`")
def test_value_exception_and_exc_info(hub_errors: HubErrors) -> None:
    ok = ggopool.spawn(int, "7")
    bad = ggopool.spawn(fail, "x")
    gevent.joinall([ok, bad])
    assert (ok.value, ok.exception, ok.exc_info) == (7, None, None)
    assert bad.value is None
    assert isinstance(bad.exception, ExpectedError)
    assert bad.exc_info is not None
    type_, value, tb = bad.exc_info
    assert type_ is ExpectedError
    assert value is bad.exception
    assert tb is not None
    assert len(hub_errors.take()) == 1


@row("`g.ready()`, `g.successful()`, `g.dead`")
def test_ready_successful_dead(hub_errors: HubErrors) -> None:
    gate = Event()
    running = ggopool.spawn(gate.wait)
    assert (running.ready(), running.successful(), running.dead) == (False, False, False)
    gevent.idle()
    assert (running.ready(), running.successful(), running.dead) == (False, False, False)
    gate.set()
    running.join()
    assert (running.ready(), running.successful(), running.dead) == (True, True, True)
    bad = ggopool.spawn(fail)
    bad.join()
    assert (bad.ready(), bad.successful(), bad.dead) == (True, False, True)
    hub_errors.take()


@row("`bool(g)`, `g.started`")
def test_a_task_is_true_while_queued_or_running() -> None:
    gate = Event()
    task = ggopool.spawn(gate.wait)
    assert task
    assert task.started
    gevent.idle()
    assert task
    assert task.started
    loops = 0
    gate.set()
    while task:  # the loop gevent code writes
        gevent.sleep(0)
        loops += 1
    assert loops >= 1
    assert not task
    assert not task.started


@row("`g.link(cb)`, `g.link_value(cb)`, `g.link_exception(cb)`")
def test_links_run_in_a_greenlet_of_their_own_after_the_end(hub_errors: HubErrors) -> None:
    calls: list[tuple[str, object, bool]] = []
    hub = gevent.get_hub()

    def note(kind: str) -> Callable[[Any], None]:
        return lambda t: calls.append((kind, t, gevent.getcurrent() is not hub))

    ok = ggopool.spawn(int, "1")
    bad = ggopool.spawn(fail)
    for task in (ok, bad):
        task.link(note("link"))
        task.link_value(note("value"))
        task.link_exception(note("exception"))
    target: AsyncResult[Any] = AsyncResult()
    bad.link(target)
    gevent.joinall([ok, bad])
    gevent.idle()
    assert sorted((kind, t is ok, own) for kind, t, own in calls) == [
        ("exception", False, True),
        ("link", False, True),
        ("link", True, True),
        ("value", True, True),
    ]
    with pytest.raises(ExpectedError):
        target.get(timeout=5)
    calls.clear()
    ok.link(note("late"))  # linked after the end: still called
    gevent.idle()
    assert calls == [("late", ok, True)]
    hub_errors.take()


@row("`g.rawlink(cb)`, `g.unlink(cb)`, `g.unlink_all()`, `g.has_links()`")
def test_rawlink_unlink_unlink_all_has_links() -> None:
    with pytest.raises(TypeError, match=r"^callback must be callable, got None$"):
        ggopool.spawn(int).rawlink(None)  # type: ignore[arg-type]
    gate = Event()
    task = ggopool.spawn(gate.wait)
    seen: list[str] = []

    def first(t: Task[Any]) -> None:
        seen.append("first")
        t.unlink(second)  # a link may unlink a later one while links run

    def second(t: Task[Any]) -> None:
        seen.append("second")

    def linked(t: Task[Any]) -> None:
        seen.append("linked")

    task.rawlink(first)
    task.rawlink(second)
    task.link(linked)
    assert task.has_links() == 3
    task.unlink(linked)  # finds the link made by link()
    assert task.has_links() == 2
    gate.set()
    task.join()
    gevent.idle()
    assert seen == ["first"]
    assert not task.has_links()
    other = ggopool.spawn(int)
    other.rawlink(linked)
    other.link(linked)
    other.unlink_all()
    assert not other.has_links()
    other.join()
    gevent.idle()
    assert seen == ["first"]


@row("`g.kill(exception=GreenletExit, block=True, timeout=None)`")
def test_kill_before_it_runs_and_while_it_runs(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("kill", 1)
    ran: list[int] = []
    queued = pool.spawn(ran.append, 1)
    queued.kill()
    assert queued.dead
    assert queued.successful()
    assert queued.cancelled()
    assert isinstance(value_of(queued), GreenletExit)
    assert queued.exception is None
    failed_before = pool.spawn(ran.append, 2)
    failed_before.kill(exception=ExpectedError("stop"), block=False)
    assert not failed_before.successful()
    assert isinstance(failed_before.exception, ExpectedError)
    [(context, type_, _)] = hub_errors.take()  # reported, as gevent reports a greenlet's
    assert context is failed_before
    assert type_ is ExpectedError

    gate = Event()
    running = pool.spawn(gate.wait)
    after = pool.spawn(lambda: gevent.getcurrent())
    gevent.idle()
    worker = running._greenlet
    running.kill(ExpectedError)
    assert isinstance(running.exception, ExpectedError)
    [(context, _, _)] = hub_errors.take()
    assert context is running
    assert after.get(timeout=5) is worker  # the worker went on with the next task
    assert ran == []
    exiting = pool.spawn(gate.clear)
    exiting.kill()  # GreenletExit before it ran: nothing reported
    assert hub_errors.take() == []


@row("`g.throw(exc)`")
def test_throw_from_the_hub_raises_in_the_running_task(hub_errors: HubErrors) -> None:
    gate = Event()
    task = ggopool.spawn(gate.wait)
    gevent.idle()
    gevent.get_hub().loop.run_callback(task.throw, ExpectedError("thrown"))
    task.join(timeout=5)
    assert isinstance(task.exception, ExpectedError)
    queued = ggopool.spawn(gate.wait)
    queued.throw(ExpectedError("before"))  # a queued task: killed before it starts
    assert isinstance(queued.exception, ExpectedError)
    assert len(hub_errors.take()) == 2


@row("`gevent.kill(g)`, `gevent.killall(gs)`")
def test_gevent_kill_and_killall_take_tasks() -> None:
    pool = ggopool.new_pool("killall", 2)
    ran: list[int] = []
    gate = Event()
    running = [pool.spawn(gate.wait) for _ in range(2)]
    gevent.idle()
    queued = [pool.spawn(ran.append, i) for i in range(3)]
    everything: list[Task[object]] = [*running, *queued]
    gevent.killall(everything)
    assert all(t.dead and t.successful() for t in everything)
    assert all(isinstance(value_of(t), GreenletExit) for t in everything)
    gevent.idle()
    assert ran == []  # killall stopped every queued task before any started
    one = pool.spawn(gate.wait)
    gevent.idle()
    gevent.kill(one)
    one.join(timeout=5)
    assert one.dead
    assert isinstance(value_of(one), GreenletExit)


@row("`gevent.joinall(gs, raise_error=True)`, `gevent.wait(gs)`, `gevent.iwait(gs)`")
def test_joinall_wait_and_iwait_take_tasks(hub_errors: HubErrors) -> None:
    gates = [Event() for _ in range(3)]
    tasks = [ggopool.spawn(g.wait) for g in gates]
    for gate in reversed(gates):
        gate.set()
    done: list[Task[bool]] = gevent.joinall(tasks, timeout=5)  # typed without an ignore
    assert set(done) == set(tasks)
    assert set(gevent.wait(tasks, timeout=5)) == set(tasks)
    gates = [Event() for _ in range(3)]
    tasks = [ggopool.spawn(g.wait) for g in gates]
    gevent.idle()
    order = []
    for i in (2, 0, 1):
        gates[i].set()
        order.append(next(iter(gevent.iwait([tasks[i]]))))
    assert order == [tasks[2], tasks[0], tasks[1]]
    bad = ggopool.spawn(fail, "first")
    with pytest.raises(ExpectedError, match=r"^first$"):
        gevent.joinall([bad, ggopool.spawn(int)], raise_error=True)
    hub_errors.take()


@row("`with gevent.spawn(fn) as g:`")
def test_with_block_joins_and_a_raising_block_kills_with_its_exception(
    hub_errors: HubErrors,
) -> None:
    with ggopool.spawn(gevent.sleep, 0) as task:
        assert task.started
    assert task.dead
    assert task.successful()
    gate = Event()
    tasks: list[Task[bool]] = []

    def block_that_raises() -> None:
        with ggopool.spawn(gate.wait) as held:
            tasks.append(held)
            gevent.idle()
            raise ExpectedError("in the block")

    with pytest.raises(ExpectedError):
        block_that_raises()
    assert tasks[0].dead
    assert isinstance(tasks[0].exception, ExpectedError)
    hub_errors.take()


@row("`g.name`, `g.minimal_ident`, `g.args`, `g.kwargs`")
def test_name_minimal_ident_args_kwargs() -> None:
    gate = Event()
    task = ggopool.spawn(gate.wait, 5.0)
    assert task.args == (5.0,)
    assert task.kwargs == {}
    assert isinstance(task.minimal_ident, int)
    assert task.minimal_ident >= 0
    assert task.name == f"Task-{task.minimal_ident}"
    assert "Task-" not in repr(task)  # shown once assigned, as gevent's
    task.name = "fetch"
    assert task.name == "fetch"
    assert repr(task).startswith("<ggopool.Task 'fetch' of pool")
    other = ggopool.spawn(print, sep="")
    assert other.kwargs == {"sep": ""}
    assert other.minimal_ident != task.minimal_ident
    gate.set()
    gevent.joinall([task, other])
    call: object = (task.args, task.kwargs)
    assert call == ((), {})  # dropped once done, as gevent does


@row("a failed greenlet's traceback, printed by the hub")
def test_a_spawned_failure_is_reported_a_submitted_one_is_not(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("report", 2)
    spawned = pool.spawn(fail, "spawned")
    submitted = pool.submit(fail, "submitted")
    gevent.joinall([spawned, submitted])
    [(context, type_, value)] = hub_errors.take()
    assert context is spawned
    assert type_ is ExpectedError
    assert str(value) == "spawned"
    assert pool.stats().failed == 2

    handled: list[tuple[str, BaseException]] = []

    def handler(ctx: object, exc: BaseException) -> None:
        failed = ggopool.failed_task()
        assert failed is not None
        handled.append((failed.call, exc))

    pool.set_panic_handler(handler)
    again = pool.spawn(fail, "handled")
    again.join()
    killed = pool.spawn(fail, "never runs")
    killed.kill(ExpectedError("killed"))
    assert [(call, str(exc)) for call, exc in handled] == [
        ("fail('handled')", "handled"),
        ("fail('never runs')", "killed"),
    ]
    assert hub_errors.take() == []
    with pytest.raises(ExpectedError):
        again.get()  # and the caller still gets it


@row("`gevent.local.local` (and `threading.local` when patched) in the spawned function")
def test_each_task_starts_with_fresh_greenlet_local_state() -> None:
    pool = ggopool.new_pool("locals", 1)  # one worker runs every task
    local = gevent.local.local()
    seen: list[tuple[object, object]] = []

    def task(i: int) -> None:
        seen.append((getattr(local, "x", None), getattr(gevent.getcurrent(), "mine", None)))
        local.x = i
        gevent.getcurrent().mine = i  # type: ignore[attr-defined]

    tasks = [pool.spawn(task, i) for i in range(3)]
    gevent.joinall(tasks)
    assert len({t.value for t in [pool.spawn(gevent.getcurrent) for _ in range(2)]}) <= 1
    assert seen == [(None, None)] * 3


@row("`g = Greenlet(fn); g.start()`")
def test_a_task_made_by_pool_task_is_queued_by_start() -> None:
    ran: list[int] = []
    task = ggopool.default_pool().task(ran.append, 1)
    gevent.idle()
    assert ran == []
    assert not task
    assert not task.started
    task.start()
    assert task
    task.start()  # twice: harmless
    task.join()
    task.start()
    gevent.idle()
    assert ran == [1]


@row("`g.start_later(seconds)`")
def test_start_later_queues_a_task_later() -> None:
    task = ggopool.default_pool().task(int, "3")
    task.start_later(0)
    assert task.started
    assert task.get(timeout=5) == 3
    assert ggopool.spawn_later(0, int, "4").get(timeout=5) == 4


@row("`g.parent`, `g.switch()`, `g.gr_frame`, `g.spawn_tree_locals`, `Greenlet.add_spawn_callback`")
def test_a_task_is_not_a_greenlet() -> None:
    task = ggopool.spawn(gevent.getcurrent)
    # For a type checker a Task is a greenlet (gevent's stubs need it); at run time, not.
    runtime_class: type = type(task)
    assert not issubclass(runtime_class, greenlet.greenlet)
    for name in ("parent", "switch", "gr_frame", "spawn_tree_locals", "add_spawn_callback"):
        assert not hasattr(task, name), name
    worker = task.get()
    assert worker is not task
    assert isinstance(worker, greenlet.greenlet)


@row("`repr(g)`")
def test_repr_names_the_pool_the_state_and_the_call() -> None:
    task = ggopool.new_pool("orders", 1).spawn(int, "12")
    assert re.fullmatch(
        r"<ggopool\.Task of pool 'orders' pending at 0x[0-9a-f]+: int\('12'\)>", repr(task)
    )
    task.join()
    assert re.fullmatch(r"<ggopool\.Task of pool 'orders' done at 0x[0-9a-f]+: int>", repr(task))


# -- From gevent.pool.Pool ------------------------------------------------------------------


@row("`gevent.pool.Pool(n)`")
def test_spawn_waits_while_the_pool_holds_n_members() -> None:
    pool = gevent_like_pool(2)
    gates = [Event() for _ in range(3)]
    first = [pool.spawn(g.wait) for g in gates[:2]]
    assert len(pool) == 2
    assert pool.full()
    spawned: list[Task[bool]] = []
    spawner = gevent.spawn(lambda: spawned.append(pool.spawn(gates[2].wait)))
    gevent.idle()
    assert spawned == []  # waiting for room
    gates[0].set()
    spawner.join(timeout=5)
    assert len(spawned) == 1
    assert len(pool) == 2
    assert first[0].dead
    assert not first[1].dead
    for gate in gates:
        gate.set()
    assert pool.join(timeout=5)
    assert len(pool) == 0
    with pytest.raises(TypeError, match=r"^spawn_waits_when_full must be a bool, got 'yes'$"):
        Config(spawn_waits_when_full="yes")  # type: ignore[arg-type]


@row("`gevent.pool.Pool()`")
def test_an_unbounded_pool_is_never_full() -> None:
    pool = gevent_like_pool(sys.maxsize)
    gate = Event()
    tasks = [pool.spawn(gate.wait) for _ in range(100)]
    assert not pool.full()
    assert pool.free_count() == sys.maxsize - 100
    gate.set()
    gevent.joinall(tasks)


@row("`gevent.pool.Pool(0)`")
def test_a_pool_of_size_zero_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^cap must be an int >= 1, got 0$"):
        gevent_like_pool(0)


@row("`pool.spawn(fn, *args, **kwargs)`")
def test_spawn_without_the_config_never_waits() -> None:
    pool = ggopool.new_pool("queues", 1)
    gate = Event()
    tasks = [pool.spawn(gate.wait) for _ in range(3)]  # no wait although cap is 1
    assert len(pool) == 3
    assert pool.full()
    assert pool.free_count() == 0
    gevent.idle()
    assert pool.worker_count() == 1
    gate.set()
    gevent.joinall(tasks)
    assert len(pool) == 0


@row("`pool.apply(fn, args, kwds)`")
def test_apply_returns_raises_and_runs_inline_from_its_own_task() -> None:
    pool = gevent_like_pool(1)
    assert pool.apply(divmod, (7, 2)) == (3, 1)
    assert pool.apply(dict, kwds={"a": 1}) == {"a": 1}
    with pytest.raises(ExpectedError, match=r"^applied$"):
        pool.apply(fail, ("applied",))

    def outer() -> tuple[object, object]:
        # The pool's only worker runs this: apply must not wait for a worker.
        return gevent.getcurrent(), pool.apply(gevent.getcurrent)

    here, inner = pool.apply(outer)
    assert here is inner


@row("`pool.apply_async(fn, args, kwds, callback)`")
def test_apply_async_never_waits_and_calls_back_on_success(hub_errors: HubErrors) -> None:
    pool = gevent_like_pool(1)
    gate = Event()
    held = pool.spawn(gate.wait)
    got: list[object] = []
    task = pool.apply_async(int, ("5",), callback=got.append)  # full: queued anyway
    failing = pool.apply_async(fail, callback=got.append)
    assert len(pool) == 3
    gate.set()
    everything: list[Task[Any]] = [held, task, failing]
    gevent.joinall(everything)
    gevent.idle()
    assert task.value == 5
    assert got == [5]
    assert len(hub_errors.take()) == 1  # the failure, reported as a spawned task's


@row("`pool.apply_cb(fn, args, kwds, callback)`")
def test_apply_cb_returns_and_calls_back() -> None:
    pool = gevent_like_pool(2)
    got: list[object] = []
    assert pool.apply_cb(max, (3, 9), callback=got.append) == 9
    gevent.idle()
    assert got == [9]
    with pytest.raises(TypeError, match=r"^callback must be callable or None, got 3$"):
        pool.apply_cb(max, (1, 2), callback=3)  # type: ignore[arg-type]


@row("`pool.map(fn, *iterables)`")
def test_map_takes_several_iterables_and_raises_after_all_ran() -> None:
    pool = gevent_like_pool(2)
    assert pool.map(pow, [2, 3, 4], [3, 2]) == [8, 9]
    finished: list[int] = []

    def step(i: int) -> int:
        gevent.sleep(0)
        if i in (1, 3):
            raise ExpectedError(f"bad {i}")
        finished.append(i)
        return i

    with pytest.raises(ExpectedError, match=r"^bad 1$"):
        pool.map(step, range(5))
    assert sorted(finished) == [0, 2, 4]


@row("`pool.map_async(fn, iterable, callback)`, `pool.map_cb(...)`")
def test_map_async_and_map_cb() -> None:
    pool = gevent_like_pool(1)  # map_async's task runs on the default pool: no deadlock
    got: list[object] = []
    task = pool.map_async(abs, [-1, -2], callback=got.append)
    assert task.get(timeout=5) == [1, 2]
    assert got == [[1, 2]]
    assert pool.map_cb(str, [1], callback=got.append) == ["1"]
    assert got[-1] == ["1"]


@row("`pool.imap(fn, *iterables, maxsize=None)`, `pool.imap_unordered(...)`")
def test_imap_streams_bounds_and_goes_on_after_a_failure() -> None:
    pool = ggopool.new_pool("imap", 3)
    read: list[int] = []

    def endless() -> Iterator[int]:
        for i in itertools.count():
            read.append(i)
            yield i

    it = pool.imap(abs, endless(), maxsize=2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    gevent.idle()
    assert len(read) <= 8  # it streams: the input is read as results are taken
    it.kill()  # read no more: what was spawned still comes out, then the end
    assert list(it) == list(range(5, len(read)))

    def inverse(x: int) -> float:
        return 1 / x

    for imap in (pool.imap, pool.imap_unordered):
        results = imap(inverse, [1, 0, 2])
        assert next(results) == 1.0
        with pytest.raises(ZeroDivisionError):
            next(results)
        assert next(results) == 0.5  # goes on after the failure, as gevent's
        with pytest.raises(StopIteration):
            next(results)
        with pytest.raises(StopIteration):
            next(results)
    assert list(pool.imap(pow, [2, 3], [2, 2, 2])) == [4, 9]
    assert sorted(pool.imap_unordered(pow, [2, 3], [2, 2])) == [4, 9]

    def broken() -> Iterator[int]:
        yield 1
        raise ExpectedError("input")

    results = pool.imap(abs, broken())
    assert next(results) == 1
    with pytest.raises(ExpectedError, match=r"^input$"):
        next(results)

    started: list[int] = []

    def note(i: int) -> int:
        started.append(i)
        return i

    bounded = pool.imap_unordered(note, range(100), maxsize=1)
    for i, _ in enumerate(bounded):
        gevent.sleep(0)
        assert len(started) <= i + 2  # at most maxsize results wait unread
    assert sorted(started) == list(range(100))
    with pytest.raises(ValueError, match=r"^maxsize must be an int >= 1, got 0$"):
        pool.imap(abs, [], maxsize=0)
    with pytest.raises(TypeError, match=r"^fn must be callable, got None$"):
        pool.imap_unordered(None, [])  # type: ignore[arg-type]


@row("`pool.join(timeout=None, raise_error=False)`")
def test_join_with_raise_error(hub_errors: HubErrors) -> None:
    pool = gevent_like_pool(2)
    gate = Event()
    pool.spawn(gate.wait)
    assert pool.join(timeout=0.01) is False
    pool.spawn(fail, "member")
    gate.set()
    with pytest.raises(ExpectedError, match=r"^member$"):
        pool.join(raise_error=True)
    assert pool.join(raise_error=True) is True  # no member now
    hub_errors.take()


@row("`pool.kill(exception=GreenletExit, block=True, timeout=None)`")
def test_pool_kill_with_an_exception_and_without_blocking(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("pool-kill", 1)
    gate = Event()
    running = pool.spawn(gate.wait)
    gevent.idle()
    queued = pool.spawn(gate.wait)
    assert pool.kill(5, exception=ExpectedError) is True  # timeout first
    assert isinstance(running.exception, ExpectedError)
    assert isinstance(queued.exception, ExpectedError)
    assert {id(ctx) for ctx, _, _ in hub_errors.take()} == {id(running), id(queued)}
    assert pool.worker_count() == 0

    again = pool.spawn(gate.wait)
    gevent.idle()
    assert pool.kill(block=False) is False  # returns at once: the worker ends later
    again.join(timeout=5)
    assert isinstance(value_of(again), GreenletExit)
    with pytest.raises(TypeError, match=r"^block must be a bool, got 1$"):
        pool.kill(block=1)  # type: ignore[arg-type]


@row("`pool.killone(g, exception, block, timeout)`")
def test_killone_kills_a_member_only() -> None:
    pool = gevent_like_pool(2)
    gate = Event()
    member = pool.spawn(gate.wait)
    stranger = ggopool.spawn(gate.wait)
    gevent.idle()
    pool.killone(stranger)
    assert not stranger.dead
    pool.killone(member)
    assert member.dead
    assert isinstance(value_of(member), GreenletExit)
    assert len(pool) == 0
    gate.set()
    stranger.join()


@row("`pool.add(g, blocking=True, timeout=None)`, `pool.discard(g)`, `pool.start(g)`")
def test_add_discard_start() -> None:
    pool = gevent_like_pool(1)
    gate = Event()
    greenlet_member = gevent.spawn(gate.wait)
    pool.add(greenlet_member)
    assert len(pool) == 1
    assert greenlet_member in pool
    foreign = ggopool.spawn(gate.wait)
    with pytest.raises(gevent.pool.PoolFull):
        pool.add(foreign, blocking=False)
    with pytest.raises(PoolFull, match=r"^pool 'gevent-like' is full: it holds 1 members$"):
        pool.add(foreign, timeout=0.01)
    pool.discard(greenlet_member)
    assert len(pool) == 0
    pool.start(foreign)  # add, then start(): a task is already queued
    assert foreign in pool
    gate.set()
    foreign.join()
    greenlet_member.join()
    gevent.idle()
    assert len(pool) == 0  # a finished member leaves on its own


@row("`len(pool)`, `g in pool`, `iter(pool)`")
def test_len_in_and_iter_count_members_not_go_tasks() -> None:
    pool = ggopool.new_pool("members", 4)
    gate = Event()
    pool.go(gate.wait)
    pool.submit(gate.wait)
    spawned = [pool.spawn(gate.wait) for _ in range(2)]
    assert len(pool) == 2
    assert set(pool) == set(spawned)
    assert spawned[0] in pool
    inside = pool.spawn(lambda: gevent.getcurrent() in pool)
    assert gevent.getcurrent() not in pool
    gate.set()
    assert inside.get(timeout=5) is True
    pool.join()
    assert len(pool) == 0
    assert list(pool) == []


@row("`pool.free_count()`, `pool.full()`, `pool.wait_available(timeout)`")
def test_free_count_full_wait_available() -> None:
    pool = gevent_like_pool(2)
    gate = Event()
    assert (pool.free_count(), pool.full()) == (2, False)
    tasks = [pool.spawn(gate.wait) for _ in range(2)]
    assert (pool.free_count(), pool.full()) == (0, True)
    assert pool.wait_available(timeout=0.01) == 0
    waiter = gevent.spawn(pool.wait_available)
    gevent.idle()
    assert not waiter.ready()
    gate.set()
    assert waiter.get(timeout=5) >= 1
    gevent.joinall(tasks)
    assert pool.free_count() == 2


@row("`pool.size`")
def test_size_is_the_cap() -> None:
    pool = gevent_like_pool(7)
    assert pool.size == 7
    pool.set_cap(9)
    assert pool.size == 9


@row("`except gevent.pool.PoolFull`")
def test_poolfull_is_also_gevents() -> None:
    assert issubclass(PoolFull, gevent.pool.PoolFull)
    assert issubclass(PoolFull, RuntimeError)
    pool = gevent_like_pool(1)
    gate = Event()
    held = pool.spawn(gate.wait)

    def from_the_hub() -> None:
        try:
            pool.spawn(int)
        except gevent.pool.PoolFull as exc:
            caught.append(exc)

    caught: list[BaseException] = []
    gevent.get_hub().loop.run_callback(from_the_hub)  # the hub cannot wait for room
    gevent.idle()
    assert len(caught) == 1
    assert str(caught[0]).endswith("and the hub cannot wait for room")
    gate.set()
    held.join()


@row("`bool(pool)`")
def test_an_empty_pool_is_true() -> None:
    pool = ggopool.new_pool("empty", 1)
    assert len(pool) == 0
    assert bool(pool) is True


# -- beyond the tables --------------------------------------------------------------------


def test_spawn_waits_for_room_from_its_own_task_as_gevents_does() -> None:
    pool = gevent_like_pool(3)
    gate = Event()
    held = pool.spawn(gate.wait)

    def spawns_a_child() -> bool:
        return pool.spawn(int, "1").get() == 1  # room for it: two members of three

    assert pool.spawn(spawns_a_child).get(timeout=5) is True
    gate.set()
    held.join()


def test_a_queue_fed_imap_ends_when_the_input_does() -> None:
    pool = gevent_like_pool(2)
    q: Queue[Any] = Queue()
    q.put(1)
    gevent.spawn_later(0.01, q.put, StopIteration)
    assert list(pool.imap(abs, q)) == [1]


def test_kill_reads_its_exception_as_gevent_does(hub_errors: HubErrors) -> None:
    # A class, an instance, a (type, value, tb) triple, or anything else, wrapped.
    pool = ggopool.new_pool("kill-args", 1)
    gate = Event()
    pool.spawn(gate.wait)
    gevent.idle()
    odd = pool.submit(gate.wait)
    odd.kill(42)
    assert type(odd.exception) is BaseException
    assert odd.exception.args == (42,)
    triple = pool.submit(gate.wait)
    error = ExpectedError("triple")
    triple.kill((ExpectedError, error, None))
    assert triple.exception is error
    assert hub_errors.take() == []  # submitted: not reported
    gate.set()
    pool.join()


def test_a_second_kill_and_a_throw_from_inside_the_task(hub_errors: HubErrors) -> None:
    gate = Event()
    task = ggopool.spawn(gate.wait)
    gevent.idle()
    task.kill(block=False)
    task.kill(ExpectedError, block=False)  # each kill its own: the first ends it, as in gevent
    task.join(timeout=5)
    assert isinstance(value_of(task), GreenletExit)
    handle: list[Task[None]] = []

    def throws_into_itself() -> None:
        handle[0].throw(ExpectedError("self"))

    handle.append(ggopool.spawn(throws_into_itself))
    handle[0].join(timeout=5)
    assert isinstance(handle[0].exception, ExpectedError)
    assert len(hub_errors.take()) == 1


def test_a_raising_link_is_reported_and_the_next_link_runs(hub_errors: HubErrors) -> None:
    ran: list[str] = []

    def raising(t: Task[Any]) -> None:
        raise ExpectedError("in a link")

    task = ggopool.spawn(int)
    task.rawlink(raising)
    task.rawlink(lambda t: ran.append("next"))
    task.join()
    gevent.idle()
    assert ran == ["next"]
    [(context, type_, _)] = hub_errors.take()
    assert type_ is ExpectedError
    assert context == (raising, task)
    assert repr(task.link) != ""  # a link's repr is its callback's
    with pytest.raises(TypeError, match=r"^callback must be callable, got None$"):
        task.link(None)  # type: ignore[arg-type]


def test_a_failed_report_of_a_spawned_task_loses_neither_task_nor_worker(
    hub_errors: HubErrors, capfd: pytest.CaptureFixture[str]
) -> None:
    # gevent's test_stderr_raising: the hub's report itself fails (a broken stderr).
    pool = gevent_like_pool(1)
    hub = gevent.get_hub()
    recorder = hub.handle_error

    def broken(*args: Any) -> None:
        raise RuntimeError("writing to the file failed")

    hub.handle_error = broken  # type: ignore[method-assign,assignment]
    try:
        task = pool.spawn(fail, "reported")
        with pytest.raises(ExpectedError):
            task.get(timeout=5)
        gevent.idle()
    finally:
        hub.handle_error = recorder  # type: ignore[method-assign]
    assert pool.free_count() == 1
    assert pool.apply(int, ("4",)) == 4  # the worker lives on
    assert "reporting it failed with RuntimeError" in capfd.readouterr().err


def test_an_exception_killing_a_parked_worker_is_reported_as_the_workers(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("parked", 1)
    worker = pool.submit(gevent.getcurrent).get()
    gevent.idle()
    gevent.kill(worker, ExpectedError("between tasks"))
    gevent.idle()
    [(context, type_, _)] = hub_errors.take()
    assert type_ is ExpectedError
    assert "not running a task" in repr(context)
    assert pool.submit(int, "2").get(timeout=5) == 2


def test_bad_input_to_the_pool_surface_changes_nothing() -> None:
    pool = gevent_like_pool(2)
    calls: list[Callable[[], object]] = [
        lambda: pool.spawn(None),  # type: ignore[arg-type]
        lambda: pool.apply(None),  # type: ignore[arg-type]
        lambda: pool.apply_async(None),  # type: ignore[arg-type]
        lambda: pool.map(None, [1]),  # type: ignore[arg-type]
        lambda: pool.map_async(None, [1]),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"^fn must be callable, got None$"):
            call()
    with pytest.raises(TypeError, match=r"^callback must be callable or None, got 1$"):
        pool.map_cb(abs, [1], callback=1)  # type: ignore[arg-type]
    assert len(pool) == 0
    assert pool.map_cb(abs, [-1]) == [1]  # no callback
    pool.close()
    with pytest.raises(ggopool.PoolClosed):
        pool.spawn(int)
    assert len(pool) == 0  # refused: never a member


def test_kill_kills_added_members_and_join_raises_an_added_failure(
    hub_errors: HubErrors,
) -> None:
    pool = gevent_like_pool(4)
    gate = Event()
    greenlet_member = gevent.spawn(gate.wait)
    raw = gevent.spawn_raw(gate.wait)
    other_pool_task = ggopool.spawn(gate.wait)
    for member in (greenlet_member, raw, other_pool_task):
        pool.add(member)
    gevent.idle()
    assert pool.kill(5) is True
    assert greenlet_member.dead
    assert raw.dead
    assert other_pool_task.dead
    pool.discard(raw)  # a raw greenlet stays a member until discarded, as in gevent
    gevent.idle()  # a gevent greenlet leaves through its rawlink, from the hub
    assert len(pool) == 0
    failing = gevent.spawn(fail, "added")
    pool.add(failing)
    with pytest.raises(ExpectedError, match=r"^added$"):
        pool.join(raise_error=True)
    hub_errors.take()


def test_adding_a_finished_task_leaves_the_pool_as_it_was() -> None:
    pool = gevent_like_pool(1)
    done = ggopool.spawn(int)
    done.join()
    pool.add(done)
    assert len(pool) == 0
    assert not pool.full()


def test_a_killed_submitted_task_is_not_reported(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("quiet", 1)
    gate = Event()
    pool.submit(gate.wait)
    queued = pool.submit(int)
    queued.kill(ExpectedError)
    assert isinstance(queued.exception, ExpectedError)
    assert hub_errors.take() == []
    gate.set()
    pool.join()


class SpecialError(Exception):
    pass


def swallows_the_exit(gate: Event, cleaned: list[str]) -> str:
    try:
        gate.wait()
    except GreenletExit:
        cleaned.append("cleaned")
        return "cleaned up"
    return "finished"


def survives_kills(shots: list[str]) -> str:
    while True:
        try:
            Event().wait()
        except SpecialError:
            shots.append("SpecialError")
            return "ended"
        except GreenletExit:
            shots.append("GreenletExit")


def kills_as_gevent_kills(pool: Any) -> list[object]:
    """What a pool's kill and a task's second kill do, for gevent's Pool and for ggopool's."""
    seen: list[object] = []
    cleaned: list[str] = []
    swallowing = pool.spawn(swallows_the_exit, Event(), cleaned)
    gevent.idle()
    with gevent.Timeout(5, AssertionError("Pool.kill() hung")):
        pool.kill()
    seen += [len(pool), swallowing.dead, swallowing.value, cleaned]
    shots: list[str] = []
    undead = pool.spawn(survives_kills, shots)
    gevent.idle()
    undead.kill(block=False)
    gevent.idle()
    seen += [undead.dead, list(shots)]
    with gevent.Timeout(5, AssertionError("the second kill hung")):
        undead.kill(SpecialError)
    gevent.idle()  # gevent's group drops a dead member from a link, in the hub
    seen += [undead.dead, undead.value, shots, len(pool)]
    return seen


def test_pool_kill_and_a_second_kill_as_gevents_side_by_side() -> None:
    expected = kills_as_gevent_kills(gevent.pool.Pool(2))
    assert expected == [
        0,
        True,
        "cleaned up",
        ["cleaned"],
        False,
        ["GreenletExit"],
        True,
        "ended",
        ["GreenletExit", "SpecialError"],
        0,
    ]
    pool = gevent_like_pool(2, "side-by-side")
    assert kills_as_gevent_kills(pool) == expected
    assert pool.worker_count() == 1  # a Task.kill spares the worker; the pool's kill did not
