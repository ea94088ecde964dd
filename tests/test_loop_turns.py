"""Workers that wait for a turn of the event loop (woken while it was overdue, see
tests/test_fairness.py) and then find their pool's queue empty have nothing to wait for:
they park at once, in the turn of the loop in which the queue ran empty, not one per turn.

The tests count tasks and turns of the loop, not seconds: each task burns the CPU until
gevent's switch interval has passed, so the loop is overdue at every look a worker takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
import pytest

import ggopool
from ggopool import Config
from ggopool._worker import CHECK_EVERY, loop_watch
from tests.conftest import parked_in_order

#: A 1 ms switch interval instead of 5: the same rule, five times fewer seconds of busy tasks.
pytestmark = pytest.mark.usefixtures("short_switch_interval")


def busy(then: Callable[[], None] = lambda: None) -> Callable[[], None]:
    def task() -> None:
        end = time.monotonic() + gevent.getswitchinterval()
        while time.monotonic() < end:
            pass  # without yielding: the loop is overdue at the next look
        then()

    return task


def waiting_for_a_turn(pool: ggopool.Pool) -> list[object]:
    """What of ``pool`` (workers, a start) waits for a turn of the loop."""
    return [turn for turn in loop_watch(pool._hub).turns if turn[0] is pool]


def test_workers_waiting_for_a_turn_park_in_the_turn_the_queue_runs_empty() -> None:
    # Four parked workers are woken by a burst that keeps the loop overdue: they take turns
    # (one each turn of the loop), and the last task is run while the others wait for one.
    pool = ggopool.new_pool("turns", 4, Config(idle_timeout=None))
    parked_in_order(pool, 4)
    loop = gevent.get_hub().loop
    at_the_last: list[tuple[ggopool.PoolStats, int]] = []
    n = 5 * CHECK_EVERY
    for _ in range(n - 1):
        pool.go(busy())
    pool.go(busy(lambda: at_the_last.append((pool.stats(), loop.iteration))))
    assert pool.join(30)
    parked = pool.stats()
    iteration = loop.iteration
    [(last, emptied_in)] = at_the_last
    # When the queue ran empty, workers were waiting for a turn: neither running nor parked.
    assert (last.workers, last.idle, last.running, last.pending) == (4, 0, 1, 0), last
    # They all parked in that same turn of the loop.
    assert (parked.workers, parked.idle, parked.running) == (4, 4, 0), parked
    assert iteration == emptied_in
    assert not waiting_for_a_turn(pool)
    assert parked.completed == n + 4  # and the four of parked_in_order


def test_a_start_waiting_for_a_turn_is_given_up_in_the_turn_the_queue_runs_empty() -> None:
    # A burst from an idle pool: go() counts a worker to start for each task; while the
    # loop is overdue the starts wait for a turn, and when the queue runs empty those not
    # made are given up at once (no greenlet is made for them).
    pool = ggopool.new_pool("starts", 50)
    loop = gevent.get_hub().loop
    at_the_last: list[int] = []
    n = 5 * CHECK_EVERY
    for _ in range(n - 1):
        pool.go(busy())
    pool.go(busy(lambda: at_the_last.append(loop.iteration)))
    assert pool.join(30)
    s = pool.stats()
    assert (s.running, s.pending, s.completed) == (0, 0, n)
    assert s.workers == s.idle < 50
    assert loop.iteration == at_the_last[0]
    assert not waiting_for_a_turn(pool)
