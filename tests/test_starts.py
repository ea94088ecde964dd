"""When a queued task gets its worker: at once while the pool has room, as a greenlet of
``gevent.spawn`` starts, including on a busy loop and at a stop; and what the counts say
about workers the spawn rule asked for but the hub has not started yet."""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import pytest
from gevent.event import Event

import ggopool
from ggopool import Config, Pool


@pytest.fixture
def long_switch_interval() -> Iterator[None]:
    """No turn of the loop is overdue: what a test sees is the spawn rule and the order of
    the loop's callbacks alone, not how fast this machine is."""
    before = gevent.getswitchinterval()
    gevent.setswitchinterval(60)
    try:
        yield
    finally:
        gevent.setswitchinterval(before)


def _pools() -> list[Pool]:
    return [ggopool.default_pool(), ggopool.new_pool("roomy", 10_000)]


@pytest.mark.parametrize("which", ["default", "capped"])
@pytest.mark.usefixtures("long_switch_interval")
def test_a_burst_of_tasks_that_block_all_start_before_the_submitter_runs_again(
    which: str,
) -> None:
    pool = _pools()[0 if which == "default" else 1]
    release = Event()
    started: list[int] = []

    def task(i: int) -> None:
        started.append(i)
        release.wait()

    try:
        for i in range(300):
            pool.go(task, i)
        gevent.sleep(0)  # behind the start that the first go() scheduled
        assert started == list(range(300))
        stats = pool.stats()
        assert (stats.running, stats.pending, stats.workers - stats.idle) == (300, 0, 300)
    finally:
        release.set()
        pool.join()


@pytest.mark.usefixtures("long_switch_interval")
def test_tasks_queued_a_few_at_a_time_each_start_before_the_next_few_are_queued() -> None:
    # A server's requests each queue a task or two between turns of the loop: every turn's
    # tasks start in that turn, so none waits for the loop to come round many times.
    pool = ggopool.default_pool()
    release = Event()
    left_queued = []

    def task() -> None:
        release.wait()

    try:
        for _ in range(40):
            for _ in range(25):
                pool.go(task)
            gevent.sleep(0)
            left_queued.append(pool.stats().pending)
        assert left_queued == [0] * 40
        assert pool.stats().running == 1000
    finally:
        release.set()
        pool.join()


@pytest.mark.usefixtures("long_switch_interval")
def test_workers_counts_the_worker_greenlets_that_exist_not_the_starts_asked_for() -> None:
    pool = ggopool.new_pool("counted", 100)
    release = Event()
    try:
        for _ in range(50):
            pool.go(release.wait)
        # The spawn rule asked for 50 workers; the hub has made none yet.
        stats = pool.stats()
        assert (stats.workers, stats.running, stats.pending) == (0, 0, 50)
        assert pool.worker_count() == 50  # gopool's count: the starts asked for
        gevent.sleep(0)
        stats = pool.stats()
        assert (stats.workers, stats.running, stats.pending) == (50, 50, 0)
        assert pool.worker_count() == 50
        # The starts asked for still count towards the cap: no more than 100 are made.
        for _ in range(200):
            pool.go(release.wait)
        gevent.sleep(0)
        stats = pool.stats()
        assert (stats.workers, stats.running, stats.pending) == (100, 100, 150)
    finally:
        release.set()
        pool.join()
    assert pool.stats().workers == pool.stats().idle


@pytest.mark.usefixtures("long_switch_interval")
def test_a_burst_of_tasks_that_yield_once_is_run_by_a_few_workers_not_one_each() -> None:
    # Keeps every worker it makes, so that the count after the burst is how many it made.
    pool = ggopool.new_pool("yielding", 1_000_000, Config(max_idle=1_000_000, idle_timeout=None))
    ran = [0]

    def task() -> None:
        gevent.sleep(0)
        ran[0] += 1

    # As many as the bench's burst: its resumes keep a few hundred callbacks queued.
    for _ in range(100_000):
        pool.go(task)
    pool.join()
    assert ran[0] == 100_000
    stats = pool.stats()
    assert stats.workers == stats.idle
    assert 1 <= stats.workers <= 2_000, stats


def test_starting_a_long_burst_of_tasks_that_block_lets_the_loop_run() -> None:
    # gevent's loop breaks a long run of start callbacks at the switch interval; the
    # starts of a pool do too: 5,000 starts take far longer than 0.5 ms.
    before = gevent.getswitchinterval()
    gevent.setswitchinterval(0.0005)
    # gevent reads the interval as a run of callbacks begins: let this one end, so that
    # the interval is in force for the starts.
    gevent.sleep(0.001)
    pool = ggopool.new_pool("fair", 10_000)
    loop = gevent.get_hub().loop
    iterations: set[int] = set()
    release = Event()

    def task() -> None:
        iterations.add(loop.iteration)
        release.wait()

    try:
        for _ in range(5_000):
            pool.go(task)
        with gevent.Timeout(30):
            while pool.stats().pending:
                gevent.sleep(0.001)
        assert pool.stats().running == 5_000
        assert len(iterations) >= 2, "every start ran before the loop polled once"
    finally:
        gevent.setswitchinterval(before)
        release.set()
        pool.join()


@pytest.mark.parametrize("which", ["default", "capped"])
def test_at_a_stop_no_task_is_left_queued_while_its_pool_had_room_to_start_it(which: str) -> None:
    # A busy server (greenlets waking every millisecond) whose requests queue tasks that
    # block, 50 between turns of the loop, while the stop's drain waits, until 0.3 s
    # before its deadline; the deadline passes with the tasks still running. Every task
    # had a worker by then, as a greenlet of gevent.spawn would have started: none is
    # abandoned without having run. (Before, starts went at the loop's pace and tens of
    # thousands were left queued.)
    stop = False

    def busy() -> None:
        while not stop:
            gevent.sleep(0.001)

    release = Event()
    pool = ggopool.default_pool() if which == "default" else ggopool.new_pool("roomy", 100_000)
    submitted = [0]
    deadline = 0.8

    def requests(until: float) -> None:
        while submitted[0] < 50_000 and time.monotonic() < until:
            for _ in range(50):
                pool.go(release.wait, 60.0)
            submitted[0] += 50
            gevent.sleep(0)

    others = [gevent.spawn(busy) for _ in range(2_000)]
    try:
        gevent.sleep(0.05)
        server = gevent.spawn(requests, time.monotonic() + deadline - 0.3)
        while not submitted[0]:
            gevent.sleep(0)
        assert ggopool.drain(deadline) is False
        server.join()
        stats = pool.stats()
        assert (stats.pending, stats.running) == (0, submitted[0]), stats
    finally:
        stop = True
        release.set()
        pool.join()
        gevent.joinall(others)


def test_starts_made_a_callback_each_take_one_callback_per_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Past the switch interval each start is a loop callback of its own until the loop
    # polls; over and over on a loop this short of time, and still one per start, as
    # gevent.spawn's, not a new callback for every start left each time.
    calls = [0]
    start_one = Pool._start_one

    def counted(pool: Pool, generation: int) -> None:
        calls[0] += 1
        start_one(pool, generation)

    monkeypatch.setattr(Pool, "_start_one", counted)
    before = gevent.getswitchinterval()
    gevent.setswitchinterval(0.00001)
    gevent.sleep(0.001)  # the interval is in force from the next run of callbacks
    pool = ggopool.new_pool("short of time", 10_000)
    release = Event()
    try:
        for _ in range(4_000):
            pool.go(release.wait)
        with gevent.Timeout(30):
            while pool.stats().pending:
                gevent.sleep(0.001)
        assert pool.stats().running == 4_000
        assert 0 < calls[0] <= 2 * 4_000, calls
    finally:
        gevent.setswitchinterval(before)
        release.set()
        pool.join()
