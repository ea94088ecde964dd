"""Bad input: hypothesis throws arguments of many kinds at every public function and
method. Only TypeError or ValueError come out (or what a function documents: `PoolFull`,
`PoolClosed`, ``gevent.Timeout`` from ``Task.get``), always with a message, and a call
that raised left the pool as it was: its stats, cap, queue and tasks.

Which arguments are valid is stated here once per function, from its docstring, and the
test checks both ways: an invalid one is refused, a valid one accepted.
"""

from __future__ import annotations

import contextvars
import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import gevent
import pytest
from gevent import subprocess
from gevent.event import Event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ggopool
from ggopool import Config
from tests.subprocess_helpers import run_python

FUZZ = settings(
    derandomize=True,
    database=None,
    max_examples=150,
    deadline=None,
    # The conftest's autouse fixtures (hub error recorder, default pool reset) hold for
    # the whole test, across examples, which is what they are for.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def noop(*args: object, **kwargs: object) -> None:
    return None


#: Harmless callables: a task that calls one with odd arguments may raise, which the
#: subject pool's panic handler takes; none has a side effect.
CALLABLES = st.sampled_from([noop, int, str, len, repr, ggopool.default_pool, object])

ANY: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-3, 3),
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.complex_numbers(),
    st.decimals(),
    st.fractions(),
    st.lists(st.integers(), max_size=3),
    st.tuples(st.integers()),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sampled_from([bytearray, frozenset, timedelta, set]).flatmap(st.from_type),
    st.builds(range, st.integers(-3, 3), st.integers(-3, 5)),
    st.sampled_from(
        [object(), Config(), contextvars.Context(), Event(), Ellipsis, NotImplemented, type]
    ),
    CALLABLES,
)


def is_real(value: object) -> bool:
    return isinstance(value, (int, float, Decimal, Fraction)) and not isinstance(value, bool)


def valid_timeout(value: object) -> bool:
    """`Pool.join`'s and the others' rule: None, or int/float seconds >= 0, not NaN."""
    if value is None:
        return True
    if type(value) is bool or not isinstance(value, (int, float)):
        return False
    return not math.isnan(value) and value >= 0


#: Timeouts that do not block: anything but None and a positive number of seconds (which
#: would wait that long on a held task).
NON_BLOCKING_TIMEOUTS = ANY.filter(lambda t: not (valid_timeout(t) and (t is None or t > 0)))


def valid_int_at_least(value: object, minimum: int) -> bool:
    return type(value) is not bool and isinstance(value, int) and value >= minimum


def valid_idle_timeout(value: object) -> bool:
    if value is None:
        return True
    if type(value) is bool or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


def raised(
    fn: Callable[[], object],
    allowed: tuple[type[BaseException], ...] = (TypeError, ValueError),
) -> BaseException | None:
    """What ``fn()`` raised of ``allowed``, or None; anything else propagates."""
    try:
        fn()
    except allowed as exc:
        return exc
    return None


class Subject:
    """A pool with one task held running and one queued, and a panic handler that takes
    whatever a fuzzed task raises."""

    def __init__(self) -> None:
        self.handled: list[Exception] = []
        self.pool = ggopool.new_pool("bad-input", 1, Config(idle_timeout=None, max_pending=8))
        self.pool.set_panic_handler(self.on_panic)
        self.gate = Event()
        self.running = self.pool.submit(self.gate.wait)
        self.queued = self.pool.submit(noop)
        gevent.idle()

    def on_panic(self, ctx: contextvars.Context, exc: Exception) -> None:
        self.handled.append(exc)

    def snapshot(self) -> tuple[object, ...]:
        pool = self.pool
        return (
            pool.stats(),
            pool.cap,
            pool.task_count(),
            pool.worker_count(),
            pool.closed,
            self.running.ready(),
            self.queued.ready(),
        )

    def call(
        self,
        fn: Callable[[], object],
        allowed: tuple[type[BaseException], ...] = (TypeError, ValueError),
    ) -> BaseException | None:
        """Call ``fn``; if it raises, check the error is allowed, has a message, and left
        the pool as it was. Return what it raised."""
        before = self.snapshot()
        exc = raised(fn, allowed)
        if exc is not None:
            # gevent.Timeout from get(block=False) has no message, as in gevent.
            assert str(exc) or isinstance(exc, gevent.Timeout), repr(exc)
            assert self.snapshot() == before
        return exc

    def close(self) -> None:
        self.gate.set()
        self.pool.kill(timeout=None)


@contextmanager
def subject() -> Iterator[Subject]:
    s = Subject()
    try:
        yield s
    finally:
        s.close()


# -- making pools --------------------------------------------------------------------------


@FUZZ
@given(name=ANY | st.text(min_size=1, max_size=5), cap=ANY, config=ANY)
def test_new_pool(name: Any, cap: Any, config: Any) -> None:
    valid = (
        isinstance(name, str)
        and bool(name)
        and valid_int_at_least(cap, 1)
        and (config is None or isinstance(config, Config))
    )
    made: list[ggopool.Pool] = []
    exc = raised(lambda: made.append(ggopool.new_pool(name, cap, config)))
    assert (exc is None) == valid
    if exc is not None:
        assert str(exc)
    else:
        assert (made[0].name, made[0].cap) == (name, cap)


@FUZZ
@given(scale_threshold=ANY, idle_timeout=ANY, max_pending=ANY)
def test_config(scale_threshold: Any, idle_timeout: Any, max_pending: Any) -> None:
    valid = (
        valid_int_at_least(scale_threshold, 1)
        and valid_idle_timeout(idle_timeout)
        and (max_pending is None or valid_int_at_least(max_pending, 1))
    )
    exc = raised(
        lambda: Config(
            scale_threshold=scale_threshold, idle_timeout=idle_timeout, max_pending=max_pending
        )
    )
    assert (exc is None) == valid
    assert exc is None or str(exc)


# -- queueing ------------------------------------------------------------------------------


@FUZZ
@given(
    how=st.sampled_from(["go", "submit", "try_go", "ctx_go", "group"]),
    fn=ANY,
    ctx=ANY | st.just(contextvars.copy_context()),
    args=st.lists(ANY, max_size=3),
)
def test_queueing_a_task(how: str, fn: Any, ctx: Any, args: list[Any]) -> None:
    with subject() as s:
        pool = s.pool
        calls: dict[str, Callable[[], object]] = {
            "go": lambda: pool.go(fn, *args),
            "submit": lambda: pool.submit(fn, *args),
            "try_go": lambda: pool.try_go(fn, *args),
            "ctx_go": lambda: pool.ctx_go(ctx, fn, *args),
            "group": lambda: pool.group().go(fn, *args),
        }
        exc = s.call(calls[how])
        ctx_ok = how != "ctx_go" or isinstance(ctx, contextvars.Context)
        assert (exc is None) == (callable(fn) and ctx_ok)
        if exc is not None:
            assert type(exc) is TypeError
            assert str(exc).startswith("ctx must be" if not ctx_ok else "fn must be callable, got ")
        else:
            assert pool.task_count() == 2  # queued behind the held task and the queued one


@FUZZ
@given(fn=ANY, args=st.lists(ANY, max_size=2))
def test_module_level_go_ctx_go_and_spawn(fn: Any, args: list[Any]) -> None:
    pool = ggopool.default_pool()
    pool.set_panic_handler(noop)  # a fuzzed task may raise (the fixture resets it)
    before = pool.stats()
    fn_is_valid = callable(fn)
    for call, valid in (
        (lambda: ggopool.go(fn, *args), fn_is_valid),
        (lambda: ggopool.spawn(fn, *args), fn_is_valid),
        (lambda: ggopool.ctx_go(contextvars.copy_context(), fn, *args), fn_is_valid),
        (lambda: ggopool.ctx_go(fn, noop), isinstance(fn, contextvars.Context)),
    ):
        exc = raised(call, (TypeError,))
        if exc is not None:
            assert str(exc)
            assert pool.stats() == before
        else:
            assert valid
            gevent.idle()
            before = pool.stats()


# -- changing a pool ------------------------------------------------------------------------


@FUZZ
@given(cap=ANY | st.integers(1, 10))
def test_set_cap(cap: Any) -> None:
    with subject() as s:
        exc = s.call(lambda: s.pool.set_cap(cap))
        assert (exc is None) == valid_int_at_least(cap, 1)
        if exc is not None:
            assert str(exc) == f"cap must be an int >= 1, got {cap!r}"
        else:
            assert s.pool.cap == cap
    default = ggopool.default_pool()
    old = default.cap
    try:
        ggopool.set_cap(cap)
    except (TypeError, ValueError):
        assert default.cap == old
    else:
        assert default.cap == cap


@FUZZ
@given(handler=ANY)
def test_set_panic_handler(handler: Any) -> None:
    with subject() as s:
        exc = s.call(lambda: s.pool.set_panic_handler(handler))
        assert (exc is None) == (handler is None or callable(handler))
        if exc is not None:
            assert type(exc) is TypeError
            assert str(exc) == f"panic handler must be callable or None, got {handler!r}"
            # The old handler is still the one in use.
            s.pool.go(int, "not a number")
            s.gate.set()
            assert s.pool.join(timeout=None)
            assert [type(e) for e in s.handled] == [ValueError]
        exc2 = raised(lambda: ggopool.set_panic_handler(handler), (TypeError,))
        assert (exc2 is None) == (exc is None)
        assert exc2 is None or str(exc2)


@FUZZ
@given(cancel_on_error=ANY)
def test_group(cancel_on_error: Any) -> None:
    with subject() as s:
        exc = s.call(lambda: s.pool.group(cancel_on_error))
        assert (exc is None) == isinstance(cancel_on_error, bool)


# -- many at once ---------------------------------------------------------------------------


@FUZZ
@given(fn=ANY, iterable=ANY | st.lists(ANY, max_size=3))
def test_map_and_imap_unordered(fn: Any, iterable: Any) -> None:
    # A callable fn is swapped for noop: map raises what a task raises, by design.
    fn = noop if callable(fn) else fn
    try:
        items = list(iterable)
    except TypeError:
        items = None
    with subject() as s:
        s.gate.set()  # map waits for its tasks
        gevent.idle()
        for run in (
            lambda: s.pool.map(fn, iterable),
            lambda: list(s.pool.imap_unordered(fn, iterable)),
        ):
            exc = s.call(run)
            assert (exc is None) == (items is not None and callable(fn))
            if exc is not None:
                assert type(exc) is TypeError
            if not callable(fn):
                assert str(exc) == f"fn must be callable, got {fn!r}"


# -- the registry --------------------------------------------------------------------------

_names = itertools.count()


@FUZZ
@given(value=ANY)
def test_register_pool_and_get_pool(value: Any) -> None:
    exc = raised(lambda: ggopool.register_pool(value), (TypeError,))
    assert str(exc) == f"pool must be a ggopool.Pool, got {value!r}"
    found: list[ggopool.Pool | None] = []
    exc = raised(lambda: found.append(ggopool.get_pool(value)), (TypeError,))
    if exc is not None:
        assert not isinstance(value, str)
        assert str(exc) == f"name must be a str, got {value!r}"
    else:
        assert isinstance(value, str)
        assert found[0] is None or found[0].name == value


def test_registering_a_second_pool_under_a_name_changes_nothing() -> None:
    name = f"bad-input-{next(_names)}"
    first = ggopool.new_pool(name, 1)
    ggopool.register_pool(first)
    ggopool.register_pool(first)  # the same pool again is harmless
    with pytest.raises(ValueError, match=rf"^a pool named '{name}' is already registered$"):
        ggopool.register_pool(ggopool.new_pool(name, 2))
    assert ggopool.get_pool(name) is first


# -- Task handles and timeouts ---------------------------------------------------------------


@FUZZ
@given(
    method=st.sampled_from(
        ["get", "get_block", "result", "wait", "join", "kill", "pool_join", "pool_kill"]
    ),
    timeout=NON_BLOCKING_TIMEOUTS,
)
def test_timeouts_of_an_unfinished_task_and_pool(method: str, timeout: Any) -> None:
    valid = valid_timeout(timeout)
    if method.endswith("kill") and valid:
        return  # a valid timeout kills: not a rejected call
    with subject() as s:
        task, pool = s.running, s.pool
        calls: dict[str, Callable[[], object]] = {
            "get": lambda: task.get(timeout=timeout),
            "get_block": lambda: task.get(block=True, timeout=timeout),
            "result": lambda: task.result(timeout),
            "wait": lambda: task.wait(timeout),
            "join": lambda: task.join(timeout),
            "kill": lambda: task.kill(timeout=timeout),
            "pool_join": lambda: pool.join(timeout),
            "pool_kill": lambda: pool.kill(timeout),
        }
        # Task.get documents gevent.Timeout when the time is up.
        exc = s.call(calls[method], (TypeError, ValueError, gevent.Timeout))
        if valid:
            assert exc is None or isinstance(exc, gevent.Timeout)
            assert not isinstance(exc, gevent.Timeout) or method in ("get", "get_block", "result")
        else:
            assert isinstance(exc, (TypeError, ValueError)), exc
            assert str(exc) == f"timeout must be None or a number of seconds >= 0, got {timeout!r}"
        assert not task.ready()


@FUZZ
@given(callback=ANY)
def test_add_done_callback(callback: Any) -> None:
    with subject() as s:
        exc = s.call(lambda: s.running.add_done_callback(callback))
        assert (exc is None) == callable(callback)
        if exc is not None:
            assert str(exc) == f"fn must be callable, got {callback!r}"
        else:
            s.running.unlink(callback)


def test_a_bad_timeout_is_refused_before_anything_is_killed() -> None:
    with subject() as s:
        for call in (lambda: s.pool.kill("x"), lambda: s.running.kill(timeout="x")):  # type: ignore[arg-type]
            assert isinstance(s.call(call), TypeError)
            gevent.idle()
            assert not s.running.ready()
            assert not s.queued.ready()


NAN_SCRIPT = """
import gevent, ggopool
from gevent.event import Event
ggopool.set_exit_drain(None)  # the task below waits for good: no drain at exit
pool = ggopool.new_pool("p", 1)
task = pool.submit(Event().wait)
gevent.idle()
for call in (lambda: pool.join(float("nan")), lambda: task.get(timeout=float("nan"))):
    try:
        call()
    except ValueError as exc:
        print("ValueError:", exc)
"""


def test_a_nan_timeout_is_refused_not_a_hang() -> None:
    # In a subprocess: a NaN timer stops every gevent timer in its process.
    try:
        # Generous: the script takes well under a second, a hang is for ever.
        out = run_python(NAN_SCRIPT, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("pool.join(float('nan')) hung")
    assert out.stdout.count("ValueError: timeout") == 2, out.stderr
