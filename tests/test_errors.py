"""Exceptions from tasks (gopool's panics), killed workers, and bad input."""

from __future__ import annotations

import contextvars
import logging
import textwrap
from typing import Any

import gevent
import pytest
from gevent.event import Event

import ggopool
from ggopool import Config
from tests.conftest import HubErrors
from tests.subprocess_helpers import run_python

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def boom() -> None:
    raise ZeroDivisionError("boom")


def test_exception_goes_to_the_hub_with_a_context_naming_pool_and_task(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("orders", 2)
    pool.go(boom)
    gevent.idle()
    [(context, type_, value)] = hub_errors.take()
    assert type_ is ZeroDivisionError
    assert str(value) == "boom"
    assert value.__traceback__ is not None
    assert isinstance(context, ggopool.FailedTask)
    assert context.pool is pool
    assert context.task is boom
    assert repr(context) == "<task boom of pool 'orders'>"


def test_default_report_reads_like_gevents_own(capsys: pytest.CaptureFixture[str]) -> None:
    hub = gevent.get_hub()
    handle = type(hub).handle_error
    pool = ggopool.new_pool("orders", 2)
    # The real handle_error, bypassing the recorder.
    hub.handle_error = lambda *a: handle(hub, *a)  # type: ignore[method-assign]
    pool.go(boom)
    gevent.idle()
    err = capsys.readouterr().err
    assert "ZeroDivisionError: boom" in err
    assert "<task boom of pool 'orders'> failed with ZeroDivisionError" in err


def test_hub_is_looked_up_at_each_failure_so_an_override_sees_it(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("t", 2)
    seen: list[Any] = []
    hub = gevent.get_hub()
    hub.handle_error = lambda context, t, v, tb: seen.append((context.task, t))  # type: ignore[method-assign,assignment,union-attr]
    pool.go(boom)
    gevent.idle()
    assert seen == [(boom, ZeroDivisionError)]


def test_panic_handler_gets_ctx_and_exception_with_traceback_and_worker_survives() -> None:
    pool = ggopool.new_pool("t", 1)
    got: list[Any] = []

    def handler(ctx: contextvars.Context, exc: Exception) -> None:
        got.append((ctx[request_id], request_id.get(), type(exc), exc.__traceback__))

    pool.set_panic_handler(handler)
    runners: list[object] = []
    token = request_id.set("req-7")
    try:
        pool.go(boom)
    finally:
        request_id.reset(token)
    pool.go(lambda: runners.append(gevent.getcurrent()))
    gevent.idle()
    [(ctx_value, seen_inside, type_, tb)] = got
    assert (ctx_value, seen_inside, type_) == ("req-7", "req-7", ZeroDivisionError)
    assert tb is not None
    assert len(runners) == 1
    assert pool.worker_count() == 1


def test_a_handler_that_raises_is_reported_through_the_hub(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("t", 1)

    def bad_handler(ctx: contextvars.Context, exc: Exception) -> None:
        raise RuntimeError("handler broke")

    pool.set_panic_handler(bad_handler)
    pool.go(boom)
    after = Event()
    pool.go(after.set)
    gevent.idle()
    [(context, type_, _value)] = hub_errors.take()
    assert type_ is RuntimeError
    assert (
        repr(context)
        == "<panic handler test_a_handler_that_raises_is_reported_through_the_hub.<locals>.bad_handler of pool 't'>"
    )
    assert after.is_set()


def test_set_panic_handler_none_restores_the_hub_report(hub_errors: HubErrors) -> None:
    pool = ggopool.new_pool("t", 1)
    pool.set_panic_handler(lambda ctx, exc: None)
    pool.set_panic_handler(None)
    pool.go(boom)
    gevent.idle()
    assert [t for _, t, _ in hub_errors.take()] == [ZeroDivisionError]


@pytest.mark.parametrize("exc_type", [SystemError, SystemExit])
def test_system_errors_go_to_the_hub_not_the_handler(
    hub_errors: HubErrors, exc_type: type[BaseException]
) -> None:
    pool = ggopool.new_pool("t", 1)
    handled: list[object] = []
    pool.set_panic_handler(lambda ctx, exc: handled.append(exc))

    def task() -> None:
        raise exc_type("stop")

    pool.go(task)
    with pytest.raises(exc_type):
        gevent.idle()  # the hub throws it into the main greenlet, as for gevent.spawn
    assert [t for _, t, _ in hub_errors.take()] == [exc_type]
    assert handled == []


def test_keyboard_interrupt_in_a_task_reaches_the_main_greenlet() -> None:
    code = textwrap.dedent(
        """
        import gevent, ggopool
        def task():
            raise KeyboardInterrupt
        ggopool.go(task)
        try:
            gevent.sleep(1)
        except KeyboardInterrupt:
            print("main greenlet got KeyboardInterrupt")
        """
    )
    out = run_python(code)
    assert out.stdout.strip() == "main greenlet got KeyboardInterrupt"
    assert "<task task of pool 'ggopool.DefaultPool'> failed with KeyboardInterrupt" in out.stderr


def test_killing_a_worker_ends_it_and_the_queue_goes_on_with_another() -> None:
    pool = ggopool.new_pool("t", 1)
    gate = Event()
    workers: list[Any] = []
    done: list[int] = []

    def first() -> None:
        workers.append(gevent.getcurrent())
        gate.wait()

    pool.go(first)
    for i in range(5):
        pool.go(done.append, i)
    gevent.idle()
    assert pool.worker_count() == 1
    gevent.kill(workers[0])
    gevent.idle()
    gevent.idle()
    assert workers[0].dead
    assert done == [0, 1, 2, 3, 4]
    assert pool.worker_count() == 1


def test_killing_a_parked_worker_uncounts_it_and_the_pool_still_works() -> None:
    pool = ggopool.new_pool("t", 3, Config(idle_timeout=None))
    workers: list[Any] = []
    pool.go(lambda: workers.append(gevent.getcurrent()))
    gevent.idle()
    assert pool.worker_count() == 1
    gevent.kill(workers[0])
    gevent.idle()
    assert workers[0].dead
    assert pool.worker_count() == 0
    ran = Event()
    pool.go(ran.set)
    assert ran.wait(5)


def test_a_task_that_lets_gevent_timeout_escape_is_reported_to_the_hub(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("t", 1)
    handled: list[object] = []
    pool.set_panic_handler(lambda ctx, exc: handled.append(exc))

    def task() -> None:
        with gevent.Timeout(0.001):
            Event().wait()

    pool.go(task)
    done = Event()
    pool.go(done.set)
    assert done.wait(5)
    assert [t for _, t, _ in hub_errors.take()] == [gevent.Timeout]
    assert handled == []


# -- bad input: a clear error, and nothing changes ------------------------------------


@pytest.mark.parametrize("fn", [None, 42, "print"])
def test_go_of_a_non_callable_is_a_type_error_and_queues_nothing(fn: object) -> None:
    pool = ggopool.new_pool("t", 1)
    with pytest.raises(TypeError, match=rf"^fn must be callable, got {fn!r}$"):
        pool.go(fn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rf"^fn must be callable, got {fn!r}$"):
        pool.ctx_go(contextvars.Context(), fn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^fn must be callable"):
        ggopool.go(fn)  # type: ignore[arg-type]
    assert pool.task_count() == 0
    assert pool.worker_count() == 0


def test_ctx_go_with_a_ctx_that_is_not_a_context_is_a_type_error() -> None:
    pool = ggopool.new_pool("t", 1)
    with pytest.raises(TypeError, match=r"^ctx must be a contextvars.Context, got \{\}$"):
        pool.ctx_go({}, print)  # type: ignore[arg-type]
    assert pool.task_count() == 0


@pytest.mark.parametrize(
    ("cap", "exc"),
    [
        (0, ValueError),
        (-5, ValueError),
        (1.5, TypeError),
        (True, TypeError),
        ("3", TypeError),
        (None, TypeError),
    ],
)
def test_new_pool_rejects_a_bad_cap(cap: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=rf"^cap must be an int >= 1, got {cap!r}$"):
        ggopool.new_pool("t", cap)  # type: ignore[arg-type]


def test_new_pool_rejects_a_bad_name() -> None:
    with pytest.raises(ValueError, match=r"^name must be a non-empty str, got ''$"):
        ggopool.new_pool("", 1)
    with pytest.raises(TypeError, match=r"^name must be a str, got 7$"):
        ggopool.new_pool(7, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^config must be a ggopool.Config or None, got 3$"):
        ggopool.new_pool("t", 1, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "exc"), [(0, ValueError), (-1, ValueError), (1.0, TypeError), (False, TypeError)]
)
def test_config_rejects_a_bad_scale_threshold(value: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=rf"^scale_threshold must be an int >= 1, got {value!r}$"):
        Config(scale_threshold=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (-1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("1", TypeError),
        (True, TypeError),
    ],
)
def test_config_rejects_a_bad_idle_timeout(value: object, exc: type[Exception]) -> None:
    with pytest.raises(
        exc, match=r"^idle_timeout must be a (finite )?number of seconds >= 0 or None, got "
    ):
        Config(idle_timeout=value)  # type: ignore[arg-type]


def test_config_accepts_its_documented_values_and_is_frozen() -> None:
    assert Config().scale_threshold == 1
    assert Config().idle_timeout == 10.0
    assert Config(idle_timeout=None).idle_timeout is None
    assert Config(idle_timeout=0).idle_timeout == 0
    with pytest.raises(AttributeError):
        Config().scale_threshold = 2  # type: ignore[misc]


def test_a_non_callable_panic_handler_is_a_type_error_and_changes_nothing() -> None:
    pool = ggopool.new_pool("t", 1)

    def handler(ctx: contextvars.Context, exc: Exception) -> None:
        pass

    pool.set_panic_handler(handler)
    with pytest.raises(TypeError, match=r"^panic handler must be callable or None, got 'x'$"):
        pool.set_panic_handler("x")  # type: ignore[arg-type]
    assert pool._panic_handler is handler


def test_a_system_error_in_a_submitted_task_is_reported_naming_the_task(
    hub_errors: HubErrors,
) -> None:
    pool = ggopool.new_pool("orders", 1)

    def charge() -> None:
        raise SystemError("stop")

    task = pool.submit(charge)
    with pytest.raises(SystemError):
        gevent.idle()  # as for go(): the hub throws it into the main greenlet
    [(context, type_, _value)] = hub_errors.take()
    assert type_ is SystemError
    assert repr(context) == (
        "<task test_a_system_error_in_a_submitted_task_is_reported_naming_the_task"
        ".<locals>.charge of pool 'orders'>"
    )
    assert isinstance(task.exception, SystemError)  # and the handle has it too


def test_a_panic_handler_that_logs_names_the_call_and_the_tasks_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
    log = logging.getLogger("test.panic")

    def log_failure(ctx: contextvars.Context, exc: Exception) -> None:
        failed = ggopool.failed_task()
        assert failed is not None
        log.error("request %s: %s failed", request_id.get(), failed.call, exc_info=exc)

    def fetch(url: str, retries: int = 0) -> None:
        raise ValueError(url)

    pool = ggopool.new_pool("fetch", 2)
    pool.set_panic_handler(log_failure)
    request_id.set("r-42")
    pool.go(fetch, "bad", retries=3)
    request_id.set("-")
    with caplog.at_level(logging.ERROR, logger="test.panic"):
        gevent.idle()
    [record] = caplog.records
    assert record.getMessage() == (
        "request r-42: test_a_panic_handler_that_logs_names_the_call_and_the_tasks_request_id"
        ".<locals>.fetch('bad', retries=3) failed"
    )
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert ggopool.failed_task() is None  # only inside a handler
