"""What keeps ``Pool.go`` and the worker loop cheap, pinned where a change could undo it
without any test failing."""

from __future__ import annotations

import gevent
import pytest

import ggopool
from ggopool import Config


def test_a_pool_keeps_its_state_in_slots_not_an_instance_dict() -> None:
    # An instance dict stops sharing its keys past 29 attributes on CPython 3.11, and
    # every attribute read on go()'s path then becomes a dict lookup (a 30th attribute
    # cost a no-op task 8,726 -> 9,202 instructions under callgrind). Slots have no such
    # edge: a new attribute must be declared in Pool.__slots__.
    pool = ggopool.new_pool("attrs", 2, Config(max_pending=4))
    assert not hasattr(pool, "__dict__")
    with pytest.raises(AttributeError):
        pool.undeclared = 1  # type: ignore[attr-defined]
    # Every path that sets state (spawn, spawn_later, members, the server's signal,
    # instruments, kill, close) works without one.
    pool.spawn(gevent.idle).join()
    pool.go(gevent.idle)
    later = pool.task(gevent.idle)
    later.start_later(0)
    assert pool._semaphore is pool._semaphore
    pool.add_instrument(ggopool.Instrument())
    pool.join()
    later.join()
    pool.kill()
    pool.close()
    assert pool.stats().completed == 3
