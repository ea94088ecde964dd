"""Unstarted tasks (`Pool.task`): made without being queued, queued by ``start()`` or
``start_later()``, with gevent's meanings for an unstarted greenlet."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from gevent.event import Event
from greenlet import GreenletExit

import ggopool
from ggopool import Config, PoolClosed
from tests.conftest import HubErrors

WAITS = Config(spawn_waits_when_full=True)


def test_an_unstarted_task_is_not_queued_not_ready_and_false() -> None:
    pool = ggopool.new_pool("unstarted", 2, WAITS)
    ran: list[int] = []
    task = pool.task(ran.append, 1)
    gevent.idle()
    assert ran == []
    assert not task
    assert not task.started
    assert not task.ready()
    assert not task.dead
    assert task.value is None
    assert len(pool) == 0  # not a member before it starts
    assert pool.task_count() == 0
    assert " unstarted at " in repr(task)
    task.start()
    assert task
    assert task.started
    assert len(pool) == 1
    task.join()
    assert ran == [1]
    assert len(pool) == 0
    pool.close()


def test_start_twice_and_after_the_end_is_harmless() -> None:
    pool = ggopool.new_pool("unstarted", 2)
    ran: list[int] = []
    task = pool.task(ran.append, 1)
    task.start()
    task.start()
    task.join()
    task.start()
    task.start_later(0)
    gevent.sleep(0.01)
    assert ran == [1]
    pool.close()


def test_killed_before_it_starts_it_never_runs() -> None:
    pool = ggopool.new_pool("unstarted", 2)
    ran: list[int] = []
    links: list[Any] = []
    task = pool.task(ran.append, 1)
    task.rawlink(links.append)
    task.kill()
    assert task.dead
    assert task.successful()
    assert isinstance(task.value, GreenletExit)
    task.start()
    task.start_later(0)
    gevent.sleep(0.01)
    assert ran == []
    assert links == [task]
    assert pool.stats().completed == 0
    pool.close()


def test_killed_before_it_starts_with_an_error_is_reported(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("unstarted", 2)
    task = pool.task(int)
    task.kill(ValueError("stop"))
    assert not task.successful()
    assert str(task.exception) == "stop"
    [(context, type_, _)] = hub_errors.take()
    assert context is task
    assert type_ is ValueError
    pool.close()


def test_cancelled_before_it_starts_it_never_runs() -> None:
    pool = ggopool.new_pool("unstarted", 2)
    task = pool.task(int)
    assert task.cancel()
    assert task.cancelled()
    task.start()
    gevent.idle()
    with pytest.raises(ggopool.TaskCancelled):
        task.get()
    pool.close()


def test_start_later_waits_then_queues_and_a_kill_meanwhile_stops_it() -> None:
    pool = ggopool.new_pool("unstarted", 2)
    ran: list[int] = []
    later = pool.task(ran.append, 1)
    later.start_later(0.05)
    assert later  # started, as gevent's start_later makes a greenlet
    assert later.started
    later.start()  # started already: nothing
    gevent.idle()
    assert ran == []
    later.join(timeout=5)
    assert ran == [1]
    killed = pool.task(ran.append, 2)
    killed.start_later(0.05)
    killed.kill()
    gevent.sleep(0.1)
    assert ran == [1]
    assert killed.dead
    pool.close()


def test_start_later_refuses_bad_seconds_and_changes_nothing() -> None:
    pool = ggopool.new_pool("unstarted", 2)
    task = pool.task(int)
    with pytest.raises(TypeError, match=r"^seconds must be a finite number >= 0, got '1'$"):
        task.start_later("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^seconds must be a finite number >= 0, got -1$"):
        task.start_later(-1)
    assert not task.started
    task.start()
    assert task.get(timeout=5) == 0
    pool.close()


def test_task_refuses_a_non_callable() -> None:
    pool = ggopool.new_pool("unstarted", 2)
    with pytest.raises(TypeError, match=r"^fn must be callable, got 3$"):
        pool.task(3)  # type: ignore[arg-type]
    pool.close()


def test_start_on_a_closed_pool_raises_and_leaves_it_unstarted() -> None:
    pool = ggopool.new_pool("unstarted", 2)
    task = pool.task(int)
    pool.close()
    with pytest.raises(PoolClosed):
        task.start()
    assert not task.started
    assert not task.ready()
    assert len(pool) == 0


def test_pool_start_adds_then_starts_waiting_for_room() -> None:
    pool = ggopool.new_pool("unstarted", 1, WAITS)
    gate = Event()
    first = pool.spawn(gate.wait)
    second = pool.task(int, "7")
    waiter = gevent.spawn(pool.start, second)
    gevent.idle()
    assert not second.started  # pool.start waits for room, as gevent's add
    assert len(pool) == 1
    gate.set()
    waiter.join(timeout=5)
    assert second.get(timeout=5) == 7
    first.join()
    gevent.idle()
    assert len(pool) == 0
    pool.close()


def test_an_added_unstarted_task_is_a_member_and_pool_kill_kills_it() -> None:
    pool = ggopool.new_pool("unstarted", 2)
    ran: list[int] = []
    task = pool.task(ran.append, 1)
    pool.add(task)
    assert task in pool
    assert len(pool) == 1
    assert pool.kill(timeout=5)
    assert task.dead
    task.start()
    gevent.idle()
    assert ran == []
    assert len(pool) == 0
    pool.close()


def test_an_added_task_started_later_counts_once() -> None:
    pool = ggopool.new_pool("unstarted", 2)
    task = pool.task(int, "5")
    pool.add(task)
    task.start()
    assert len(pool) == 1
    assert task.get(timeout=5) == 5
    gevent.idle()
    assert len(pool) == 0
    pool.close()


def test_a_task_waiting_in_start_later_runs_even_if_its_pool_closes_before_its_time() -> None:
    # Accepted work: close() refuses new tasks, and what was accepted still runs.
    pool = ggopool.new_pool("closes-first", 1)
    ran: list[str] = []
    task = pool.task(ran.append, "later")
    task.start_later(0.05)
    pool.close()
    assert task.get(timeout=5) is None
    assert ran == ["later"]
    stats = pool.stats()
    assert (stats.completed, stats.rejected) == (1, 0)


def test_a_spawn_later_task_due_on_a_full_bounded_pool_waits_for_room_and_runs() -> None:
    # Its caller was told it was accepted long ago: a full max_pending queue delays it,
    # never refuses it.
    pool = ggopool.new_pool("bounded", 1, Config(max_pending=1))
    held = Event()
    pool.go(held.wait)
    gevent.idle()
    pool.go(lambda: None)  # the one queue place is taken
    ran: list[str] = []
    task = pool.task(ran.append, "later")
    task.start_later(0)
    for _ in range(1000):  # its time comes (the next turn of the loop) while it is full
        if pool.stats().pending == 2:
            break
        gevent.sleep(0.001)
    assert pool.stats().pending == 2  # one queued, one waiting for a place
    assert not task.ready()
    held.set()
    assert task.get(timeout=5) is None
    assert ran == ["later"]
    assert pool.stats().rejected == 0


def test_start_later_on_a_closed_pool_raises_pool_closed_and_changes_nothing() -> None:
    pool = ggopool.new_pool("closed-before", 1)
    ran: list[str] = []
    task = pool.task(ran.append, "never")
    pool.close()
    with pytest.raises(
        PoolClosed, match=r"^pool 'closed-before' is closed: it accepts no new tasks$"
    ):
        task.start_later(0)
    assert not task.started
    assert not task.ready()
    assert pool.join(5)
    assert ran == []
    assert pool.stats().submitted == 0
