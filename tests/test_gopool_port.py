"""gopool's own tests (util/gopool/pool_test.go), ported; TestPoolPanic now asserts."""

from __future__ import annotations

import contextvars

import gevent

import ggopool


def test_pool() -> None:
    # TestPool: cap 100, 2,000 tasks, each counted once (gopool: atomic counter + WaitGroup).
    pool = ggopool.new_pool("test", 100, ggopool.Config())
    n = 0
    done = gevent.event.Event()

    def task() -> None:
        nonlocal n
        n += 1
        if n == 2000:
            done.set()

    for _ in range(2000):
        pool.go(task)
    assert done.wait(30)
    assert n == 2000


def test_pool_panic() -> None:
    # TestPoolPanic: gopool only checks that a panic does not crash the process.
    pool = ggopool.new_pool("test", 100, ggopool.Config())
    caught: list[BaseException] = []
    pool.set_panic_handler(lambda ctx, exc: caught.append(exc))
    pool.go(lambda: [][1])
    survived = gevent.event.Event()
    pool.go(survived.set)
    assert survived.wait(5)
    assert len(caught) == 1
    assert isinstance(caught[0], IndexError)
    assert isinstance(contextvars.copy_context(), contextvars.Context)
