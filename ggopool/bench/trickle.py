"""The trickle workload: tasks submitted one at a time, each once the one before has run.

A web app calls ``go()`` once per request, and by the next request that task has usually
finished and its worker has parked, so every ``go()`` wakes a parked worker. A burst never
shows that cost (while the queue is full the workers stay awake and take task after task
without a switch); the trickle shows nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter

from gevent.event import Event

from ggopool.bench.progress import Progress
from ggopool.bench.rounds import Sample, ThroughputRow, throughput
from ggopool.bench.strategies import Strategy
from ggopool.bench.workloads import Body, counted


def timed_trickle(strategy: Strategy, n: int, body: Body | None) -> Sample:
    """Run n counting tasks one at a time on ``strategy``; its seconds and its count."""
    ran_one = Event()
    signal: Body = ran_one.set
    if body is not None:
        work = body

        def signal() -> None:
            work()
            ran_one.set()

    # Every strategy's task signals the same way, so each pays the same for the wait's
    # wake-up; what differs is how the task is submitted and how it reaches a greenlet.
    task = counted(n, Event(), signal)
    start = perf_counter()
    strategy.trickle(n, task.task, ran_one)
    seconds = perf_counter() - start
    return seconds, task.ran()


def trickle(
    n: int,
    cap: int,
    names: Sequence[str],
    rounds: int,
    progress: Progress,
    *,
    warmup: int,
) -> list[ThroughputRow]:
    """Trickles of n no-op tasks on each named strategy, in interleaved rounds."""
    return throughput(
        "trickle", None, n, cap, names, rounds, progress, warmup=warmup, timed=timed_trickle
    )
