"""OpenTelemetry tracing for ggopool pools: one span per task, child of the span that was
current where the task was queued.

Needs ``opentelemetry-api`` (``pip install 'ggopool[otel]'``, plus an SDK to export the
spans). Importing ``ggopool`` never imports it; importing this module does.

Without it, a span a task opens is already a child of the submitter's span: each task runs
in a copy of the caller's ``contextvars`` (``docs/observability.md``). This module adds a
span for the task itself, which shows how long it waited for a worker and how long it ran.
"""

from __future__ import annotations

import time
from typing import TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from ggopool._describe import callable_name, short_repr
from ggopool._instrument import Instrument, TaskInfo
from ggopool._pool import Pool

__all__ = ["TaskTracer", "instrument"]

PoolT = TypeVar("PoolT", bound=Pool)

#: The name of the instrumentation scope the spans are created in.
SCOPE = "ggopool"


def _wall_ns(perf: float) -> int:
    """A ``time.perf_counter()`` reading as wall-clock nanoseconds (OpenTelemetry's)."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


class TaskTracer(Instrument):
    """The instrument `instrument` attaches: one span per task.

    * The span is named after the task's callable (``send_webhook``, ``Order.save``) and
      is a child of the span current where the task was queued (for ``ctx_go``, the one
      current in its context). It starts when the task was queued and ends when it
      finishes, so its length is the queue wait plus the run.
    * Attributes: ``ggopool.pool`` (the pool's name), ``ggopool.task.call`` (the call with
      its arguments, bounded: ``send_webhook(41, retries=3)``), ``ggopool.task.outcome``
      (``completed``, ``failed``, ``killed`` or ``cancelled``), ``ggopool.task.queue_wait``
      and ``ggopool.task.run_time`` (seconds, float; not for a cancelled task). An event
      ``ggopool.task.started`` marks the start.
    * While the task runs, its span is the current one, so the spans the task opens are
      its children. (Each task runs in its own copy of the context, so this leaks into
      no other task.)
    * A task that raised: the exception is recorded and the status is ERROR. A task killed
      or cancelled has neither: its outcome says how it ended.
    * Removing the tracer (``pool.remove_instrument(tracer)``) ends the spans of the pool's
      tasks running then, with ``ggopool.task.outcome`` ``running`` and the run time so far.
    * ``record_arguments=False`` leaves out ``ggopool.task.call`` (arguments may hold what
      must not leave the process).
    """

    __slots__ = ("_record_arguments", "_spans", "_tracer")

    def __init__(
        self, tracer_provider: TracerProvider | None = None, record_arguments: bool = True
    ) -> None:
        if tracer_provider is not None and not isinstance(tracer_provider, TracerProvider):
            raise TypeError(
                "tracer_provider must be an opentelemetry.trace.TracerProvider or None, "
                f"got {short_repr(tracer_provider)}"
            )
        if type(record_arguments) is not bool:
            raise TypeError(f"record_arguments must be a bool, got {record_arguments!r}")
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self._record_arguments = record_arguments
        self._spans: dict[TaskInfo, Span] = {}

    def __repr__(self) -> str:
        return f"<ggopool.otel.TaskTracer spans open={len(self._spans)}>"

    def _start(self, task: TaskInfo, parent: otel_context.Context) -> Span:
        attributes: dict[str, str] = {"ggopool.pool": task.pool.name}
        if self._record_arguments:
            attributes["ggopool.task.call"] = task.call
        return self._tracer.start_span(
            callable_name(task.fn),
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_wall_ns(task.queued_at),
        )

    def task_started(self, task: TaskInfo) -> None:
        # Runs in the worker, inside the task's context: the span becomes its current one.
        span = self._start(task, otel_context.get_current())
        span.add_event("ggopool.task.started")
        started = task.started_at
        assert started is not None
        span.set_attribute("ggopool.task.queue_wait", started - task.queued_at)
        self._spans[task] = span
        otel_context.attach(trace.set_span_in_context(span))  # the task's copy only

    def task_finished(self, task: TaskInfo, outcome: str, exc: BaseException | None) -> None:
        span = self._spans.pop(task, None)
        if span is None:
            # Cancelled before it started: the parent is the span current in its context.
            span = self._start(task, task.context.run(otel_context.get_current))
        else:
            started = task.started_at
            assert started is not None
            span.set_attribute("ggopool.task.run_time", time.perf_counter() - started)
        span.set_attribute("ggopool.task.outcome", outcome)
        if outcome == "failed" and exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()

    def removed(self, pool: Pool) -> None:
        # Detached from pool: its running tasks will not be finished for this tracer, so
        # their spans end now, or the spans they open would have a parent never exported.
        now = time.perf_counter()
        for task in [task for task in self._spans if task.pool is pool]:
            span = self._spans.pop(task)
            started = task.started_at
            assert started is not None
            span.set_attribute("ggopool.task.run_time", now - started)
            span.set_attribute("ggopool.task.outcome", "running")
            span.end()


def instrument(
    pool: PoolT, tracer_provider: TracerProvider | None = None, *, record_arguments: bool = True
) -> PoolT:
    """Trace ``pool``'s tasks, one span each (see `TaskTracer`); return ``pool`` itself.

    Example::

        notify = ggopool.otel.instrument(ggopool.new_pool("notify", 100))
        with tracer.start_as_current_span("POST /orders"):
            notify.go(send_webhook, order_id)   # span "send_webhook", child of the request

    ``tracer_provider`` None means OpenTelemetry's global one. Tasks queued from now on are
    traced; ``pool.remove_instrument(tracer)`` (found in ``pool.instruments``) stops it and
    ends the spans of the tasks running then.
    Instrumenting a pool again changes nothing.
    """
    if not isinstance(pool, Pool):
        raise TypeError(f"pool must be a ggopool.Pool, got {pool!r}")
    tracer = TaskTracer(tracer_provider, record_arguments)
    if not any(isinstance(attached, TaskTracer) for attached in pool.instruments):
        pool.add_instrument(tracer)
    return pool
