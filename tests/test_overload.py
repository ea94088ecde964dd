"""Overload: ten times more submissions than the pool can finish.

With ``Config(max_pending=...)`` the excess waits in ``go()`` or is refused (``try_go``
returning False, `PoolFull` from the hub), none is lost, and the process's peak RSS stays
a small fraction of the same run without a bound. Without one, the queue grows linearly:
the bytes each queued task costs are measured and printed (the README quotes them).

Memory is measured in fresh subprocesses (one per case, run back to back in this test),
so that neither case inherits the other's heap.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import gevent
from gevent.event import Event

import ggopool
from ggopool import Config, PoolFull
from tests.subprocess_helpers import printed_lines

#: Submissions per round and rounds; the pool finishes about a tenth of each round
#: before the next (cap 10, one yield per task, one yield per round).
PER_ROUND, ROUNDS, CAP, MAX_PENDING = 100, 1_000, 10, 1_000
#: Bytes of payload each task carries, as a request object would.
PAYLOAD = 256

OVERLOAD_SCRIPT = textwrap.dedent(
    """
    import gc, json, resource, sys
    import gevent, psutil
    import ggopool
    from ggopool import Config, PoolFull

    mode, per_round, rounds, cap, max_pending, payload = sys.argv[1:7]
    per_round, rounds, cap, payload = int(per_round), int(rounds), int(cap), int(payload)
    bounded = mode == "bounded"
    proc = psutil.Process()
    ran = bytearray(per_round * rounds * 2)
    pool = ggopool.new_pool(
        "overload", cap, Config(max_pending=int(max_pending) if bounded else None)
    )
    peak_queue = 0
    peak_rss = 0

    def task(i, data):
        ran[i] += 1
        gevent.sleep(0)

    def sample():
        global peak_rss, peak_queue
        peak_rss = max(peak_rss, proc.memory_info().rss)
        peak_queue = max(peak_queue, pool.task_count())

    # Warm up: the interpreter, gevent and the pool's code paths, before the baseline.
    for i in range(1000):
        pool.go(task, len(ran) - 1 - i, b"")
    pool.join()
    ran[-1000:] = bytes(1000)
    gc.collect()
    base_rss = proc.memory_info().rss
    attempts = accepted = refused = pool_full = 0
    ids = iter(range(len(ran)))

    def producer(use_try_go):
        global attempts, accepted, refused
        for r in range(rounds // 2):
            for _ in range(per_round):
                i = next(ids)
                attempts += 1
                data = bytes(payload)
                if use_try_go:
                    if pool.try_go(task, i, data):
                        accepted += 1
                    else:
                        refused += 1
                else:
                    pool.go(task, i, data)  # waits for room when the queue is full
                    accepted += 1
            sample()
            gevent.sleep(0)

    def from_hub():
        # go() from the hub cannot wait: a full queue raises PoolFull.
        global attempts, accepted, pool_full
        i = next(ids)
        attempts += 1
        try:
            pool.go(task, i, bytes(payload))
            accepted += 1
        except PoolFull:
            pool_full += 1

    producers = [gevent.spawn(producer, False), gevent.spawn(producer, True)]
    for _ in range(50):
        gevent.get_hub().loop.run_callback(from_hub)
        gevent.sleep(0)
    gevent.joinall(producers, raise_error=True)
    sample()
    pool.join()
    s = pool.stats()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "mode": mode,
        "attempts": attempts,
        "accepted": accepted,
        "refused": refused,
        "pool_full": pool_full,
        "ran_once": sum(1 for x in ran if x == 1),
        "ran_twice": sum(1 for x in ran if x > 1),
        "submitted": s.submitted - 1000,
        "completed": s.completed - 1000,
        "rejected": s.rejected,
        "peak_queue": peak_queue,
        "base_rss": base_rss,
        "peak_rss": peak_rss,
        "maxrss": maxrss,
    }))
    """
)

PER_TASK_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    import gevent, psutil
    from gevent.event import Event
    import ggopool

    n, payload = int(sys.argv[1]), int(sys.argv[2])
    proc = psutil.Process()
    gate = Event()

    def task(i, data):
        pass

    def measure(queue_one):
        gc.collect()
        before = proc.memory_info().rss
        for i in range(n):
            queue_one(i)
        gc.collect()
        return (proc.memory_info().rss - before) / n

    pool = ggopool.new_pool("unbounded", 1)
    pool.go(gate.wait)
    gevent.idle()  # the only worker is held: everything below stays queued
    bare = measure(lambda i: pool.go(task, i, None))
    with_payload = measure(lambda i: pool.go(task, i, bytes(payload)))
    queued = pool.task_count()
    gate.set()
    pool.join()
    # gevent.spawn's cost for the same thing, in the same process: a greenlet per task.
    greenlets = []
    spawned = measure(lambda i: greenlets.append(gevent.spawn(task, i, None)))
    gevent.joinall(greenlets)
    print(json.dumps({"queued": queued, "bare": bare, "with_payload": with_payload,
                      "spawn": spawned}))
    """
)


def run_script(script: str, *args: object) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter; the JSON object it printed last."""
    result: dict[str, Any] = json.loads(printed_lines(script, *args)[-1])
    return result


def test_max_pending_bounds_peak_rss_and_loses_nothing_under_ten_times_overload() -> None:
    args = (PER_ROUND, ROUNDS, CAP, MAX_PENDING, PAYLOAD)
    unbounded = run_script(OVERLOAD_SCRIPT, "unbounded", *args)
    bounded = run_script(OVERLOAD_SCRIPT, "bounded", *args)
    mib = 1 << 20
    grew = {r["mode"]: r["peak_rss"] - r["base_rss"] for r in (unbounded, bounded)}
    print(
        f"\n{unbounded['attempts']} submissions, {PAYLOAD} B payload each: "
        f"unbounded peak queue {unbounded['peak_queue']}, RSS +{grew['unbounded'] / mib:.1f} MiB; "
        f"max_pending={MAX_PENDING}: peak queue {bounded['peak_queue']}, "
        f"RSS +{grew['bounded'] / mib:.1f} MiB, {bounded['refused']} refused by try_go, "
        f"{bounded['pool_full']} PoolFull from the hub"
    )
    for r in (unbounded, bounded):
        # Nothing lost silently: every attempt was accepted or refused; every accepted
        # task ran exactly once.
        assert r["attempts"] == r["accepted"] + r["refused"] + r["pool_full"]
        assert r["ran_once"] == r["accepted"] == r["submitted"] == r["completed"]
        assert r["ran_twice"] == 0
        assert r["rejected"] == r["refused"] + r["pool_full"]
    # The overload was real: without a bound the queue held most submissions at once.
    assert unbounded["peak_queue"] > 20 * MAX_PENDING
    assert unbounded["refused"] == unbounded["pool_full"] == 0
    # With one, the queue never passed it, and the excess was refused or waited.
    assert bounded["peak_queue"] <= MAX_PENDING
    assert bounded["refused"] > 0
    assert bounded["pool_full"] > 0
    # A generous bound: the queue was 1/20 or less of the unbounded one, so its memory is.
    assert grew["bounded"] < grew["unbounded"] / 5, grew


def test_without_max_pending_memory_grows_linearly_per_queued_task() -> None:
    n = 100_000
    r = run_script(PER_TASK_SCRIPT, n, PAYLOAD)
    print(
        f"\nper queued task (RSS over {n} tasks): {r['bare']:.0f} B for go(fn, i, None), "
        f"{r['with_payload']:.0f} B with a {PAYLOAD} B payload; "
        f"gevent.spawn(fn, i, None): {r['spawn']:.0f} B"
    )
    assert r["queued"] == 2 * n
    # Linear and small: the payload's own size plus a few hundred bytes of bookkeeping
    # (a copied Context, the args tuple, four deque slots).
    assert 0 < r["bare"] < 1_000
    assert PAYLOAD < r["with_payload"] < r["bare"] + PAYLOAD + 1_000
    assert r["bare"] < r["spawn"]


def test_the_excess_waits_in_go_and_each_waiter_gets_in_once_in_fifo_order() -> None:
    pool = ggopool.new_pool("overload", 1, Config(max_pending=3))
    gate = Event()
    pool.go(gate.wait)
    gevent.idle()
    order: list[int] = []
    producers = [gevent.spawn(pool.go, order.append, i) for i in range(10)]
    gevent.idle()
    assert pool.task_count() == 3
    assert sum(not p.dead for p in producers) == 7  # the excess waits for room
    gate.set()
    gevent.joinall(producers, raise_error=True)
    assert pool.join(timeout=None)
    assert order == list(range(10))
    s = pool.stats()
    assert (s.submitted, s.completed, s.rejected) == (11, 11, 0)


def test_full_queue_from_the_hub_is_refused_and_counted() -> None:
    pool = ggopool.new_pool("overload", 1, Config(max_pending=2))
    gate = Event()
    pool.go(gate.wait)
    gevent.idle()
    assert pool.try_go(print) is True
    assert pool.try_go(print) is True
    assert pool.try_go(print) is False
    errors: list[BaseException] = []

    def from_hub() -> None:
        try:
            pool.submit(print)
        except PoolFull as exc:
            errors.append(exc)

    gevent.get_hub().loop.run_callback(from_hub)
    gevent.idle()
    assert [type(e) for e in errors] == [PoolFull]
    assert pool.stats().rejected == 2
    assert pool.task_count() == 2  # nothing refused was queued
    gate.set()
    assert pool.join(timeout=None)


def test_cancelled_tasks_give_their_room_back() -> None:
    pool = ggopool.new_pool("overload", 1, Config(max_pending=2))
    gate = Event()
    pool.go(gate.wait)
    gevent.idle()
    queued = [pool.submit(print, i) for i in range(2)]
    for task in queued:
        assert task.cancel()
    assert pool.task_count() == 0
    assert pool.try_go(lambda: None) is True
    gate.set()
    assert pool.join(timeout=None)
