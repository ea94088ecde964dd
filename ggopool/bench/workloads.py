"""What the bench's tasks do, and the counting that proves every one of them ran."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

import gevent
from gevent.event import Event

#: A task body: called once per task, inside the counting task.
Body = Callable[[], object]

#: How deep gopool's benchmark task recurses. gopool's ``DoCopyStack`` stops at each level
#: with probability 1/100 (100 deep on average) to make goroutine stacks grow; here the
#: depth is fixed so that every run does the same work.
GOPOOL_DEPTH = 100


def _copy_stack(depth: int) -> int:
    if depth < GOPOOL_DEPTH:
        return _copy_stack(depth + 1)
    return 0


def gopool_task() -> None:
    """gopool's BenchmarkPool/BenchmarkGo task: a 100-deep recursion."""
    _copy_stack(0)


def yield_once() -> None:
    """Yield to the hub once, as a task that does one I/O wait would."""
    gevent.sleep(0)


#: The in-process throughput workloads by name; None is the no-op (counting only).
BODIES: dict[str, Body | None] = {
    "noop": None,
    "yield": yield_once,
    "gopool": gopool_task,
}


@dataclass(frozen=True)
class Counted:
    """A task that counts itself, and how to read the count."""

    task: Callable[..., None]
    ran: Callable[[], int]


def counted(n: int, done: Event, body: Body | None) -> Counted:
    """A task that runs ``body`` (if any), counts itself and sets ``done`` at the n-th run.

    Every strategy runs this same task, so each pays the same for the counting, and the
    count is how the bench proves that a strategy ran exactly n tasks.
    """
    ran = 0
    if body is None:

        def task() -> None:
            nonlocal ran
            ran += 1
            if ran == n:
                done.set()

    else:

        def task() -> None:
            nonlocal ran
            body()
            ran += 1
            if ran == n:
                done.set()

    return Counted(task, lambda: ran)


def stamped(n: int, done: Event, starts: list[float]) -> Counted:
    """A counting task ``task(i)`` that notes in ``starts[i]`` when it started."""
    ran = 0

    def task(i: int) -> None:
        nonlocal ran
        starts[i] = perf_counter()
        ran += 1
        if ran == n:
            done.set()

    return Counted(task, lambda: ran)


def blocking(n: int, done: Event, release: Event) -> tuple[Counted, Callable[[], int]]:
    """A counting task that blocks until ``release`` is set; and how many have started."""
    started = 0
    ran = 0

    def task() -> None:
        nonlocal started, ran
        started += 1
        release.wait()
        ran += 1
        if ran == n:
            done.set()

    return Counted(task, lambda: ran), lambda: started
