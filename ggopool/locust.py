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
from typing import Any, ParamSpec, TypeVar

import gevent
from gevent.event import Event
from greenlet import getcurrent
from locust import events as locust_events
from locust.env import Environment
from locust.event import EventHook, Events
from locust.runners import MasterRunner, Runner, WorkerRunner

from ggopool import FailedTask, Pool, Task, TaskGroup

__all__ = ["PoolCounts", "TrackedPool", "counts", "track"]

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("ggopool.locust")

#: Where a worker puts its pools' counts in each stats report it sends to the master.
REPORT_KEY = "ggopool"
#: The message a worker sends with its final counts when its test stops: the periodic
#: report can be three seconds old by then. The master logs the sums once every worker's
#: final counts are in.
COUNTS_MESSAGE = "ggopool_counts"

# The task a tracked pool's worker is running, set in the task's own context so that the
# panic handler (which runs in that context) can name it.
_current_task: contextvars.ContextVar[object] = contextvars.ContextVar(
    "ggopool.locust.task", default=None
)


@dataclass(frozen=True)
class PoolCounts:
    """What a tracked pool did during a Locust test.

    * ``submitted``: tasks queued through the `TrackedPool`.
    * ``run``: tasks that finished, by returning or raising.
    * ``failed``: tasks that raised an ``Exception`` (each one is also a Locust error).
    * ``peak_workers``: the most worker greenlets the pool had at once. On the master it is
      the sum of the workers' peaks, so an upper bound for all processes together.

    On the master every field is summed over the Locust workers' reports.
    """

    submitted: int = 0
    run: int = 0
    failed: int = 0
    peak_workers: int = 0

    def __add__(self, other: PoolCounts) -> PoolCounts:
        return PoolCounts(
            self.submitted + other.submitted,
            self.run + other.run,
            self.failed + other.failed,
            self.peak_workers + other.peak_workers,
        )

    def __str__(self) -> str:
        return (
            f"{self.submitted} submitted, {self.run} run, {self.failed} failed, "
            f"{self.peak_workers} peak workers"
        )


class _CountedGroup(TaskGroup):
    def __init__(self, tracked: TrackedPool, cancel_on_error: bool) -> None:
        super().__init__(tracked.pool, cancel_on_error)
        self._tracked = tracked

    def go(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        task = super().go(self._tracked._run, fn, args, kwargs)
        self._tracked._queued()
        return task  # type: ignore[return-value]  # the task's value is fn's: _run returns it


def _counts_from(data: object) -> dict[str, PoolCounts]:
    # A worker's report, as msgpack delivered it: {pool name: {field: int}}.
    if not isinstance(data, dict):
        return {}
    return {
        str(name): PoolCounts(**{k: int(v) for k, v in fields.items()})
        for name, fields in data.items()
        if isinstance(fields, dict)
    }


class TrackedPool:
    """A ggopool pool whose tasks count in a Locust run; made by `track`.

    Queue work with its `go` and `ctx_go`, which behave as the pool's own and also count
    the task. Tasks queued on the underlying pool directly still have their exceptions
    reported to Locust, but are not in the counts.
    """

    def __init__(self, pool: Pool, integration: _Integration, drain_timeout: float) -> None:
        self._pool = pool
        self._integration = integration
        self._drain_timeout = drain_timeout
        self._submitted = 0
        self._run_count = 0
        self._failed = 0
        self._peak_workers = 0
        # Not reset by a new test: a task still in flight from the last one finishes later.
        self._in_flight = 0
        self._idle = Event()
        self._idle.set()
        pool.set_panic_handler(self._on_panic)

    def __repr__(self) -> str:
        return f"<ggopool.locust.TrackedPool {self._pool.name!r} {self.counts()}>"

    @property
    def pool(self) -> Pool:
        """The ggopool pool the tasks run on."""
        return self._pool

    @property
    def name(self) -> str:
        """The pool's name, the key of its counts in reports."""
        return self._pool.name

    def go(self, fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """`ggopool.Pool.go`, counted: queue ``fn(*args, **kwargs)`` on the pool."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        self._pool.go(self._run, fn, args, kwargs)
        self._queued()

    def ctx_go(
        self,
        ctx: contextvars.Context,
        fn: Callable[P, object],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        """`ggopool.Pool.ctx_go`, counted: queue ``fn(*args, **kwargs)`` in a copy of ``ctx``."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        self._pool.ctx_go(ctx, self._run, fn, args, kwargs)
        self._queued()

    def group(self, cancel_on_error: bool = False) -> TaskGroup:
        """`ggopool.Pool.group` on the pool, counted: the fan-out a browser-like user does.

        The group's tasks count like `go`'s, and, as with any group, the first failure is
        raised by ``wait()`` (or on leaving the ``with`` block) in the Locust task that
        waits, which Locust records as an error of that task.
        """
        return _CountedGroup(self, cancel_on_error)

    def counts(self) -> PoolCounts:
        """The counts of this process's tasks since the test started."""
        return PoolCounts(self._submitted, self._run_count, self._failed, self._peak_workers)

    def _queued(self) -> None:
        self._submitted += 1
        self._in_flight += 1
        self._idle.clear()
        # Workers start only inside go() (or set_cap), so sampling here sees every peak.
        self._peak_workers = max(self._peak_workers, self._pool.worker_count())

    def _reset(self) -> None:
        self._submitted = self._run_count = self._failed = 0
        self._peak_workers = self._pool.worker_count()

    def _drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the counted tasks, then for anything else
        the pool still holds (tasks queued on it directly report their failures to the
        run too); True if both finished."""
        started = time.monotonic()
        if not self._idle.wait(timeout):
            return False
        if getcurrent() in self._pool._greenlets:
            return True  # called from one of its own tasks: the counted ones are done
        return self._pool.join(max(0.0, timeout - (time.monotonic() - started)))

    def _run(
        self, fn: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> object:
        _current_task.set(fn)
        try:
            return fn(*args, **kwargs)
        except Exception:
            self._failed += 1
            raise  # on to the pool's panic handler, `_on_panic`
        finally:
            self._run_count += 1
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def _on_panic(self, ctx: contextvars.Context, exc: Exception) -> None:
        task = _current_task.get()
        environment = self._integration.environment
        if environment is None or environment.runner is None:
            # No Locust run to tell: report it as ggopool does without a handler.
            gevent.get_hub().handle_error(
                FailedTask(self._pool, task), type(exc), exc, exc.__traceback__
            )
            return
        # As Locust logs an exception raised by a task of a User, then counts it: the
        # user_error event puts it in runner.exceptions (on a worker, it is sent to the
        # master), which --exit-code-on-error looks at.
        name = getattr(task, "__qualname__", None) or repr(task)
        log.error(
            "task %s of pool %r failed: %r\n%s",
            name,
            self._pool.name,
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
        self.pools: dict[str, TrackedPool] = {}
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
        return {name: tracked.counts() for name, tracked in self.pools.items()}

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
        for tracked in self.pools.values():
            tracked._reset()

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

    def _on_test_stop(self, environment: Environment, **_kwargs: Any) -> None:
        self._attach(environment)
        if self.is_master():
            self._summarize_if_final()
            return
        # The users are gone, but tasks they queued may still be running: let them finish
        # so that the counts, and Locust's request stats, include them.
        for tracked in self.pools.values():
            if not tracked._drain(tracked._drain_timeout):
                left = tracked.pool.stats()
                # They go on running; what is left at exit, ggopool's exit drain waits for
                # (ggopool.set_exit_drain), but a failure then no longer fails the run.
                log.warning(
                    "ggopool pool %r: %d tasks unfinished (%d queued, %d running) %.1f s "
                    "after the test stopped",
                    tracked.name,
                    left.pending + left.running,
                    left.pending,
                    left.running,
                    tracked._drain_timeout,
                )
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
    pool: Pool, environment: Environment | None = None, *, drain_timeout: float = 5.0
) -> TrackedPool:
    """Make a pool's tasks count in Locust runs: their exceptions fail the run, and the
    pool's counts are reported when each test stops.

    Without this, an exception in a pool task during a Locust run is printed and forgotten:
    the run still exits 0 under ``--exit-code-on-error``. In a locustfile::

        import ggopool
        from ggopool.locust import track

        assets = track(ggopool.new_pool("assets", 20))

        class Browser(FastHttpUser):
            @task
            def page(self):
                for path in ("/a.css", "/b.js"):
                    assets.go(self.client.get, path)

    Rules:

    * ``track`` sets the pool's panic handler (replacing any other). An ``Exception`` from
      any task of the pool is logged with its traceback, as Locust logs an exception from a
      User's task, and fires Locust's ``user_error`` event with ``user_instance=None`` (no
      user owns a pool task). Locust counts it in ``runner.exceptions``, which a worker
      sends to the master and which ``--exit-code-on-error`` looks at, so the run exits
      with that code. Outside a run (no environment or no runner yet) the exception goes
      to ``gevent.get_hub().handle_error`` as ggopool's default would.
    * Tasks queued with the returned `TrackedPool`'s ``go``/``ctx_go`` are counted
      (`PoolCounts`); the counts restart at each ``test_start``.
    * At ``test_stop`` each process that runs users waits up to ``drain_timeout`` seconds
      for its tracked pools to finish what they hold (the users are gone, the tasks they
      queued are not), inside the run, so that a failure among them still fails it; then
      logs ``ggopool pool 'assets': 120 submitted, 120 run, 0 failed, 8 peak workers``. If
      the time runs out it logs how many tasks are unfinished; they go on running, and at
      exit ggopool's exit drain (see ``ggopool.set_exit_drain``) waits for them as for
      every untracked pool, but a failure then is only logged.
    * Distributed: workers add their counts to every stats report (``report_to_master``,
      key ``"ggopool"``) and send final ones when their test stops; the master keeps each
      worker's latest (``worker_report``) and, once every worker's final counts are in,
      logs the sums, ``ggopool pool 'assets', sum over 2 workers: ...``; if a worker
      never sends them, the master logs what it has when it quits. See `counts`.
    * ``environment`` None means Locust's global ``locust.events``, the one the ``locust``
      command uses; its environment is learnt from the ``init`` event, so call ``track`` at
      import of the locustfile. Pass an environment when running Locust as a library.
    * Tracking the same pool again returns the same `TrackedPool`; another pool with a
      tracked pool's name raises ValueError.
    """
    if not isinstance(pool, Pool):
        raise TypeError(f"pool must be a ggopool.Pool, got {pool!r}")
    if type(drain_timeout) is bool or not isinstance(drain_timeout, (int, float)):
        raise TypeError(f"drain_timeout must be a number of seconds >= 0, got {drain_timeout!r}")
    if not drain_timeout >= 0:
        raise ValueError(f"drain_timeout must be a number of seconds >= 0, got {drain_timeout!r}")
    integration = _integration(environment)
    tracked = integration.pools.get(pool.name)
    if tracked is not None:
        if tracked.pool is not pool:
            raise ValueError(f"a pool named {pool.name!r} is already tracked")
        return tracked
    tracked = TrackedPool(pool, integration, float(drain_timeout))
    integration.pools[pool.name] = tracked
    return tracked


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
