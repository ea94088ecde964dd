"""Kills where they meet other features: a panic handler that yields while a kill reports,
a task queued after a kill, gevent's ``killone`` and ``kill`` firing once, added members
waiting in ``start_later``, and callables whose attribute lookups raise.

Workers are held on Events and the hub's callbacks run in a known order (FIFO), so each
test puts the kill exactly where the fault bit.
"""

from __future__ import annotations

from typing import Any, NoReturn

import gevent
import pytest
from gevent.event import Event
from greenlet import GreenletExit

import ggopool
from ggopool import Config, PoolStats
from ggopool._task import is_task_runner
from tests.conftest import HubErrors


def balanced(stats: PoolStats) -> bool:
    """The stats invariant: every submitted task is in exactly one place."""
    accounted = stats.completed + stats.failed + stats.cancelled + stats.running + stats.pending
    return stats.submitted == accounted


def yielding_handler(seen: list[str]) -> Any:
    """A panic handler that yields, as one that logs over the network does."""

    def handler(ctx: object, exc: BaseException) -> None:
        seen.append(type(exc).__name__)
        gevent.idle()  # everything else runs meanwhile: workers, kills' callbacks

    return handler


def test_pool_kill_with_a_yielding_panic_handler_kills_every_queued_task_once() -> None:
    pool = ggopool.new_pool("kill-yielding-handler", 1, Config(idle_timeout=None))
    seen: list[str] = []
    held = Event()
    report = yielding_handler(seen)

    def handler(ctx: object, exc: BaseException) -> None:
        held.set()  # the running task may end while this handler yields
        report(ctx, exc)

    pool.set_panic_handler(handler)
    ran: list[int] = []
    running = pool.spawn(held.wait)
    queued = [pool.spawn(ran.append, i) for i in range(5)]
    gevent.idle()
    assert pool.stats().running == 1

    # The queued tasks' reports yield. The running task gets the kill's ValueError, fails,
    # and its worker reports it too. No task the kill took off the queue runs meanwhile,
    # and the worker takes no other task.
    assert pool.kill(exception=ValueError, timeout=5) is True

    assert ran == []
    assert all(isinstance(task.exception, ValueError) for task in queued)
    assert isinstance(running.exception, ValueError)
    assert seen == ["ValueError"] * 6
    stats = pool.stats()
    assert (stats.pending, stats.running, stats.workers) == (0, 0, 0)
    assert (stats.cancelled, stats.failed) == (5, 1)
    assert balanced(stats)
    assert pool.task_count() == 0
    # The pool stays usable.
    assert pool.submit(lambda: 7).get(timeout=5) == 7


def test_task_kill_of_a_queued_task_with_a_yielding_handler_counts_it_cancelled() -> None:
    pool = ggopool.new_pool("task-kill-yielding-handler", 1, Config(idle_timeout=None))
    seen: list[str] = []
    pool.set_panic_handler(yielding_handler(seen))
    held = Event()
    first = pool.spawn(held.wait)
    queued = pool.spawn(lambda: None)
    gevent.idle()
    held.set()  # the worker goes for the queued task while the handler below yields
    queued.kill(ValueError("killed before it ran"), block=False)
    assert first.get(timeout=5) is True
    assert pool.join(5)
    assert isinstance(queued.exception, ValueError)
    assert seen == ["ValueError"]
    stats = pool.stats()
    assert (stats.pending, stats.running, stats.failed, stats.cancelled) == (0, 0, 0, 1)
    assert balanced(stats)


def test_pool_kill_never_hits_a_task_queued_after_it() -> None:
    pool = ggopool.new_pool("kill-then-queue", 1, Config(idle_timeout=None))
    log: list[str] = []

    def ends_at_the_next_turn() -> None:
        gevent.sleep(0)  # its wake-up is on the hub's list before the kill's blow

    def queued_after_the_kill(release: Event) -> None:
        try:
            release.wait()
            log.append("finished")
        except GreenletExit:
            log.append("killed")
            raise

    pool.spawn(ends_at_the_next_turn)
    gevent.sleep(0)  # it starts and yields
    pool.kill(block=False)
    release = Event()
    later = pool.spawn(queued_after_the_kill, release)
    gevent.idle()  # the first task ends, then the kill's blow runs; the later task waits
    assert not later.ready()
    release.set()
    assert later.get(timeout=5) is None
    assert log == ["finished"]
    assert pool.join(5)


class Undead:
    """gevent's test__greenletset.Undead: survives every exception but SpecialError,
    counting the shots."""

    def __init__(self) -> None:
        self.shots = 0
        self.forever = Event()

    def __call__(self) -> None:
        while True:
            try:
                self.forever.wait()
            except SpecialError:
                return
            except BaseException:  # noqa: BLE001 - survives, as gevent's test's does
                self.shots += 1


class SpecialError(Exception):
    pass


def test_killone_and_kill_fire_once_per_task_as_gevents() -> None:
    # gevent's test__greenletset.test_kill_fires_once, on a ggopool pool.
    pool = ggopool.new_pool("fires-once", 4, Config(spawn_waits_when_full=True))
    u1, u2 = Undead(), Undead()
    p1, p2 = pool.spawn(u1), pool.spawn(u2)
    gevent.idle()

    def shots() -> tuple[int, int]:
        gevent.idle()
        return u1.shots, u2.shots

    pool.killone(p1, block=False)
    assert shots() == (1, 0)
    pool.killone(p1, block=False)
    assert shots() == (1, 0)
    pool.killone(p1, block=True, timeout=0.05)  # a no-op: it does not wait either
    assert shots() == (1, 0)
    for _ in range(3):
        pool.kill(block=False)
    assert shots() == (1, 1)

    p1.kill(SpecialError)  # Task.kill is a new kill each time, as gevent's
    p2.kill(SpecialError)
    assert p1.dead
    assert p2.dead
    assert pool.join(5)
    assert len(pool) == 0


def test_an_added_task_waiting_in_start_later_is_joined_and_killed_with_the_pool() -> None:
    pool = ggopool.new_pool("added-later", 4, Config(spawn_waits_when_full=True))
    ran: list[str] = []
    waiting = pool.task(ran.append, "joined")
    pool.add(waiting)
    waiting.start_later(0.05)
    assert len(pool) == 1
    assert pool.join(timeout=5) is True  # waited for its time and its run
    assert ran == ["joined"]
    assert len(pool) == 0

    killed = pool.task(ran.append, "killed")
    pool.add(killed)
    killed.start_later(0.05)
    assert pool.kill(timeout=5) is True
    assert killed.dead
    assert len(pool) == 0
    gevent.sleep(0.1)  # past its time: it never runs
    assert ran == ["joined"]


class RaisingProxy:
    """A callable whose attribute lookups raise what a context-bound proxy raises outside
    its context (werkzeug's LocalProxy raises RuntimeError)."""

    def __getattr__(self, name: str) -> NoReturn:
        raise RuntimeError(f"working outside of context: {name}")

    def __call__(self) -> NoReturn:
        raise ValueError("the task failed")


def test_a_proxy_whose_lookups_raise_is_reported_and_killed_like_any_task(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("proxy", 1, Config(idle_timeout=None))
    proxy = RaisingProxy()
    assert is_task_runner(proxy, pool) is False
    pool.go(proxy)
    assert pool.join(5)
    [(context, type_, value)] = hub_errors.take()
    assert type_ is ValueError
    assert str(value) == "the task failed"
    assert "RaisingProxy" in repr(context)

    held = Event()
    pool.go(held.wait)
    pool.go(proxy)  # queued behind it
    gevent.idle()
    assert pool.kill(timeout=5) is True
    stats = pool.stats()
    assert (stats.pending, stats.workers, stats.cancelled) == (0, 0, 1)
    assert hub_errors.take() == []


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_a_task_name_whose_repr_raises_still_gives_a_repr() -> None:
    pool = ggopool.new_pool("bad-name", 1)
    task = pool.spawn(lambda: None)
    task.name = BadRepr()  # type: ignore[assignment]
    assert "BadRepr" in repr(task)
    assert task.get(timeout=5) is None


@pytest.mark.parametrize("method", ["add", "start"])
@pytest.mark.parametrize("bad", [3, object(), "task"])
def test_add_and_start_refuse_what_is_not_a_task_and_change_nothing(
    method: str, bad: object
) -> None:
    pool = ggopool.new_pool("bad-member", 2, Config(spawn_waits_when_full=True))
    with pytest.raises(TypeError, match=rf"{method}\(\) takes a ggopool Task or a"):
        getattr(pool, method)(bad)
    assert len(pool) == 0
    assert not pool.full()


def wait_until(predicate: Any, what: str) -> None:
    """Let the loop run (its timers too) until ``predicate()``; a bounded wait."""
    for _ in range(2000):
        if predicate():
            return
        gevent.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("how", ["cancel", "kill"])
def test_a_task_cancelled_while_waiting_for_a_queue_place_is_not_killed_again(how: str) -> None:
    pool = ggopool.new_pool("bounded-kill", 1, Config(max_pending=1))
    seen: list[str] = []
    pool.set_panic_handler(lambda ctx, exc: seen.append(repr(exc)))
    held = Event()
    pool.go(held.wait)
    gevent.idle()
    pool.go(lambda: None)  # the one queue place is taken
    later = pool.task(lambda: None)
    later.start_later(0)
    wait_until(lambda: pool.stats().pending == 2, "the task due, waiting for a place")
    if how == "cancel":
        assert later.cancel()
    else:
        later.kill(block=False)
    outcome = later.exception
    assert pool.stats().cancelled == 1
    assert pool.kill(timeout=5, exception=ValueError("pool kill"))
    assert later.exception is outcome  # not overwritten by the pool's kill
    stats = pool.stats()
    assert (stats.pending, stats.running, stats.cancelled) == (0, 0, 2)
    assert balanced(stats)
    assert seen == ["ValueError('pool kill')"]  # the running task's failure only
    # The queue place is the pool's again, once.
    assert pool.try_go(held.wait)
    assert not pool.try_go(held.wait)
    held.set()
    assert pool.join(5)


def test_a_kill_by_another_pool_does_not_stop_this_pools_killone() -> None:
    # A task of pool P added to pool Q: P.kill() is P's, and Q's killone is a kill of its own.
    p = ggopool.new_pool("p", 2)
    q = ggopool.new_pool("q", 2, Config(spawn_waits_when_full=True))
    undead = Undead()
    task = p.spawn(undead)
    q.add(task)
    gevent.idle()
    p.kill(block=False)
    gevent.idle()
    assert undead.shots == 1
    q.killone(task, block=False)
    gevent.idle()
    assert undead.shots == 2
    task.kill(SpecialError)
    assert task.dead


def test_a_kill_while_a_worker_reports_a_failure_ends_it_with_the_plain_exit() -> None:
    # The kill's exception belongs to a task: the handler of one that had already failed
    # gets the plain exit, as a parked worker does, and is not reported as failing.
    pool = ggopool.new_pool("kill-during-report", 1, Config(idle_timeout=None))
    in_handler = Event()
    log: list[str] = []

    def handler(ctx: object, exc: BaseException) -> None:
        log.append("handler start")
        in_handler.set()
        try:
            Event().wait()  # logs over a network that never answers, say
        except BaseException as blow:
            log.append(type(blow).__name__)
            raise

    pool.set_panic_handler(handler)
    pool.go(lambda: 1 / 0)
    in_handler.wait()
    assert pool.kill(timeout=5, exception=ValueError("the kill")) is True
    assert log == ["handler start", "GreenletExit"]
    stats = pool.stats()
    assert (stats.workers, stats.failed, stats.running) == (0, 1, 0)
    assert balanced(stats)


def test_pool_kill_from_a_panic_handler_ends_the_others_and_returns() -> None:
    pool = ggopool.new_pool("kill-from-handler", 2, Config(idle_timeout=None))
    held = Event()
    other = pool.spawn(held.wait)
    results: list[object] = []

    def handler(ctx: object, exc: BaseException) -> None:
        results.append(pool.kill(timeout=5))  # the failed task has ended: nothing to raise

    pool.set_panic_handler(handler)
    pool.go(lambda: 1 / 0)
    assert pool.join(5)
    assert results == [True]
    assert other.dead
    assert isinstance(other.value, GreenletExit)  # gevent's outcome of a kill
    assert pool.stats().workers == 0


# "parks": it leaves instead, as a worker a kill was aimed at does; either way, not hit.
@pytest.mark.parametrize("then", ["runs its panic handler", "parks", "takes the next task"])
def test_pool_kills_blow_misses_a_worker_whose_task_ended_before_it_arrived(
    then: str, hub_errors: HubErrors
) -> None:
    # The blow is a loop callback; the task's wake-up is on the hub's list before it, so the
    # task ends first. The kill's exception is a ValueError: a blow that landed anywhere but
    # in the task it was aimed at would show (in the handler, or reported by the hub).
    pool = ggopool.new_pool("blow-misses", 1, Config(idle_timeout=None))
    log: list[str] = []

    def handler(ctx: object, exc: BaseException) -> None:
        log.append(f"handler start {type(exc).__name__}")
        try:
            gevent.sleep(0)  # yields: the blow arrives meanwhile
        except BaseException as blow:
            log.append(f"handler hit by {blow!r}")
            raise
        log.append("handler done")

    def ends_at_the_next_turn() -> str:
        gevent.sleep(0)
        if then == "runs its panic handler":
            raise KeyError("the task failed by itself")
        return "returned"

    pool.set_panic_handler(handler)
    aimed = pool.spawn(ends_at_the_next_turn)
    gevent.sleep(0)  # it starts and yields
    assert pool.stats().running == 1
    pool.kill(exception=ValueError("the kill"), block=False)

    def the_next_task() -> None:
        gevent.sleep(0)  # in it when the blow arrives, whichever worker runs it
        log.append("the next task ran")

    later = pool.spawn(the_next_task) if then == "takes the next task" else None
    for _ in range(5):
        gevent.idle()
    if then == "runs its panic handler":
        assert isinstance(aimed.exception, KeyError)
        assert log == ["handler start KeyError", "handler done"]
    else:
        assert aimed.value == "returned"
        if later is not None:
            assert later.successful()
            assert log == ["the next task ran"]
        else:
            assert log == []
    assert pool.join(5)
    stats = pool.stats()
    # The aimed worker left after its task; the next task's worker (a new one) parks.
    assert (stats.workers, stats.running, stats.cancelled) == (int(later is not None), 0, 0)
    assert balanced(stats)
    assert hub_errors.take() == []
