"""OpenTelemetry with the real SDK: a span opened inside a pool task is a child of the span
that was current where the task was submitted, whatever way it was submitted, and across
pools, groups and threads; the same code with ``gevent.spawn`` loses the parent."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator

import gevent
import pytest
from gevent.event import Event
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import ggopool
from ggopool.prometheus import instrument


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
    assert measured.pool.join(10)
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
