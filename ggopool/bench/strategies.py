"""The ways to run tasks that the bench compares: ggopool's two, gevent's own, the floor.

Each runs a burst (n tasks submitted in a tight loop) and a trickle (n tasks submitted one
at a time, each once the one before has run). A strategy's name is what the tables show
and what ``--strategies`` takes, so it needs no quoting in a shell.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

import gevent
import gevent.pool
from gevent.event import Event

import ggopool
from ggopool import Pool

#: How long a strategy waits for its tasks before giving up. A task that was lost then shows
#: as a short ``tasks_run`` count in the report instead of hanging the bench.
WAIT_LIMIT = 600.0


class Strategy(ABC):
    """One way to run tasks: submit a burst of them, then wait until every one has run.

    The bench's counting task sets ``done`` when the last of the burst finishes, so a
    strategy with no join of its own (spawn_raw) waits on that.
    """

    #: The name in the tables, in the JSON and on the command line.
    name = ""

    #: Whether the strategy runs at most ``cap`` tasks at once (the tables show its cap).
    capped = False

    def __init__(self, cap: int) -> None:
        self.cap = cap

    def burst(self, n: int, task: Callable[[], object], done: Event) -> None:
        """Submit ``task`` n times in a tight loop, then return once all n have run.

        Subclasses override this with the loop an application would write, with the
        submitting callable in a local, so that no wrapper's cost is charged to them.
        """
        submit = self.submit
        for _ in range(n):
            submit(task)
        self.finish(done)

    def burst_stamped(
        self, n: int, task: Callable[[int], object], done: Event, stamps: list[float]
    ) -> None:
        """Submit ``task(i)`` for i in range(n), noting in ``stamps[i]`` when it was submitted."""
        submit = self.submit
        for i in range(n):
            stamps[i] = perf_counter()
            submit(task, i)
        self.finish(done)

    def trickle(self, n: int, task: Callable[[], object], ran_one: Event) -> None:
        """Submit ``task`` n times, each only once the one before has run.

        The task sets ``ran_one``; the loop clears it, submits, and waits for it, as a
        server handling one request at a time submits one task per request. A task that
        never runs ends the loop (after `WAIT_LIMIT`), so the count shows it short.
        """
        submit = self.submitter()
        clear = ran_one.clear
        wait = ran_one.wait
        for _ in range(n):
            clear()
            submit(task)
            if not wait(WAIT_LIMIT):
                return

    def submitter(self) -> Callable[[Callable[[], object]], object]:
        """The bare callable an application would call to submit one task, for `trickle`."""
        return self.submit

    @abstractmethod
    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Submit one task."""

    @abstractmethod
    def finish(self, done: Event) -> None:
        """Return once every task submitted so far has run (or after `WAIT_LIMIT`)."""

    def running_at_once(self, n: int) -> int:
        """How many of n tasks that block run at once; the rest wait in a queue."""
        return n

    def close(self) -> None:  # noqa: B027 - most strategies keep nothing
        """Let go of whatever the strategy keeps between bursts."""


def _settle(pool: Pool, done: Event) -> None:
    """Wait until the burst's last task has run and every worker it woke or started is
    parked or gone, so that no part of the burst's cost runs after its clock stops."""
    if not done.wait(WAIT_LIMIT):
        return
    deadline = perf_counter() + WAIT_LIMIT
    pool.join(WAIT_LIMIT)
    stats = pool.stats()
    # A worker whose start or wake-up is still on its way counts as awake, not idle.
    while stats.workers != stats.idle and perf_counter() < deadline:
        gevent.sleep(0)
        stats = pool.stats()


class GoStrategy(Strategy):
    """``ggopool.go(fn)``: the default pool, exactly as it ships (its cap is unlimited).

    This is what an application gets by writing ``ggopool.go`` where it wrote
    ``gevent.spawn``. The bench never changes the default pool's cap or config, and its
    workers stay as the pool leaves them between bursts and workloads.
    """

    name = "ggopool.go"

    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self._pool = ggopool.default_pool()

    def burst(self, n: int, task: Callable[[], object], done: Event) -> None:
        go = ggopool.go
        for _ in range(n):
            go(task)
        _settle(self._pool, done)

    def submitter(self) -> Callable[[Callable[[], object]], object]:
        return ggopool.go

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        ggopool.go(fn, *args)

    def finish(self, done: Event) -> None:
        _settle(self._pool, done)


class GgopoolSpawnStrategy(Strategy):
    """``ggopool.spawn(fn)`` for each task, then ``gevent.joinall``: the drop-in for
    ``gevent.spawn`` where the caller keeps the handles (a `Task` each, on the default
    pool as it ships)."""

    name = "ggopool.spawn"

    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self._pool = ggopool.default_pool()
        self._tasks: list[ggopool.Task[Any]] = []

    def burst(self, n: int, task: Callable[[], object], done: Event) -> None:
        spawn = ggopool.spawn
        tasks = [spawn(task) for _ in range(n)]
        gevent.joinall(tasks, timeout=WAIT_LIMIT)
        _settle(self._pool, done)

    def submitter(self) -> Callable[[Callable[[], object]], object]:
        # Not submit: it keeps every task for finish(); a trickle has no need to.
        return ggopool.spawn

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        self._tasks.append(ggopool.spawn(fn, *args))

    def finish(self, done: Event) -> None:
        tasks, self._tasks = self._tasks, []
        gevent.joinall(tasks, timeout=WAIT_LIMIT)
        _settle(self._pool, done)


class CappedPoolStrategy(Strategy):
    """``pool.go(fn)`` on one long-lived ``ggopool.Pool`` of the given cap (default
    ``Config``), warm between bursts."""

    name = "ggopool.Pool"
    capped = True

    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self._pool = ggopool.new_pool(f"bench cap={cap}", cap)

    def burst(self, n: int, task: Callable[[], object], done: Event) -> None:
        go = self._pool.go
        for _ in range(n):
            go(task)
        _settle(self._pool, done)

    def submitter(self) -> Callable[[Callable[[], object]], object]:
        return self._pool.go

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        self._pool.go(fn, *args)

    def finish(self, done: Event) -> None:
        _settle(self._pool, done)

    def running_at_once(self, n: int) -> int:
        return min(n, self.cap)

    def close(self) -> None:
        # Lowering the cap makes the parked workers above it exit now, so they do not
        # linger into the next strategy's measurements until their idle timeout.
        self._pool.set_cap(1)


class SpawnStrategy(Strategy):
    """``gevent.spawn(fn)`` for each task, then ``gevent.joinall``: the baseline."""

    name = "gevent.spawn"

    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []

    def burst(self, n: int, task: Callable[[], object], done: Event) -> None:
        spawn = gevent.spawn
        greenlets = [spawn(task) for _ in range(n)]
        gevent.joinall(greenlets, timeout=WAIT_LIMIT)

    def submitter(self) -> Callable[[Callable[[], object]], object]:
        # Not submit: it keeps every greenlet for finish(); a trickle has no need to.
        return gevent.spawn

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        self._greenlets.append(gevent.spawn(fn, *args))

    def finish(self, done: Event) -> None:
        greenlets, self._greenlets = self._greenlets, []
        gevent.joinall(greenlets, timeout=WAIT_LIMIT)


class SpawnRawStrategy(Strategy):
    """``gevent.spawn_raw(fn)``: a raw greenlet per task, no Greenlet object, no join."""

    name = "gevent.spawn_raw"

    def burst(self, n: int, task: Callable[[], object], done: Event) -> None:
        spawn_raw = gevent.spawn_raw
        for _ in range(n):
            spawn_raw(task)
        done.wait(WAIT_LIMIT)

    def submitter(self) -> Callable[[Callable[[], object]], object]:
        return gevent.spawn_raw

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        gevent.spawn_raw(fn, *args)

    def finish(self, done: Event) -> None:
        done.wait(WAIT_LIMIT)


class GeventPoolStrategy(Strategy):
    """``gevent.pool.Pool(cap).spawn(fn)``, then ``pool.join()``.

    Its ``spawn`` blocks the submitter while the pool is full, where ``go()`` queues.
    """

    name = "gevent.pool.Pool"
    capped = True

    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self._pool = gevent.pool.Pool(cap)

    def burst(self, n: int, task: Callable[[], object], done: Event) -> None:
        spawn = self._pool.spawn
        for _ in range(n):
            spawn(task)
        self._pool.join(timeout=WAIT_LIMIT)

    def submitter(self) -> Callable[[Callable[[], object]], object]:
        return self._pool.spawn

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        self._pool.spawn(fn, *args)

    def finish(self, done: Event) -> None:
        self._pool.join(timeout=WAIT_LIMIT)

    def running_at_once(self, n: int) -> int:
        return min(n, self.cap)


class FloorStrategy(Strategy):
    """A bare ``deque.popleft()()`` loop in the caller's greenlet: the cost of the task alone
    (the floor under every other strategy's cost per task).

    Tasks run one after the other, so it is a floor for the cost per task, not a way to
    run tasks that wait. In a trickle it calls the task directly: nothing is queued, no
    greenlet switches, and the task has run when the call returns, so there is no wait.
    """

    name = "deque-floor"

    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self._queue: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()

    def burst(self, n: int, task: Callable[[], object], done: Event) -> None:
        queue: deque[Callable[[], object]] = deque()
        append = queue.append
        for _ in range(n):
            append(task)
        popleft = queue.popleft
        while queue:
            popleft()()

    def trickle(self, n: int, task: Callable[[], object], ran_one: Event) -> None:
        for _ in range(n):
            task()

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        self._queue.append((fn, args))

    def finish(self, done: Event) -> None:
        popleft = self._queue.popleft
        while self._queue:
            fn, args = popleft()
            fn(*args)

    def running_at_once(self, n: int) -> int:
        return min(n, 1)


#: Every strategy by name, in the order the report lists them.
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        GoStrategy,
        GgopoolSpawnStrategy,
        CappedPoolStrategy,
        SpawnStrategy,
        SpawnRawStrategy,
        GeventPoolStrategy,
        FloorStrategy,
    )
}


def cap_of(name: str, cap: int) -> int | None:
    """The cap the strategy ``name`` runs under when given ``cap``; None if it has none."""
    return cap if STRATEGIES[name].capped else None


#: The strategy every ratio is taken against.
BASELINE = SpawnStrategy.name
