"""OpenTelemetry with the real SDK: a span opened inside a pool task is a child of the span
that was current where the task was submitted, whatever way it was submitted, and across
pools, groups and threads; the same code with ``gevent.spawn`` loses the parent."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.event import Event
from gevent.server import StreamServer
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

import ggopool
import ggopool.otel
from ggopool.prometheus import PoolCollector, instrument
from tests.conftest import HubErrors
from tests.pool_surface import exercise
from tests.prometheus_helpers import WAIT, Scrape


class Spans:
    """A tracer of its own (the global provider is left alone) and the spans it ended."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests.test_tracing")

    def ended(self) -> dict[str, ReadableSpan]:
        spans = self.exporter.get_finished_spans()
        by_name = {span.name: span for span in spans}
        assert len(by_name) == len(spans), f"span names repeat: {[s.name for s in spans]}"
        return by_name

    def child(self, name: str) -> None:
        """What a task does: open a span of its own (in whatever context it runs in)."""
        with self.tracer.start_as_current_span(name):
            gevent.sleep(0)  # the span stays current across a switch to other greenlets


@pytest.fixture
def spans() -> Iterator[Spans]:
    s = Spans()
    yield s
    s.provider.shutdown()


def registry_of(pool: ggopool.Pool) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(PoolCollector([pool], registered=False, default=False))
    return registry


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def assert_children(found: dict[str, ReadableSpan], parent: str, children: list[str]) -> None:
    expected = found[parent].context
    assert expected is not None
    for name in children:
        span = found[name]
        assert span.context is not None
        assert parent_of(span) == expected.span_id, f"{name}'s parent is not {parent}"
        assert span.context.trace_id == expected.trace_id, f"{name} is in another trace"


def test_go_submit_ctx_go_try_go_and_spawn_tasks_are_children_of_the_submitting_span(
    spans: Spans,
) -> None:
    pool = ggopool.new_pool("traced", 2)
    measured = instrument(ggopool.new_pool("traced-measured", 2))
    with spans.tracer.start_as_current_span("request"):
        pool.go(spans.child, "go")
        submitted = pool.submit(spans.child, "submit")
        assert pool.try_go(spans.child, "try_go")
        ggopool.go(spans.child, "ggopool.go")
        spawned = ggopool.spawn(spans.child, "ggopool.spawn")
        measured.go(spans.child, "instrumented go")
        measured_task = measured.submit(spans.child, "instrumented submit")
        # A context captured in the request, handed to tasks queued after it ended.
        ctx = contextvars.copy_context()
    pool.ctx_go(ctx, spans.child, "ctx_go")
    ggopool.ctx_go(ctx, spans.child, "ggopool.ctx_go")
    measured.ctx_go(ctx, spans.child, "instrumented ctx_go")
    # Nothing has run yet: go() queues and returns, as gevent.spawn does.
    assert set(spans.ended()) == {"request"}
    assert pool.join(10)
    assert measured.join(10)
    assert ggopool.default_pool().join(10)
    submitted.get(timeout=1)
    spawned.get(timeout=1)
    measured_task.get(timeout=1)

    found = spans.ended()
    assert_children(
        found,
        "request",
        [
            "go",
            "submit",
            "try_go",
            "ggopool.go",
            "ggopool.spawn",
            "instrumented go",
            "instrumented submit",
            "ctx_go",
            "ggopool.ctx_go",
            "instrumented ctx_go",
        ],
    )
    assert found["request"].parent is None


def test_a_task_that_submits_to_another_pool_is_the_parent_of_that_task(spans: Spans) -> None:
    front = ggopool.new_pool("front", 1)
    back = ggopool.new_pool("back", 1)
    handles: list[ggopool.Task[None]] = []

    def handle() -> None:
        with spans.tracer.start_as_current_span("front task"):
            back.go(spans.child, "back go")
            handles.append(back.submit(spans.child, "back submit"))

    with spans.tracer.start_as_current_span("request"):
        front.go(handle)
    assert front.join(10)
    assert back.join(10)
    found = spans.ended()
    assert_children(found, "request", ["front task"])
    assert_children(found, "front task", ["back go", "back submit"])


def test_group_tasks_are_children_of_the_span_around_the_group(spans: Spans) -> None:
    pool = ggopool.new_pool("fanout", 3)
    measured = instrument(ggopool.new_pool("fanout-measured", 3))
    with spans.tracer.start_as_current_span("dashboard"):
        with pool.group() as g:
            for i in range(3):
                g.go(spans.child, f"widget {i}")
        with measured.group() as mg:
            for i in range(3):
                mg.go(spans.child, f"measured widget {i}")
        # Both groups waited on leaving their blocks: every span has ended.
        assert len(spans.ended()) == 6
    found = spans.ended()
    assert_children(
        found,
        "dashboard",
        [f"widget {i}" for i in range(3)] + [f"measured widget {i}" for i in range(3)],
    )


def test_tasks_handed_over_by_a_native_thread_are_children_of_that_threads_span(
    spans: Spans,
) -> None:
    pool = ggopool.new_pool("from-threads", 2)
    measured = instrument(ggopool.new_pool("from-threads-measured", 2))
    expected = 3 * 4
    done = Event()
    ran = 0
    thread_errors: list[BaseException] = []

    def child(name: str) -> None:
        nonlocal ran
        spans.child(name)
        ran += 1
        if ran == expected:
            done.set()

    def client(t: int) -> None:
        # A real OS thread with its own span: each go() hands the task to the pool's hub
        # thread with a copy of this thread's context.
        try:
            with spans.tracer.start_as_current_span(f"thread {t}"):
                pool.go(child, f"thread {t} go")
                pool.submit(child, f"thread {t} submit")
                ggopool.go(child, f"thread {t} ggopool.go")
                measured.go(child, f"thread {t} instrumented go")
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            thread_errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    assert done.wait(20)  # this thread runs the hub while the threads hand tasks over
    for thread in threads:
        thread.join(10)
    assert not thread_errors
    found = spans.ended()
    for t in range(3):
        assert found[f"thread {t}"].parent is None
        assert_children(
            found,
            f"thread {t}",
            [
                f"thread {t} go",
                f"thread {t} submit",
                f"thread {t} ggopool.go",
                f"thread {t} instrumented go",
            ],
        )


def test_gevent_spawn_loses_the_parent_the_pool_keeps(spans: Spans) -> None:
    pool = ggopool.new_pool("beside-spawn", 2)
    with spans.tracer.start_as_current_span("request"):
        greenlet = gevent.spawn(spans.child, "gevent.spawn")
        pool.go(spans.child, "pool.go")
    greenlet.join(10)
    assert pool.join(10)
    found = spans.ended()
    request = found["request"].context
    spawned = found["gevent.spawn"].context
    assert request is not None
    assert spawned is not None
    # gevent.spawn starts the greenlet in an empty context: its span is a new trace's root.
    assert found["gevent.spawn"].parent is None
    assert spawned.trace_id != request.trace_id
    assert_children(found, "request", ["pool.go"])


def test_a_task_that_leaves_a_span_current_does_not_leak_it_into_the_next_task(
    spans: Spans,
) -> None:
    pool = ggopool.new_pool("one-worker", 1)
    seen: list[trace.Span] = []

    def careless() -> None:
        # Attaches a span's context and never detaches it.
        span = spans.tracer.start_span("careless")
        otel_context.attach(trace.set_span_in_context(span))
        span.end()

    def next_task() -> None:
        seen.append(trace.get_current_span())

    pool.go(careless)
    pool.go(next_task)  # no span is current here
    assert pool.join(10)
    assert pool.stats().workers == 1  # the same worker ran both
    assert seen == [trace.INVALID_SPAN]


def test_a_decorated_task_names_its_own_span(spans: Spans) -> None:
    # OpenTelemetry's own decorator names a task's span; the pool needs nothing more.
    @spans.tracer.start_as_current_span("send_webhook")
    def send_webhook(order: int) -> int:
        return order

    pool = ggopool.new_pool("decorated", 1)
    with spans.tracer.start_as_current_span("order"):
        task = pool.submit(send_webhook, 7)
    assert task.get(timeout=10) == 7
    assert_children(spans.ended(), "order", ["send_webhook"])


# -- ggopool.otel: a span for each task -------------------------------------------------------


def traced_pool(spans: Spans, name: str, cap: int = 2) -> ggopool.Pool:
    pool = ggopool.otel.instrument(ggopool.new_pool(name, cap), spans.provider)
    assert ggopool.otel.instrument(pool, spans.provider) is pool  # again: changes nothing
    [tracer] = pool.instruments
    assert isinstance(tracer, ggopool.otel.TaskTracer)
    return pool


def test_each_task_has_a_span_child_of_the_submitter_with_its_wait_and_run_time(
    spans: Spans,
) -> None:
    pool = traced_pool(spans, "otel-spans", cap=1)
    release = Event()

    def send_webhook(order_id: int, retries: int = 0) -> None:
        release.wait()
        spans.child("inside")

    with spans.tracer.start_as_current_span("POST /orders"):
        pool.go(send_webhook, 41, retries=3)
        pool.go(spans.child, "second")  # waits for the one worker
        ctx = contextvars.copy_context()
    pool.ctx_go(ctx, abs, -1)  # its span's parent: the span current in ctx
    gevent.idle()
    gevent.sleep(0.05)
    release.set()
    assert pool.join(10)

    tasks = {
        span.attributes["ggopool.task.call"]: span
        for span in spans.exporter.get_finished_spans()
        if span.attributes and "ggopool.task.call" in span.attributes
    }
    assert set(tasks) == {
        f"{send_webhook.__qualname__}(41, retries=3)",
        "Spans.child('second')",
        "abs(-1)",
    }
    webhook = tasks[f"{send_webhook.__qualname__}(41, retries=3)"]
    assert webhook.name == send_webhook.__qualname__
    assert webhook.kind is trace.SpanKind.INTERNAL
    assert webhook.attributes is not None
    assert webhook.attributes["ggopool.pool"] == "otel-spans"
    assert webhook.attributes["ggopool.task.outcome"] == "completed"
    run_time = webhook.attributes["ggopool.task.run_time"]
    assert isinstance(run_time, float)
    assert run_time >= 0.05  # it waited for release
    second = tasks["Spans.child('second')"]
    assert second.attributes is not None
    wait = second.attributes["ggopool.task.queue_wait"]
    assert isinstance(wait, float)
    assert wait >= 0.05  # queued behind the webhook
    assert second.start_time is not None
    assert second.events[0].name == "ggopool.task.started"
    assert second.events[0].timestamp - second.start_time >= 0.05e9
    found = spans.ended()
    for span in tasks.values():
        assert found["POST /orders"].context is not None
        assert span.parent is not None
        assert span.parent.span_id == found["POST /orders"].context.span_id
    # The spans a task opens are children of its span.
    assert found["inside"].parent is not None
    assert webhook.context is not None
    assert found["inside"].parent.span_id == webhook.context.span_id
    assert found["second"].parent is not None
    assert second.context is not None
    assert found["second"].parent.span_id == second.context.span_id


def test_a_failed_task_span_has_the_error_and_the_report_is_unchanged(
    spans: Spans, hub_errors: HubErrors
) -> None:
    pool = traced_pool(spans, "otel-fail")
    calls: list[str] = []

    def boom(order_id: int) -> None:
        raise ZeroDivisionError(order_id)

    def handler(ctx: contextvars.Context, exc: Exception) -> None:
        failed = ggopool.failed_task()
        assert failed is not None
        # The panic handler runs in the task's context: the task's span (ended by now) is
        # current, so what it logs carries the task's span id.
        calls.append(f"{failed.call} {trace.get_current_span().name}")  # type: ignore[attr-defined]

    pool.go(boom, 7)
    assert pool.join(10)
    [(context, kind, _)] = hub_errors.take()
    assert kind is ZeroDivisionError
    assert repr(context) == f"<task {boom.__qualname__}(7) of pool 'otel-fail'>"
    pool.set_panic_handler(handler)
    pool.go(boom, 8)
    assert pool.join(10)
    assert calls == [f"{boom.__qualname__}(8) {boom.__qualname__}"]
    failed = [s for s in spans.exporter.get_finished_spans() if s.name == boom.__qualname__]
    assert len(failed) == 2
    for span in failed:
        assert span.status.status_code is trace.StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["ggopool.task.outcome"] == "failed"
        assert [event.name for event in span.events] == ["ggopool.task.started", "exception"]


def test_a_task_cancelled_before_it_started_has_a_span_saying_so(spans: Spans) -> None:
    pool = traced_pool(spans, "otel-cancel", cap=1)
    release = Event()
    pool.go(release.wait)
    gevent.idle()
    with spans.tracer.start_as_current_span("request"):
        task = pool.submit(abs, -3)
    assert task.cancel()
    release.set()
    assert pool.join(10)
    [span] = [s for s in spans.exporter.get_finished_spans() if s.name == "abs"]
    assert span.attributes is not None
    assert span.attributes["ggopool.task.outcome"] == "cancelled"
    assert "ggopool.task.run_time" not in span.attributes
    assert span.events == ()
    assert span.parent is not None
    request = spans.ended()["request"].context
    assert request is not None
    assert span.parent.span_id == request.span_id


def test_every_method_of_a_pool_traced_and_measured_works_and_has_a_span_per_task(
    spans: Spans,
) -> None:
    pool = instrument(traced_pool(spans, "otel-surface", cap=4))
    seen = exercise(pool)
    tasks = [
        s
        for s in spans.exporter.get_finished_spans()
        if s.attributes and s.attributes.get("ggopool.pool") == "otel-surface"
    ]
    assert len(tasks) == seen.queued
    outcomes = [s.attributes["ggopool.task.outcome"] for s in tasks if s.attributes]
    assert outcomes.count("cancelled") == seen.cancelled
    assert outcomes.count("killed") == seen.killed
    assert outcomes.count("completed") == seen.started - seen.killed
    found = Scrape(generate_latest(registry_of(pool)).decode())
    assert found.value(WAIT + "_count", pool="otel-surface") == seen.started


def test_record_arguments_false_leaves_the_call_out(spans: Spans) -> None:
    pool = ggopool.otel.instrument(
        ggopool.new_pool("otel-quiet", 1), spans.provider, record_arguments=False
    )
    pool.go(abs, -99)
    assert pool.join(10)
    [span] = spans.exporter.get_finished_spans()
    assert span.attributes is not None
    assert "ggopool.task.call" not in span.attributes
    with pytest.raises(TypeError, match=r"^record_arguments must be a bool, got 1$"):
        ggopool.otel.instrument(pool, record_arguments=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^pool must be a ggopool.Pool, got 'p'$"):
        ggopool.otel.instrument("p")  # type: ignore[type-var]


@pytest.mark.parametrize("provider", ["x", 3, object()], ids=["str", "int", "object"])
def test_a_tracer_provider_that_is_not_one_is_refused_at_the_call(
    spans: Spans, provider: object
) -> None:
    pool = ggopool.new_pool("otel-bad-provider", 1)
    rule = r"^tracer_provider must be an opentelemetry.trace.TracerProvider or None, got .+$"
    with pytest.raises(TypeError, match=rule):
        ggopool.otel.instrument(pool, provider)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rule):
        ggopool.otel.TaskTracer(provider)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^tracer_provider must be .* or None, got 'x'$"):
        ggopool.otel.instrument(pool, "x")  # type: ignore[arg-type]
    assert pool.instruments == ()  # nothing attached
    assert pool.submit(abs, -1).get(timeout=5) == 1


class NetworkExporter(SpanExporter):
    """An exporter that sends each span to a collector over a real socket and waits for its
    answer: it yields, as any exporter that does I/O does under monkey-patching.
    ``before_send()`` is called before each span goes."""

    def __init__(self, port: int | None, before_send: Any) -> None:
        assert port is not None
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.before_send = before_send
        self.outcomes: dict[str, list[str]] = {}

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self.before_send()
            self.sock.sendall(b"s")
            assert self.sock.recv(1) == b"k"
            attributes = span.attributes or {}
            call = str(attributes.get("ggopool.task.call"))
            self.outcomes.setdefault(call, []).append(str(attributes["ggopool.task.outcome"]))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.sock.close()


def collect(sock: socket.socket, address: Any) -> None:
    """The collector: answers each span."""
    while sock.recv(1):
        sock.sendall(b"k")


def test_pool_kill_with_an_exporter_that_yields_kills_every_queued_task_once() -> None:
    collector = StreamServer(("127.0.0.1", 0), collect)
    collector.start()
    release = Event()
    exporter = NetworkExporter(collector.server_port, release.set)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # the documented set-up
    pool = ggopool.otel.instrument(
        ggopool.new_pool("otel-network", 1, ggopool.Config(idle_timeout=None)), provider
    )
    ran: list[int] = []
    try:
        running = pool.submit(release.wait)  # ends while the exporter waits for an answer
        gevent.idle()
        for i in range(5):
            pool.go(ran.append, i)
        assert pool.kill(timeout=5) is True
        assert pool.join(5)
        assert ran == []
        assert running.dead
        queued = {
            call: outcomes for call, outcomes in exporter.outcomes.items() if "append" in call
        }
        assert queued == {f"list.append({i})": ["cancelled"] for i in range(5)}
        stats = pool.stats()
        assert (stats.cancelled, stats.pending, stats.running, stats.workers) == (5, 0, 0, 0)
        assert stats.submitted == 6
        # The pool goes on, traced.
        assert pool.submit(abs, -7).get(timeout=5) == 7
        assert exporter.outcomes["abs(-7)"] == ["completed"]
    finally:
        provider.shutdown()
        collector.stop(timeout=5)


def test_removing_the_tracer_ends_the_spans_of_the_tasks_running_then(spans: Spans) -> None:
    tracer = ggopool.otel.TaskTracer(spans.provider)
    pool = ggopool.new_pool("otel-removed", 2)
    other = ggopool.new_pool("otel-kept", 1)
    pool.add_instrument(tracer)
    other.add_instrument(tracer)  # one tracer on two pools: removed from one only
    removed = Event()

    def runs_across_the_removal(name: str) -> None:
        removed.wait()
        spans.child(name)  # opened after the removal: a child of the task's span

    pool.go(runs_across_the_removal, "child")
    other.go(runs_across_the_removal, "other child")
    gevent.idle()
    pool.remove_instrument(tracer)
    found = {s.name: s for s in spans.exporter.get_finished_spans()}
    task = found[runs_across_the_removal.__qualname__]  # ended at the removal
    assert task.attributes is not None
    assert task.attributes["ggopool.pool"] == "otel-removed"
    assert task.attributes["ggopool.task.outcome"] == "running"
    assert isinstance(task.attributes["ggopool.task.run_time"], float)
    removed.set()
    assert pool.join(5)
    assert other.join(5)
    pool.go(abs, -1)  # no longer traced
    assert pool.join(5)
    ended = spans.exporter.get_finished_spans()
    # Each task's span once (the removed pool's abs(-1) has none), and each child.
    assert sorted(s.name for s in ended) == sorted(
        ["child", "other child", *[runs_across_the_removal.__qualname__] * 2]
    )
    by_pool = {(s.name, str((s.attributes or {}).get("ggopool.pool"))): s for s in ended}
    task = by_pool[(runs_across_the_removal.__qualname__, "otel-removed")]
    child = by_pool[("child", "None")]
    assert task.context is not None
    assert child.parent is not None
    assert child.parent.span_id == task.context.span_id
    kept = by_pool[(runs_across_the_removal.__qualname__, "otel-kept")]
    assert kept.attributes is not None
    assert kept.attributes["ggopool.task.outcome"] == "completed"  # the other pool's: as ever
    assert repr(tracer) == "<ggopool.otel.TaskTracer spans open=0>"


def test_only_a_failed_tasks_span_records_the_exception_and_an_error_status(
    spans: Spans, hub_errors: HubErrors
) -> None:
    pool = traced_pool(spans, "otel-outcomes", cap=3)
    release = Event()

    def waits(name: str) -> None:
        release.wait()

    def fails(name: str) -> None:
        raise KeyError(name)

    completed = pool.submit(abs, -1)
    failed = pool.submit(fails, "failed")
    killed = pool.submit(waits, "killed")
    killed_with_error = pool.submit(waits, "killed with an error")
    gevent.idle()
    cancelled = pool.submit(waits, "cancelled")  # queued: every worker is busy
    killed_queued = pool.submit(waits, "killed queued")
    pool_killed = pool.submit(waits, "pool killed")
    assert cancelled.cancel()
    killed_queued.kill(block=False)
    killed.kill(timeout=5)
    killed_with_error.kill(ValueError("with an error"), timeout=5)
    gevent.idle()  # pool_killed starts on a freed worker
    assert pool.kill(timeout=5)
    for task in (completed, failed, killed, killed_with_error, cancelled, pool_killed):
        assert task.dead
    assert hub_errors.take() == []  # submitted: not reported

    by_call = {
        (s.attributes or {}).get("ggopool.task.call"): s
        for s in spans.exporter.get_finished_spans()
    }

    def ended(call: str) -> tuple[object, trace.StatusCode, list[str]]:
        span = by_call[call]
        outcome = (span.attributes or {})["ggopool.task.outcome"]
        return outcome, span.status.status_code, [event.name for event in span.events]

    started = "ggopool.task.started"
    unset = trace.StatusCode.UNSET
    assert ended("abs(-1)") == ("completed", unset, [started])
    assert ended(f"{fails.__qualname__}('failed')") == (
        "failed",
        trace.StatusCode.ERROR,
        [started, "exception"],
    )
    assert ended(f"{waits.__qualname__}('killed with an error')") == (
        "failed",  # a kill with another exception fails the task, as documented
        trace.StatusCode.ERROR,
        [started, "exception"],
    )
    assert ended(f"{waits.__qualname__}('killed')") == ("killed", unset, [started])
    assert ended(f"{waits.__qualname__}('pool killed')") == ("killed", unset, [started])
    assert ended(f"{waits.__qualname__}('cancelled')") == ("cancelled", unset, [])
    assert ended(f"{waits.__qualname__}('killed queued')") == ("cancelled", unset, [])
    assert by_call[f"{fails.__qualname__}('failed')"].status.description == "KeyError: 'failed'"
