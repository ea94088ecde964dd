"""The module-level functions from a thread that runs a gevent hub of its own: the task runs
on that thread's hub, on the thread's default pool, as ``gevent.spawn`` runs a greenlet
there; from a thread with no hub, ``go`` hands it over and ``spawn`` makes the hub."""

from __future__ import annotations

import contextvars
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent._hub_local import get_hub_if_exists
from gevent.event import Event
from gevent.monkey import get_original

import ggopool
from ggopool._pool import Pool, all_pools

real_get_ident: Callable[[], int] = get_original("_thread", "get_ident")

#: The most a test waits for its thread (a real join: the main hub does not run meanwhile).
JOIN = 20.0


def in_thread(body: Callable[[], object], destroy_hub: bool = True) -> Any:
    """Run ``body`` in a new native thread, destroy the hub it made (as gevent's tests do),
    and return what it returned, or raise what it raised."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, body()))
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread
            outcome.append((False, exc))
        finally:
            hub = get_hub_if_exists()
            if destroy_hub and hub is not None:
                hub.destroy(destroy_loop=True)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(JOIN)
    assert not thread.is_alive()
    [(ok, value)] = outcome
    if not ok:
        raise value
    return value


def this_threads_pools() -> list[Pool]:
    ident = real_get_ident()
    return [pool for pool in list(all_pools) if pool._ident == ident]


def record(ran: list[tuple[str, int]], what: str) -> None:
    ran.append((what, real_get_ident()))


def test_go_from_a_thread_with_a_hub_runs_there_on_the_threads_default_pool() -> None:
    home = ggopool.default_pool()
    submitted = home.stats().submitted

    def body() -> tuple[list[tuple[str, int]], list[str], int]:
        gevent.get_hub()  # the thread has a hub; its loop has not run yet
        ran: list[tuple[str, int]] = []
        ggopool.go(record, ran, "go")
        ggopool.ctx_go(contextvars.Context(), record, ran, "ctx_go")
        ggopool.default_pool().go(record, ran, "default_pool().go")
        assert ran == []  # queued, as gevent.spawn's greenlet: it runs when the loop does
        assert ggopool.drain(10)
        return ran, [pool.name for pool in this_threads_pools()], real_get_ident()

    ran, names, ident = in_thread(body)
    assert sorted(ran) == [("ctx_go", ident), ("default_pool().go", ident), ("go", ident)]
    assert names == [f"ggopool.DefaultPool (thread {ident})"]
    assert home.stats().submitted == submitted  # nothing reached the home thread's pool


def test_spawn_from_a_thread_with_no_hub_makes_one_and_is_waited_on_there() -> None:
    def body() -> tuple[object, object, int, int]:
        assert get_hub_if_exists() is None
        task = ggopool.spawn(real_get_ident)
        later = ggopool.spawn_later(0.001, real_get_ident)
        assert get_hub_if_exists() is not None  # made, as gevent.spawn makes it
        gevent.joinall([task, later], timeout=10)
        return task.get(timeout=0), later.get(timeout=0), real_get_ident(), len(later._pool._later)

    spawned, later, ident, waiting = in_thread(body)
    assert spawned == later == ident
    assert waiting == 0


def test_go_from_a_thread_with_no_hub_hands_over_and_makes_no_hub_or_pool() -> None:
    ran: list[tuple[str, int]] = []
    done = Event()

    def body() -> tuple[object, list[Pool]]:
        ggopool.go(record, ran, "go")
        ggopool.default_pool().go(done.set)
        return get_hub_if_exists(), this_threads_pools()

    assert in_thread(body) == (None, [])
    assert done.wait(10)
    assert ran == [("go", real_get_ident())]


def test_a_threads_default_pool_starts_with_the_default_pools_cap_and_panic_handler() -> None:
    failures: list[tuple[str, type[BaseException]]] = []

    def handler(ctx: contextvars.Context, exc: BaseException) -> None:
        failures.append(("handled", type(exc)))

    ggopool.set_cap(3)
    ggopool.set_panic_handler(handler)

    def body() -> int:
        ggopool.go(lambda: 1 / 0)  # no hub: handed over, handled by the same handler
        gevent.get_hub()
        ggopool.go(lambda: 1 / 0)
        [pool] = this_threads_pools()
        assert ggopool.drain(10)
        ggopool.set_cap(5)  # the default pool's: the thread's keeps what it started with
        return pool.cap

    assert in_thread(body) == 3
    gevent.idle()  # the task and the set_cap handed over run here
    assert ggopool.default_pool().cap == 5
    assert failures == [("handled", ZeroDivisionError)] * 2


def test_a_thread_ending_with_tasks_on_its_default_pool_logs_what_it_abandoned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def body() -> int:
        gevent.get_hub()
        for _ in range(3):
            ggopool.go(print, "never")  # the thread never runs its loop again
        ggopool.spawn_later(60, print, "never")
        return real_get_ident()

    with caplog.at_level(logging.WARNING, logger="ggopool"):
        ident = in_thread(body, destroy_hub=False)
    assert caplog.messages == [
        f"ggopool: pool 'ggopool.DefaultPool (thread {ident})': 4 tasks abandoned "
        "(3 queued, 0 running, 1 spawn_later) when its thread ended"
    ]


def test_a_thread_ending_with_nothing_left_on_its_default_pool_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def body() -> None:
        ggopool.spawn(int).join(10)

    with caplog.at_level(logging.WARNING, logger="ggopool"):
        in_thread(body)
    assert caplog.messages == []


def test_tasks_queued_when_a_threads_hub_is_destroyed_run_on_its_next_hub() -> None:
    def body() -> tuple[list[tuple[str, int]], int]:
        ran: list[tuple[str, int]] = []
        gevent.get_hub()
        ggopool.go(record, ran, "before")
        gevent.get_hub().destroy(destroy_loop=True)
        ggopool.go(record, ran, "no hub")  # handed over to the home thread
        gevent.get_hub()  # the thread's next hub
        ggopool.go(record, ran, "after")
        assert ggopool.drain(10)
        return ran, real_get_ident()

    ran, ident = in_thread(body)
    assert sorted(ran) == [("after", ident), ("before", ident)]
    gevent.idle()
    assert ran[-1] == ("no hub", real_get_ident())


def test_the_home_thread_keeps_go_on_the_default_pools_fast_path() -> None:
    pool = ggopool.default_pool()
    assert pool._fast_ident == real_get_ident()
    assert this_threads_pools().count(pool) == 1
    assert all(not p.name.startswith("ggopool.DefaultPool (") for p in this_threads_pools())


FORK_WITH_A_THREAD_POOL = textwrap.dedent(
    """
    import os, threading
    import gevent
    import ggopool
    from gevent.monkey import get_original

    allocate_lock = get_original("_thread", "allocate_lock")
    go_on, ready = allocate_lock(), allocate_lock()
    go_on.acquire()
    ready.acquire()
    ran = []

    def body():
        gevent.get_hub()
        ggopool.go(ran.append, 1)
        ggopool.go(ran.append, 2)
        ready.release()
        go_on.acquire()  # blocked natively: the hub does not run until the fork is done
        assert ggopool.drain(10)
        print("thread ran", ran, flush=True)

    thread = threading.Thread(target=body)
    thread.start()
    ready.acquire()
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # the child dropped the thread and its pool as it started
    _, status = os.waitpid(pid, 0)
    go_on.release()
    thread.join(10)
    print("child status", status)
    """
)


def test_a_forked_child_drops_another_threads_default_pool_without_a_report() -> None:
    # The queued tasks belong to the parent's thread, where they run; the child, which
    # has no such thread, says nothing of them.
    out = subprocess.run(
        [sys.executable, "-c", FORK_WITH_A_THREAD_POOL],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == "thread ran [1, 2]\nchild status 0\n"


def test_the_default_pools_submit_and_spawn_from_a_thread_with_a_hub_hand_over() -> None:
    # The way to hand a task to the home thread from a thread that runs a hub of its own.
    ran: list[tuple[str, int]] = []
    handles: list[ggopool.Task[None]] = []

    def body() -> list[Pool]:
        gevent.get_hub()
        handles.append(ggopool.default_pool().submit(record, ran, "submit"))
        handles.append(ggopool.default_pool().spawn(record, ran, "spawn"))
        return this_threads_pools()

    assert in_thread(body) == []
    gevent.joinall(handles, timeout=10, raise_error=True)
    assert sorted(ran) == [("spawn", real_get_ident()), ("submit", real_get_ident())]


def test_go_from_a_function_in_gevents_threadpool_hands_over() -> None:
    ran: list[tuple[str, int]] = []
    done = Event()

    def in_threadpool() -> int:
        ggopool.go(record, ran, "go")
        ggopool.go(done.set)
        return real_get_ident()

    worker_ident = gevent.get_hub().threadpool.spawn(in_threadpool).get(timeout=10)
    assert worker_ident != real_get_ident()
    assert done.wait(10)
    assert ran == [("go", real_get_ident())]


def test_tasks_queued_before_a_threads_hub_is_destroyed_run_on_its_next_hub_at_its_drain() -> None:
    def body() -> list[str]:
        out: list[str] = []
        gevent.get_hub()  # the thread has a hub of its own
        ggopool.go(out.append, "queued before the destroy")
        hub = get_hub_if_exists()
        assert hub is not None
        hub.destroy()  # before the hub ever ran the task
        gevent.get_hub()  # the thread's next hub
        assert ggopool.drain(10) is True
        return out

    assert in_thread(body) == ["queued before the destroy"]
