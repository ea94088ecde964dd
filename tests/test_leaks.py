"""Leaks: a pool closed (or killed) and dropped is collected with its worker greenlets and
what their frames held; a million tasks leave no more live greenlets than the cap."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import gevent
import pytest
from gevent.event import Event
from greenlet import greenlet as Greenlet

import ggopool
from ggopool import Config


class Marker:
    """Held by a task's frame: collected only once that frame is."""


def live_greenlets() -> list[Greenlet]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, Greenlet) and not o.dead]


def held_workers(pool: ggopool.Pool, n: int) -> tuple[list[weakref.ref[object]], Event]:
    """Run ``n`` tasks that each hold a Marker in their frame until the returned gate opens;
    return weak references to the workers and to the markers."""
    gate = Event()
    refs: list[weakref.ref[object]] = []

    def task() -> None:
        marker = Marker()
        refs.append(weakref.ref(marker))
        refs.append(weakref.ref(gevent.getcurrent()))
        gate.wait()
        assert marker is not None

    for _ in range(n):
        pool.go(task)
    gevent.idle()
    assert len(refs) == 2 * n
    return refs, gate


def drop_and_collect(
    make: Callable[[], tuple[weakref.ref[ggopool.Pool], list[weakref.ref[object]]]],
) -> tuple[weakref.ref[ggopool.Pool], list[weakref.ref[object]]]:
    pool_ref, refs = make()  # the pool itself is gone with make()'s frame
    gevent.idle()
    gc.collect()
    return pool_ref, refs


@pytest.mark.parametrize("how", ["close", "with", "kill", "close_running"])
def test_a_closed_and_dropped_pool_is_collected_with_its_greenlets_and_frames(how: str) -> None:
    before = {id(g) for g in live_greenlets()}

    def make() -> tuple[weakref.ref[ggopool.Pool], list[weakref.ref[object]]]:
        pool = ggopool.new_pool("leaks", 4, Config(idle_timeout=None))
        refs, gate = held_workers(pool, 4)
        if how == "close_running":
            pool.close()  # while the tasks still run: they finish, then the workers exit
            gate.set()
        elif how == "kill":
            assert pool.kill(timeout=None)  # GreenletExit into the running tasks
        else:
            gate.set()
            gevent.idle()
            assert pool.stats().idle == 4  # parked on the free list, not dead
            if how == "with":
                with pool:
                    pool.go(lambda: None)
            else:
                pool.close()
                assert pool.join(timeout=None)
        return weakref.ref(pool), refs

    pool_ref, refs = drop_and_collect(make)
    assert pool_ref() is None
    assert [r() for r in refs] == [None] * len(refs)  # workers and their frames' contents
    assert {id(g) for g in live_greenlets()} <= before


def test_a_million_short_tasks_leave_no_more_live_greenlets_than_the_cap() -> None:
    cap = 16
    baseline = len(live_greenlets())
    pool = ggopool.new_pool("leaks", cap, Config(idle_timeout=None))
    workers: weakref.WeakSet[Greenlet] = weakref.WeakSet()
    samples: list[int] = []
    ran = 0

    def task(i: int) -> None:
        nonlocal ran
        ran += 1
        if i % 2:
            gevent.sleep(0)  # half of them yield, so workers interleave
        if i % 1024 == 0:
            workers.add(gevent.getcurrent())

    n, batch = 1_000_000, 10_000
    for start in range(0, n, batch):
        for i in range(start, start + batch):
            pool.go(task, i)
        if start % 200_000 == 0:
            gevent.sleep(0)
            samples.append(len(live_greenlets()) - baseline)
        assert pool.join(timeout=None)
    assert ran == n
    samples.append(len(live_greenlets()) - baseline)
    print(f"\n{n} tasks; live greenlets above baseline at samples: {samples}")
    assert max(samples) <= cap
    assert len(workers) <= cap  # the same few greenlets ran every task
    assert pool.worker_count() <= cap
    s = pool.stats()
    assert (s.submitted, s.completed) == (n, n)
    pool.close()
    gevent.idle()
    del pool
    assert len(live_greenlets()) <= baseline
