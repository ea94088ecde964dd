"""Locust integration: a pool task that raises fails the run; the pools' counts are reported.

Importing ``ggopool`` never imports Locust; importing this module does (and so, as every
locustfile does, monkey-patches through ``import locust``). Import it from locustfiles.
"""

from __future__ import annotations

import contextvars
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import gevent
from gevent.event import Event
from greenlet import getcurrent
from locust import events as locust_events
from locust.env import Environment
from locust.event import EventHook, Events
from locust.runners import MasterRunner, Runner, WorkerRunner

import ggopool
from ggopool import Instrument, Pool, TaskInfo

PoolT = TypeVar("PoolT", bound=Pool)

__all__ = ["PoolCounts", "counts", "track"]

log = logging.getLogger("ggopool.locust")

#: Where a worker puts its pools' counts in each stats report it sends to the master.
REPORT_KEY = "ggopool"
#: The message a worker sends with its final counts when its test stops: the periodic
#: report can be three seconds old by then. The master logs the sums once every worker's
#: final counts are in.
COUNTS_MESSAGE = "ggopool_counts"
#: Seconds the drain at test_stop waits when neither `track` nor Locust's --stop-timeout
#: says otherwise.
DEFAULT_DRAIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class PoolCounts:
    """What a tracked pool did during a Locust test.

    * ``submitted``: tasks queued on the pool, by any method.
    * ``run``: tasks that started and finished (returned, raised, or killed while running).
    * ``failed``: of those, tasks that raised. A ``go()`` or ``spawn()`` task's exception is
      also a Locust error; a ``submit()`` or group task's goes to whoever reads its result.
    * ``cancelled``: tasks that never started (``Task.cancel``, ``Task.kill``, a group that
      cancels on error, ``Pool.kill``). Once the pool is drained, ``submitted == run +
      cancelled``.
    * ``peak_workers``: the most worker greenlets the pool had at once. On the master it is
      the sum of the workers' peaks, so an upper bound for all processes together.

    On the master every field is summed over the Locust workers' reports.
    """

    submitted: int = 0
    run: int = 0
    failed: int = 0
    cancelled: int = 0
    peak_workers: int = 0

    def __add__(self, other: PoolCounts) -> PoolCounts:
        return PoolCounts(
            self.submitted + other.submitted,
            self.run + other.run,
            self.failed + other.failed,
            self.cancelled + other.cancelled,
            self.peak_workers + other.peak_workers,
        )

    def __str__(self) -> str:
        return (
            f"{self.submitted} submitted, {self.run} run, {self.failed} failed, "
            f"{self.cancelled} cancelled, {self.peak_workers} peak workers"
        )


def _counts_from(data: object) -> dict[str, PoolCounts]:
    # A worker's report, as msgpack delivered it: {pool name: {field: int}}.
    if not isinstance(data, dict):
        return {}
    return {
        str(name): PoolCounts(**{k: int(v) for k, v in fields.items()})
        for name, fields in data.items()
        if isinstance(fields, dict)
    }


class _Tracker(Instrument):
    """The instrument `track` attaches: counts a pool's tasks for the run, and knows when
    none is in flight (queued or running) for the drain at test_stop."""

    def __init__(self, pool: Pool, integration: _Integration, drain_timeout: float | None) -> None:
        self.pool = pool
        self.integration = integration
        self.drain_timeout = drain_timeout
        self.submitted = self.run = self.failed = self.cancelled = 0
        self.peak_workers = pool._live_workers()
        # Not reset by a new test: a task still in flight from the last one finishes later.
        self.in_flight = 0
        self.idle = Event()
        self.idle.set()

    def __repr__(self) -> str:
        return f"<ggopool.locust tracker of pool {self.pool.name!r}: {self.counts()}>"

    def task_queued(self, task: TaskInfo) -> None:
        self.submitted += 1
        self.in_flight += 1
        self.idle.clear()

    def task_finished(self, task: TaskInfo, outcome: str, exc: BaseException | None) -> None:
        if outcome == "cancelled":
            self.cancelled += 1
        else:
            self.run += 1
            if outcome == "failed":
                self.failed += 1
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def worker_started(self, pool: Pool) -> None:
        # Workers are added only as they start, so sampling here sees every peak.
        self.peak_workers = max(self.peak_workers, pool._live_workers())

    def counts(self) -> PoolCounts:
        return PoolCounts(self.submitted, self.run, self.failed, self.cancelled, self.peak_workers)

    def reset(self) -> None:
        self.submitted = self.run = self.failed = self.cancelled = 0
        self.peak_workers = self.pool._live_workers()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the counted tasks, then for anything else the
        pool still holds (tasks queued before it was tracked report their failures to the
        run too); True if both finished."""
        started = time.monotonic()
        if not self.idle.wait(timeout):
            return False
        if getcurrent() in self.pool:
            return True  # called from one of its own tasks: the counted ones are done
        return self.pool.join(max(0.0, timeout - (time.monotonic() - started)))

    def on_panic(self, ctx: contextvars.Context, exc: Exception) -> None:
        failed = ggopool.failed_task()  # the task, its callable and arguments
        environment = self.integration.environment
        if environment is None or environment.runner is None:
            # No Locust run to tell: report it as ggopool does without a handler.
            gevent.get_hub().handle_error(failed, type(exc), exc, exc.__traceback__)
            return
        # As Locust logs an exception raised by a task of a User, then counts it: the
        # user_error event puts it in runner.exceptions (on a worker, it is sent to the
        # master), which --exit-code-on-error looks at.
        log.error(
            "task %s of pool %r failed: %r\n%s",
            failed.call if failed is not None else "?",
            self.pool.name,
            exc,
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        environment.events.user_error.fire(  # type: ignore[no-untyped-call]  # untyped in locust
            user_instance=None, exception=exc, tb=exc.__traceback__
        )


class _Integration:
    """The tracked pools of one Locust ``Events`` and the listeners that report them."""

    def __init__(self, events: Events, environment: Environment | None) -> None:
        self.environment = environment
        self.pools: dict[str, _Tracker] = {}
        # When Locust began stopping this test (its test_stopping): the drain's clock.
        self.stopping_at: float | None = None
        # On the master: each worker's latest counts, by client id; the workers whose
        # final counts (sent when their test stopped) have come; whether the sums of
        # this test were logged.
        self.reports: dict[str, dict[str, PoolCounts]] = {}
        self.final: set[str] = set()
        self.summarized = False
        self._listening_runner: Runner | None = None
        listeners: list[tuple[EventHook, Callable[..., None]]] = [
            (events.init, self._on_init),
            (events.test_start, self._on_test_start),
            (events.test_stop, self._on_test_stop),
            (events.report_to_master, self._on_report_to_master),
            (events.worker_report, self._on_worker_report),
            (events.quit, self._on_quit),
        ]
        stopping = getattr(events, "test_stopping", None)  # not in every Locust release
        if stopping is not None:
            listeners.append((stopping, self._on_test_stopping))
        for hook, listener in listeners:
            hook.add_listener(listener)  # type: ignore[no-untyped-call]  # untyped in locust
        self._attach(environment)

    def _attach(self, environment: Environment | None) -> None:
        if environment is None:
            return
        self.environment = environment
        runner = environment.runner
        if isinstance(runner, MasterRunner) and runner is not self._listening_runner:
            runner.register_message(COUNTS_MESSAGE, self._on_counts_message)
            self._listening_runner = runner

    def local_counts(self) -> dict[str, PoolCounts]:
        return {name: tracker.counts() for name, tracker in self.pools.items()}

    def totals(self) -> dict[str, PoolCounts]:
        totals: dict[str, PoolCounts] = {}
        for report in self.reports.values():
            for name, pool_counts in report.items():
                totals[name] = totals.get(name, PoolCounts()) + pool_counts
        return totals

    def is_master(self) -> bool:
        return self.environment is not None and isinstance(self.environment.runner, MasterRunner)

    # -- listeners -------------------------------------------------------------------------

    def _on_init(self, environment: Environment, **_kwargs: Any) -> None:
        self._attach(environment)

    def _on_test_start(self, environment: Environment, **_kwargs: Any) -> None:
        self._attach(environment)
        self.reports.clear()
        self.final.clear()
        self.summarized = False
        self.stopping_at = None
        for tracker in self.pools.values():
            tracker.reset()

    def _summarize(self, note: str = "") -> None:
        self.summarized = True
        n = len(self.reports)
        for name, pool_counts in sorted(self.totals().items()):
            log.info("ggopool pool %r, sum over %d workers: %s%s", name, n, pool_counts, note)

    def _summarize_if_final(self) -> None:
        # Log the sums once every worker known to this test has sent its final counts.
        # When the master stops the test, they come before its test_stop; when it quits
        # at once (headless --run-time), after it, while it waits for the workers' last
        # stats.
        runner = self.environment.runner if self.environment is not None else None
        if self.summarized or not self.final or not isinstance(runner, MasterRunner):
            return
        if set(self.reports) | set(runner.clients) <= self.final:
            self._summarize()

    def _on_test_stopping(self, environment: Environment, **_kwargs: Any) -> None:
        self.stopping_at = time.monotonic()

    def drain_timeout(self, tracker: _Tracker) -> float:
        """`track`'s ``drain_timeout``; by default Locust's --stop-timeout, the time it
        gives the users' own tasks, or `DEFAULT_DRAIN_TIMEOUT` when that is 0."""
        if tracker.drain_timeout is not None:
            return tracker.drain_timeout
        stop_timeout = getattr(self.environment, "stop_timeout", 0.0) or 0.0
        return float(stop_timeout) if stop_timeout > 0 else DEFAULT_DRAIN_TIMEOUT

    def _on_test_stop(self, environment: Environment, **_kwargs: Any) -> None:
        self._attach(environment)
        if self.is_master():
            self._summarize_if_final()
            return
        # The users are gone, but tasks they queued may still be running: let them finish
        # so that the counts, and Locust's request stats, include them. The clock started
        # when Locust began stopping the users, whose own tasks had that time too.
        now = time.monotonic()
        began = self.stopping_at if self.stopping_at is not None else now
        for tracker in self.pools.values():
            timeout = self.drain_timeout(tracker)
            if not tracker.drain(max(0.0, began + timeout - time.monotonic())):
                left = tracker.pool.stats()
                # They go on running; what is left at exit, ggopool's exit drain waits for
                # (ggopool.set_exit_drain), but a failure then no longer fails the run.
                log.warning(
                    "ggopool pool %r: %d tasks unfinished (%d queued, %d running) %.1f s "
                    "after the test stopped",
                    tracker.pool.name,
                    left.pending + left.running,
                    left.pending,
                    left.running,
                    timeout,
                )
        self.stopping_at = None
        local = self.local_counts()
        for name, pool_counts in sorted(local.items()):
            log.info("ggopool pool %r: %s", name, pool_counts)
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            runner.send_message(COUNTS_MESSAGE, _payload(local))

    def _on_report_to_master(self, client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
        data[REPORT_KEY] = _payload(self.local_counts())

    def _on_worker_report(self, client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
        if REPORT_KEY in data:
            self.reports[client_id] = _counts_from(data[REPORT_KEY])

    def _on_counts_message(self, environment: Environment, msg: Any, **_kwargs: Any) -> None:
        self.reports[str(msg.node_id)] = _counts_from(msg.data)
        self.final.add(str(msg.node_id))
        self._summarize_if_final()

    def _on_quit(self, **_kwargs: Any) -> None:
        # A worker that died never sent final counts: log what its last report said.
        if self.is_master() and self.reports and not self.summarized:
            missing = len(set(self.reports) - self.final)
            self._summarize(f" ({missing} workers sent no final counts)")


def _payload(counts: dict[str, PoolCounts]) -> dict[str, dict[str, int]]:
    return {name: asdict(pool_counts) for name, pool_counts in counts.items()}


# One integration per Events object; Locust's command line uses the global `locust.events`.
_integrations: dict[int, tuple[Events, _Integration]] = {}


def _integration(environment: Environment | None) -> _Integration:
    events = locust_events if environment is None else environment.events
    entry = _integrations.get(id(events))
    if entry is None:
        entry = (events, _Integration(events, environment))
        _integrations[id(events)] = entry
    else:
        entry[1]._attach(environment)
    return entry[1]


def track(
    pool: PoolT,
    environment: Environment | None = None,
    *,
    drain_timeout: float | None = None,
) -> PoolT:
    """Make a pool's tasks count in Locust runs: their exceptions fail the run, and the
    pool's counts are reported when each test stops. Return ``pool`` itself.

    Without this, an exception in a pool task during a Locust run is printed and forgotten:
    the run still exits 0 under ``--exit-code-on-error``. In a locustfile::

        import ggopool
        from ggopool.locust import track

        # max_pending: go() waits while 64 tasks are queued, so the users cannot queue
        # faster than the pool runs, and the backlog is gone by the end of the test.
        assets = track(ggopool.new_pool("assets", 20, ggopool.Config(max_pending=64)))

        class Browser(FastHttpUser):
            @task
            def page(self):
                for path in ("/a.css", "/b.js"):
                    assets.go(self.client.get, path)

    Rules:

    * ``track`` attaches an instrument (`ggopool.Pool.add_instrument`) and sets the pool's
      panic handler (replacing any other). Every method of the pool works as before and
      every task queued from now on is counted (`PoolCounts`), whatever method queued
      it; the counts restart at each ``test_start``.
    * An ``Exception`` from a ``go``/``spawn`` task of the pool is logged with its
      traceback and its call (``task fetch('/a.css') of pool 'assets' failed``), as Locust
      logs an exception from a User's task, and fires Locust's ``user_error`` event with
      ``user_instance=None`` (no user owns a pool task). Locust counts it in
      ``runner.exceptions``, which a worker sends to the master and which
      ``--exit-code-on-error`` looks at, so the run exits with that code. Outside a run
      (no environment or no runner yet) it goes to ``gevent.get_hub().handle_error`` as
      ggopool's default would.
    * At ``test_stop`` each process that runs users waits for its tracked pools to finish
      what they hold (the users are gone, the tasks they queued are not), inside the run,
      so that a failure among them still fails it; then logs ``ggopool pool 'assets': 120
      submitted, 120 run, 0 failed, 0 cancelled, 8 peak workers``. It waits until
      ``drain_timeout`` seconds after Locust began stopping the users (``test_stopping``);
      by default that is Locust's ``--stop-timeout``, the time it gives the users' own
      tasks, or 5 s when that is 0. If the time runs out it logs how many tasks are
      unfinished; they go on running, and at exit ggopool's exit drain (see
      ``ggopool.set_exit_drain``) waits for them as for every untracked pool, but a failure
      then is only logged. A pool with ``Config(max_pending=...)`` holds at most that many
      queued tasks, so what is left at the end is bounded too.
    * A task cancelled before it starts (``Task.cancel``, ``Task.kill``, a group with
      ``cancel_on_error``, ``Pool.kill``) counts as cancelled at once, and is not waited for.
    * Distributed: workers add their counts to every stats report (``report_to_master``,
      key ``"ggopool"``) and send final ones when their test stops; the master keeps each
      worker's latest (``worker_report``) and, once every worker's final counts are in,
      logs the sums, ``ggopool pool 'assets', sum over 2 workers: ...``; if a worker
      never sends them, the master logs what it has when it quits. See `counts`.
    * ``environment`` None means Locust's global ``locust.events``, the one the ``locust``
      command uses; its environment is learnt from the ``init`` event, so call ``track`` at
      import of the locustfile. Pass an environment when running Locust as a library.
    * Tracking the same pool again changes nothing; another pool with a tracked pool's
      name raises ValueError.
    """
    if not isinstance(pool, Pool):
        raise TypeError(f"pool must be a ggopool.Pool, got {pool!r}")
    if drain_timeout is not None:
        rule = "drain_timeout must be None or a number of seconds >= 0"
        if type(drain_timeout) is bool or not isinstance(drain_timeout, (int, float)):
            raise TypeError(f"{rule}, got {drain_timeout!r}")
        if not drain_timeout >= 0:
            raise ValueError(f"{rule}, got {drain_timeout!r}")
        drain_timeout = float(drain_timeout)
    integration = _integration(environment)
    tracker = integration.pools.get(pool.name)
    if tracker is not None:
        if tracker.pool is not pool:
            raise ValueError(f"a pool named {pool.name!r} is already tracked")
        return pool
    tracker = _Tracker(pool, integration, drain_timeout)
    pool.add_instrument(tracker)
    pool.set_panic_handler(tracker.on_panic)
    integration.pools[pool.name] = tracker
    return pool


def counts(environment: Environment | None = None) -> dict[str, PoolCounts]:
    """The tracked pools' counts by pool name: on a master, summed over the workers'
    latest reports; elsewhere, this process's own.

    For a listener that checks a run, e.g. at ``test_stop`` or ``quitting``::

        @events.quitting.add_listener
        def check(environment, **kw):
            if counts(environment).get("assets", PoolCounts()).failed:
                environment.process_exit_code = 1
    """
    integration = _integration(environment)
    if integration.is_master():
        return integration.totals()
    return integration.local_counts()
