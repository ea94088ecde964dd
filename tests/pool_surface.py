"""Every public method of a `Pool`, called on one pool: the instruments' tests run it on an
instrumented pool, a tracked one (inside a real Locust run) and one with both, to show that
every method works through them and that every task is seen.

Kept free of test-only imports so a locustfile can import it.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

import gevent
from gevent.event import Event

import ggopool


@dataclass(frozen=True)
class Seen:
    """What `exercise` queued on the pool, as an instrument attached before it sees it."""

    queued: int  # tasks on the pool's queue
    started: int  # of those, started (completed or killed)
    killed: int  # stopped by a kill while running
    cancelled: int  # never started


def _pow(x: int, y: int) -> int:
    return int(x**y)


def exercise(pool: ggopool.Pool) -> Seen:
    """Call each public method of ``pool`` (which must be empty, open, of cap >= 2 and
    not bounded) and check what it does; what it queued."""
    out: list[str] = []
    var: contextvars.ContextVar[str] = contextvars.ContextVar("surface", default="unset")
    var.set("caller")
    pool.go(lambda tag: out.append(f"{tag} {var.get()}"), "go")
    pool.ctx_go(contextvars.Context(), lambda: out.append(f"ctx_go {var.get()}"))
    assert pool.try_go(out.append, "try_go")
    assert pool.submit(_pow, 2, 3).get(timeout=5) == 8
    assert pool.spawn(_pow, 2, 4).get(timeout=5) == 16
    assert pool.apply(_pow, (2, 5)) == 32
    assert pool.apply_async(_pow, (2, 6)).get(timeout=5) == 64
    assert pool.apply_cb(_pow, (2, 7)) == 128
    assert pool.map(abs, [-1, -2]) == [1, 2]
    assert pool.map_cb(abs, [-3]) == [3]
    assert pool.map_async(abs, [-4]).get(timeout=5) == [4]  # its task on this pool: 1
    assert list(pool.imap(abs, [-5, -6])) == [5, 6]
    assert sorted(pool.imap_unordered(abs, [-7, -8])) == [7, 8]
    with pool.group() as group:
        squared = group.go(_pow, 3, 2)
    assert squared.get() == 9
    assert pool.join(5)
    assert sorted(out) == ["ctx_go unset", "go caller", "try_go"], out
    queued = 17

    # Members, counts and kills: two tasks held, one killed while it runs.
    held = Event()
    first = pool.spawn(held.wait)
    second = pool.spawn(held.wait)
    gevent.idle()
    assert first in pool
    assert len(pool) == 2
    assert set(pool) == {first, second}
    assert pool.free_count() == pool.size - 2
    assert not pool.full()
    assert pool.wait_available(timeout=5) == pool.size - 2
    assert pool.stats().running == 2
    assert pool.worker_count() >= 2
    pool.killone(first, timeout=5)
    assert first.dead
    cancelled = pool.submit(out.append, "never")
    assert pool.task_count() == 1
    assert cancelled.cancel()
    greenlet = gevent.spawn(held.wait)  # a gevent greenlet as a member: not a pool task
    pool.add(greenlet)
    pool.discard(greenlet)
    pool.start(gevent.spawn(lambda: None))
    pool.set_cap(pool.cap)
    held.set()
    assert pool.join(5)
    greenlet.join(5)
    queued += 3

    # Pool.kill drops the queue: a held task runs (killed), two queued never start.
    pool.go(held.clear)
    assert pool.join(5)
    pool.go(held.wait)
    gevent.idle()
    pool.go(out.append, "dropped")
    pool.submit(out.append, "dropped")
    assert pool.kill(timeout=5)
    queued += 4
    assert "dropped" not in out
    assert "never" not in out
    assert pool.stats().pending == 0
    return Seen(queued=queued, started=queued - 3, killed=2, cancelled=3)
