"""A model of a pool, driven by hypothesis: every accepted task runs once, is queued or
running, or was cancelled, and `Pool.stats` counts it so, after every step.

The machine adds tasks (go, ctx_go, submit, try_go; from the hub when ``max_pending`` is
set, where a full queue raises instead of waiting), changes the cap, opens gates that
tasks wait on, kills and cancels tasks, kills, closes and joins the pool. Some tasks
swallow a kill (gevent's clean-up idiom) and some survive one, so that only a second kill
ends them; some fail into a panic handler that yields across steps, so that the
invariants are checked while it runs. It also attacks
it: tasks that fail with a deep traceback or with an exception whose repr raises, callables
whose repr raises, ``go()`` of another task's bound methods, exceptions of several types
thrown into workers that are parked, just woken, running a task or inside the panic
handler, kills racing retires (``set_cap``, ``close``) and ``Pool.kill`` racing
``Task.kill`` and ``set_cap``, and a hub whose ``handle_error`` raises.

After each step it lets every runnable greenlet run (``gevent.idle()``) and checks the pool
against the model: each task's state, the counts, the cap rule of `Pool.set_cap`, that no
dead worker sits on the free list, that queued tasks always have a worker, and that each
failure was reported once, where it should be.
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import Event
from greenlet import GreenletExit
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import ggopool
from ggopool import Config, PoolClosed, PoolFull
from tests.conftest import HubErrors
from tests.faulty import BrokenRepr, BrokenReprError, recurse

request_id: contextvars.ContextVar[int] = contextvars.ContextVar("model_request_id", default=-1)

#: "swallow": waits on its gate, and returns if killed (gevent's clean-up idiom).
KINDS = ("return", "raise", "yield", "gate", "raise_broken_repr", "swallow")
#: Exceptions thrown into workers: gevent.kill's default, any error, a stray Timeout.
THROWN: dict[str, Callable[[], BaseException]] = {
    "GreenletExit": GreenletExit,
    "ValueError": lambda: ValueError("thrown into a worker"),
    "Timeout": gevent.Timeout,
}
THROWN_NAMES = st.sampled_from(sorted(THROWN))
#: What a task does to another task's handle when it is run as that handle's bound method.
METHOD_OPS = ("cancel", "kill", "ready")
GATES = 3

#: 400 examples of up to 50 steps each, per pool kind.
MODEL_SETTINGS = settings(
    derandomize=True,
    database=None,
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(eq=False, repr=False)
class Rec:
    """One accepted task, as the model sees it."""

    ident: int
    kind: str
    via: str
    gate: Event  # the gate as it was when the task was added
    ctx_value: int
    handle: ggopool.Task[int] | None = None
    starts: int = 0
    worker: Any = None  # the greenlet that ran it
    # queued -> running -> returned | raised | killed; queued -> cancelled
    state: str = "queued"
    seen_ctx: list[int] = field(default_factory=list)
    exc: BaseException | None = None  # what it raised (raised)
    hold: Event | None = None  # the panic handler waits on it (raise_hold)
    shots: int = 0  # kills it survived (undead)
    target: Rec | None = None  # whose handle it calls a method of (method)

    def __repr__(self) -> str:
        return f"<task {self.ident} {self.kind} via {self.via}: {self.state}>"


def free_list(pool: ggopool.Pool) -> list[Any]:
    """The greenlets of the pool's parked workers, the most recently parked last."""
    return [getattr(worker, "greenlet", worker) for worker in pool._parked]


#: How long a wait that hangs on a broken pool is given before the example fails.
HANG = 5.0

#: Each model test's bound (the conftest's is 60 s). Measured on 2 cores, CPython 3.11.7:
#: about 20 s of CPU per test, 45 s under coverage, and twice that in wall-clock time when
#: other work shares the machine.
TEST_TIMEOUT = 240.0


class PoolModel(RuleBasedStateMachine):
    #: Set by the test function: the conftest's recorder of errors that reach the hub.
    hub_errors: HubErrors
    #: What the pools are made with (set by the test function too).
    idle_timeouts: tuple[float | None, ...] = (None,)
    max_pendings: st.SearchStrategy[int | None] = st.none()

    def __repr__(self) -> str:
        # Short: a task's callable holds the machine, and reprs of tasks are taken often.
        return "<PoolModel>"

    def __init__(self) -> None:
        super().__init__()
        self.pool: ggopool.Pool | None = None
        self.recs: list[Rec] = []
        self.gates = [Event() for _ in range(GATES)]
        self.rejected = 0
        self.closed = False
        self.max_pending: int | None = None
        self.max_idle: int | None = None
        self.handler_seen: list[BaseException] = []
        self.use_handler = False
        # Tasks running when the cap was last set: only their workers may be above it.
        self.allowed_over_cap: set[int] = set()
        # Tasks cancelled while queued: their entries may still take room in the queue.
        self.cancelled_entries = 0
        # What the hub must have been told of besides go() tasks' failures: exceptions
        # thrown into workers outside a task, or into the panic handler.
        self.thrown_reported: list[BaseException] = []
        self.reported: list[BaseException] = []
        self.hub = gevent.get_hub()
        self.hub_raises = False  # the hub's handle_error records, then raises
        # Failed tasks whose panic handler is waiting on their hold (it yields).
        self.in_handler: set[Rec] = set()
        self.last_stats: ggopool.PoolStats | None = None
        self.raised_by: dict[int, Rec] = {}  # id(exception) -> the task that raised it

    # -- the task body -----------------------------------------------------------------

    def started(self, rec: Rec) -> None:
        rec.starts += 1
        rec.state = "running"
        rec.worker = gevent.getcurrent()
        rec.seen_ctx.append(request_id.get())

    def body(self, rec: Rec, *_: object) -> int:
        self.started(rec)
        try:
            if rec.kind in ("raise", "raise_hold"):
                raise ValueError(f"task {rec.ident}")
            if rec.kind == "raise_broken_repr":
                raise BrokenReprError
            if rec.kind == "recurse":
                recurse(0)
            if rec.kind == "yield":
                gevent.sleep(0)
            elif rec.kind == "gate":
                rec.gate.wait()
            elif rec.kind == "swallow":
                try:
                    rec.gate.wait()
                except GreenletExit:
                    rec.state = "returned"  # cleaned up, and returns its value
                    return rec.ident
            elif rec.kind == "undead":
                # Survives its first kill; each kill is a new one, so the second ends it.
                while not rec.gate.ready():
                    try:
                        rec.gate.wait()
                    except BaseException:
                        rec.shots += 1
                        if rec.shots > 1:
                            raise
        except GreenletExit:
            rec.state = "killed"
            raise
        except BaseException as exc:
            # Its own failure, or one thrown into its worker while it waited.
            rec.state = "raised"
            rec.exc = exc
            self.raised_by[id(exc)] = rec
            raise
        rec.state = "returned"
        return rec.ident

    def method_body(self, rec: Rec, op: str, handle: ggopool.Task[int]) -> int:
        # Run as a bound method of another task's handle: fn.__self__ is that Task.
        self.started(rec)
        target = rec.target
        assert target is not None
        assert handle is target.handle
        was_queued = target.state == "queued"
        if op == "cancel":
            assert handle.cancel() is (target.state in ("queued", "cancelled"))
        elif op == "kill":
            handle.kill(block=False)  # a running target gets GreenletExit a moment later
        else:
            assert handle.ready() is (target.state not in ("queued", "running"))
        if was_queued and op != "ready":
            target.state = "cancelled"
            self.cancelled_entries += 1
        rec.state = "returned"
        return rec.ident

    def on_panic(self, ctx: contextvars.Context, exc: Exception) -> None:
        self.handler_seen.append(exc)
        rec = self.raised_by[id(exc)]  # (a task added from the hub may not be in recs yet)
        if rec.hold is not None and not rec.hold.is_set():
            self.in_handler.add(rec)
            try:
                rec.hold.wait()
            finally:
                self.in_handler.discard(rec)

    def handle_error(self, context: Any, type_: Any, value: Any, tb: Any) -> None:
        """The hub's handle_error while the machine runs: the conftest's recorder, and then
        an exception when the machine says the hub's handler is broken."""
        self.hub_errors.handle_error(context, type_, value, tb)
        if self.hub_raises:
            raise OSError("handle_error is broken")

    # -- setup -------------------------------------------------------------------------

    @initialize(data=st.data())
    def make_pool(self, data: st.DataObject) -> None:
        cap = data.draw(st.integers(1, 4), "cap")
        threshold = data.draw(st.integers(1, 3), "scale_threshold")
        idle_timeout = data.draw(st.sampled_from(self.idle_timeouts), "idle_timeout")
        max_pending = data.draw(self.max_pendings, "max_pending")
        self.use_handler = data.draw(st.booleans(), "use_handler")
        extra: dict[str, Any] = {}
        if "max_idle" in Config.__dataclass_fields__:
            self.max_idle = data.draw(st.none() | st.integers(0, 3), "max_idle")
            extra["max_idle"] = self.max_idle
        config = Config(
            scale_threshold=threshold, idle_timeout=idle_timeout, max_pending=max_pending, **extra
        )
        self.pool = ggopool.new_pool("model", cap, config)
        self.max_pending = max_pending
        if self.use_handler:
            self.pool.set_panic_handler(self.on_panic)
        self.hub.handle_error = self.handle_error  # type: ignore[method-assign,assignment]

    @property
    def p(self) -> ggopool.Pool:
        assert self.pool is not None
        return self.pool

    def by_state(self, *states: str) -> list[Rec]:
        return [r for r in self.recs if r.state in states]

    def parked(self) -> list[Any]:
        return [] if self.pool is None else free_list(self.pool)

    # -- adding tasks --------------------------------------------------------------------

    def _add(
        self,
        via: str,
        kind: str,
        gate: int,
        broken_repr: bool = False,
        before: Callable[[], object] | None = None,
        target: Rec | None = None,
        op: str = "",
    ) -> Rec | None:
        """Add a task; the Rec if the pool accepted it. ``before`` runs just before, in the
        same greenlet and the same turn (in the hub when adding from there)."""
        rec = Rec(len(self.recs), kind, via, self.gates[gate], ctx_value=1000 + len(self.recs))
        pool = self.p
        fn: Callable[[], object]
        if kind == "method":
            assert target is not None
            assert target.handle is not None
            rec.target = target
            fn = types.MethodType(functools.partial(self.method_body, rec, op), target.handle)
        elif broken_repr:
            fn = functools.partial(self.body, rec, BrokenRepr())
        else:
            fn = functools.partial(self.body, rec)
        if kind == "raise_hold":
            rec.hold = Event()

        def add() -> None:
            if before is not None:
                before()
            token = request_id.set(rec.ctx_value)
            try:
                if via == "go":
                    pool.go(fn)
                elif via == "ctx_go":
                    ctx = contextvars.copy_context()
                    request_id.set(-2)  # ctx_go runs in ctx, not in the caller's context
                    pool.ctx_go(ctx, fn)
                elif via == "submit":
                    rec.handle = pool.submit(fn)
                else:
                    assert via == "try_go"
                    if not pool.try_go(fn):
                        raise PoolFull("try_go returned False")
            finally:
                request_id.reset(token)

        queued_low = len(self.by_state("queued"))
        queued_high = queued_low + self.cancelled_entries
        outcome = self._call(add, from_hub=self.max_pending is not None and via != "try_go")
        if self.closed:
            assert isinstance(outcome, PoolClosed), outcome
            assert str(outcome) == "pool 'model' is closed: it accepts no new tasks"
            self.rejected += 1
        elif isinstance(outcome, PoolFull):
            assert self.max_pending is not None
            assert queued_high >= self.max_pending
            self.rejected += 1
        else:
            assert outcome is None, outcome
            assert self.max_pending is None or queued_low < self.max_pending
            if rec.handle is not None:
                assert isinstance(repr(rec.handle), str)  # whatever the callable's repr does
            self.recs.append(rec)
            return rec
        return None

    def _call(self, fn: Callable[[], None], from_hub: bool) -> BaseException | None:
        """Run ``fn`` here or in the hub (where a full queue raises instead of waiting);
        return what it raised."""
        result: list[BaseException | None] = []

        def run() -> None:
            try:
                fn()
            except (PoolFull, PoolClosed) as exc:
                result.append(exc)
            else:
                result.append(None)

        if from_hub:
            self.hub.loop.run_callback(run)
            gevent.idle()
        else:
            run()
        [outcome] = result
        return outcome

    # One rule per way in, so that adding is drawn four times as often as closing.
    @rule(kind=st.sampled_from(KINDS), gate=st.integers(0, GATES - 1), broken=st.booleans())
    def go(self, kind: str, gate: int, broken: bool) -> None:
        self._add("go", kind, gate, broken)

    @rule(kind=st.sampled_from(KINDS), gate=st.integers(0, GATES - 1), broken=st.booleans())
    def ctx_go(self, kind: str, gate: int, broken: bool) -> None:
        self._add("ctx_go", kind, gate, broken)

    @rule(kind=st.sampled_from(KINDS), gate=st.integers(0, GATES - 1), broken=st.booleans())
    def submit(self, kind: str, gate: int, broken: bool) -> None:
        self._add("submit", kind, gate, broken)

    @rule(kind=st.sampled_from(KINDS), gate=st.integers(0, GATES - 1), broken=st.booleans())
    def try_go(self, kind: str, gate: int, broken: bool) -> None:
        self._add("try_go", kind, gate, broken)

    @precondition(lambda self: not any(r.kind == "recurse" for r in self.recs))
    @rule(via=st.sampled_from(["go", "ctx_go", "try_go", "submit"]), broken=st.booleans())
    def add_task_failing_with_a_deep_traceback(self, via: str, broken: bool) -> None:
        # Infinite recursion: a RecursionError whose traceback is thousands of frames deep.
        # A rule of its own, once per example: it costs more than all the other tasks
        # together (most of it in gevent keeping a submitted task's traceback).
        self._add(via, "recurse", 0, broken)

    @precondition(lambda self: any(r.handle is not None for r in self.recs))
    @rule(data=st.data(), op=st.sampled_from(METHOD_OPS))
    def go_a_task_method(self, data: st.DataObject, op: str) -> None:
        # pool.go(task.cancel) and the like: to the pool, a task like any other.
        target = data.draw(st.sampled_from([r for r in self.recs if r.handle is not None]))
        self._add("go", "method", 0, target=target, op=op)

    @precondition(lambda self: not self.closed and any(r.handle is not None for r in self.recs))
    @rule(data=st.data(), ops=st.lists(st.sampled_from(METHOD_OPS), min_size=1, max_size=3))
    def kill_pool_with_task_methods_queued(self, data: st.DataObject, ops: list[str]) -> None:
        # Pool.kill() must tell a submitted task's entry from go(task.cancel) and the like:
        # held behind workers busy at the cap, they are plain tasks it cancels.
        for _ in range(self.p.cap):
            if len(self.by_state("running")) >= self.p.cap:
                break
            self._add("go", "gate", 0)
            gevent.idle()
        targets = [r for r in self.recs if r.handle is not None]
        for op in ops:
            self._add("go", "method", 0, target=data.draw(st.sampled_from(targets)), op=op)
        self._kill_pool()

    # -- changing the pool ----------------------------------------------------------------

    def busy(self) -> set[int]:
        """The tasks whose worker is awake: running, or failed and in a held panic handler."""
        return {r.ident for r in self.by_state("running")} | {r.ident for r in self.in_handler}

    @rule(cap=st.integers(1, 4))
    def set_cap(self, cap: int) -> None:
        self.allowed_over_cap = self.busy()
        self.p.set_cap(cap)
        assert self.p.cap == cap

    @precondition(lambda self: len(self.by_state("running")) >= 2)
    @rule(data=st.data())
    def lower_cap_below_running(self, data: st.DataObject) -> None:
        # The case set_cap's rule is about, drawn on purpose: it is rare by chance.
        self.set_cap(data.draw(st.integers(1, len(self.by_state("running")) - 1)))

    @rule(gate=st.integers(0, GATES - 1))
    def open_gate(self, gate: int) -> None:
        # Tasks waiting on this gate go on; later ones wait on a new, closed one.
        opened, self.gates[gate] = self.gates[gate], Event()
        opened.set()

    def killable(self) -> list[Rec]:
        """Running tasks with a handle that end at their first kill."""
        return [r for r in self.by_state("running") if r.handle and r.kind != "undead"]

    @precondition(lambda self: bool(self.killable()))
    @rule(data=st.data(), racing_pool_kill=st.booleans())
    def kill_running_task(self, data: st.DataObject, racing_pool_kill: bool) -> None:
        rec = data.draw(st.sampled_from(self.killable()))
        assert rec.handle is not None
        assert rec.handle.cancel() is False
        if racing_pool_kill:
            # The task's kill begins just before the pool's GreenletExit lands in its worker.
            self.hub.loop.run_callback(functools.partial(rec.handle.kill, block=False))
            self._kill_pool()
        else:
            with gevent.Timeout(HANG, AssertionError("Task.kill() hung")):
                rec.handle.kill()
        if rec.kind == "swallow":
            assert rec.state == "returned"  # it caught the kill, cleaned up and returned
            assert rec.handle.get(block=False) == rec.ident
        else:
            assert rec.state == "killed"
            assert isinstance(rec.handle.value, GreenletExit)

    @precondition(lambda self: not self.closed)
    @rule(gate=st.integers(0, GATES - 1))
    def submit_undead(self, gate: int) -> None:
        # A task that survives a kill (gevent's Undead): only a second kill, or its gate, ends it.
        self._add("submit", "undead", gate)

    @precondition(lambda self: any(r.kind == "undead" for r in self.by_state("running")))
    @rule(data=st.data(), second=st.sampled_from(["GreenletExit", "ValueError"]))
    def kill_undead_twice(self, data: st.DataObject, second: str) -> None:
        undead = [r for r in self.by_state("running") if r.kind == "undead"]
        rec = data.draw(st.sampled_from(undead))
        assert rec.handle is not None
        if rec.shots == 0:
            rec.handle.kill(block=False)
            gevent.idle()
            assert rec.shots == 1
            assert rec.state == "running"  # it survived
        exc = THROWN[second]()
        with gevent.Timeout(HANG, AssertionError("the second Task.kill() hung")):
            rec.handle.kill(exc)  # a new kill, with its own exception, which ends it
        assert rec.shots == 2
        if second == "GreenletExit":
            assert rec.state == "killed"
        else:
            assert rec.state == "raised"
            assert rec.exc is exc

    @precondition(lambda self: self.use_handler and not self.closed)
    @rule(via=st.sampled_from(["go", "ctx_go", "try_go"]))
    def fail_with_a_handler_that_yields(self, via: str) -> None:
        # The handler logs over the network: it waits, across the next steps, until
        # release_handlers (or a kill) lets it go; the invariants are checked meanwhile.
        self._add(via, "raise_hold", 0)

    @precondition(lambda self: bool(self.in_handler))
    @rule()
    def release_handlers(self) -> None:
        released = set(self.in_handler)
        for rec in released:
            assert rec.hold is not None
            rec.hold.set()
        gevent.idle()
        assert not released & self.in_handler  # (a queued one may be in its handler now)

    @rule()
    def open_all_gates(self) -> None:
        for gate in range(GATES):
            self.open_gate(gate)

    @precondition(lambda self: any(r.handle is not None for r in self.by_state("queued")))
    @rule(data=st.data(), kill=st.booleans())
    def cancel_queued_task(self, data: st.DataObject, kill: bool) -> None:
        rec = data.draw(st.sampled_from([r for r in self.by_state("queued") if r.handle]))
        assert rec.handle is not None
        if kill:
            rec.handle.kill()  # a queued task is cancelled
        else:
            assert rec.handle.cancel() is True
        assert rec.handle.cancelled()
        assert rec.handle.ready()
        rec.state = "cancelled"
        self.cancelled_entries += 1

    @rule(racing_set_cap=st.none() | st.integers(1, 4))
    def kill_pool(self, racing_set_cap: int | None) -> None:
        if racing_set_cap is None:
            self._kill_pool()
            return
        # set_cap runs in the hub after Pool.kill queued its throws, before they land.
        self.hub.loop.run_callback(self.p.set_cap, racing_set_cap)
        self._kill_pool()
        gevent.idle()  # (a kill with no worker to wait for returns before set_cap ran)
        assert self.p.cap == racing_set_cap
        self.allowed_over_cap = set()

    def _kill_pool(self) -> None:
        undead = [r for r in self.by_state("running") if r.kind == "undead"]
        if undead:
            # Its pool's kill is one kill: the task survives it, and a second Pool.kill
            # would not hit it again (gevent's Group.kill); a Task.kill is a new kill.
            self.p.kill(block=False)
            gevent.idle()
            for rec in undead:
                if rec.state == "running":
                    assert rec.shots == 1
                    assert rec.handle is not None
                    with gevent.Timeout(HANG, AssertionError("Task.kill() hung")):
                        rec.handle.kill()
                    assert rec.state == "killed"
        with gevent.Timeout(HANG, AssertionError("Pool.kill() hung")):
            assert self.p.kill(timeout=None) is True
        for rec in self.by_state("queued"):
            rec.state = "cancelled"
        self.cancelled_entries = 0
        assert not self.by_state("running")  # each got GreenletExit: now "killed"
        assert self.p.worker_count() == 0

    @precondition(lambda self: len(self.recs) >= 6)
    @rule()
    def close(self) -> None:
        self.p.close()
        self.closed = True

    @rule()
    def join(self) -> None:
        self.open_all_gates()
        for rec in self.recs:
            if rec.hold is not None:
                rec.hold.set()  # join() waits for the panic handlers too
        with gevent.Timeout(HANG, AssertionError("join() hung")):
            assert self.p.join() is True
        assert not self.by_state("queued", "running")

    @rule()
    def toggle_hub_raises(self) -> None:
        # An application's handle_error that raises (or a report to a broken stderr).
        self.hub_raises = not self.hub_raises

    # -- exceptions thrown into workers, and kills racing each other -------------------------

    def _throw(self, worker: Any, thrown: str) -> BaseException:
        """Queue ``thrown`` into ``worker`` as gevent.kill does; an error other than
        GreenletExit that ends a worker outside a task is reported through the hub."""
        exc = THROWN[thrown]()
        if not isinstance(exc, GreenletExit):
            self.thrown_reported.append(exc)
        gevent.kill(worker, exc)
        return exc

    @precondition(lambda self: bool(self.parked()))
    @rule(
        data=st.data(),
        thrown=THROWN_NAMES,
        then=st.sampled_from(["nothing", "go", "set_cap", "close", "kill"]),
    )
    def throw_into_parked_workers(self, data: st.DataObject, thrown: str, then: str) -> None:
        # The exceptions are queued, as gevent.kill queues them. Then, before they land:
        # nothing (they hit parked workers); a go() that wakes the most recently parked
        # (it is hit just woken); a retire (set_cap, close) or Pool.kill that takes them
        # off the free list and uncounts them.
        parked = self.parked()
        if then == "go":
            victims = parked[-1:]  # the one go() wakes
        else:
            victims = data.draw(st.lists(st.sampled_from(parked), min_size=1, unique=True))

        def throw() -> None:
            for worker in victims:
                self._throw(worker, thrown)

        if then == "go" and not self.closed:
            kind = data.draw(st.sampled_from(KINDS))
            self._add("go", kind, data.draw(st.integers(0, GATES - 1)), before=throw)
        else:
            throw()
            if then == "kill":
                self._kill_pool()
            elif then == "close" and len(self.recs) >= 6:
                self.close()
            elif then == "set_cap":
                self.set_cap(data.draw(st.integers(1, 4)))
        gevent.idle()
        assert all(worker.dead for worker in victims)

    @precondition(lambda self: any(r.kind != "undead" for r in self.by_state("running")))
    @rule(data=st.data(), thrown=THROWN_NAMES)
    def throw_into_running_worker(self, data: st.DataObject, thrown: str) -> None:
        # GreenletExit ends the task (killed) and its worker, and another takes the queue
        # (a task that swallows it returns, and its worker goes on); any other exception
        # is the task's failure, and the worker goes on.
        rec = data.draw(
            st.sampled_from([r for r in self.by_state("running") if r.kind != "undead"])
        )
        assert rec.worker is not None
        exc = THROWN[thrown]()
        gevent.kill(rec.worker, exc)
        gevent.idle()
        if isinstance(exc, GreenletExit):
            assert rec.state == ("returned" if rec.kind == "swallow" else "killed")
        else:
            assert rec.state == "raised"
            assert rec.exc is exc

    @precondition(lambda self: self.use_handler and not self.closed)
    @rule(thrown=THROWN_NAMES)
    def throw_into_worker_in_panic_handler(self, thrown: str) -> None:
        rec = self._add("go", "raise_hold", 0)
        gevent.idle()
        if rec is None:
            return
        assert rec.hold is not None
        if rec in self.in_handler:
            # GreenletExit ends the worker; any other exception is the handler's failure,
            # reported through the hub, and the worker goes on.
            exc = THROWN[thrown]()
            if not isinstance(exc, GreenletExit):
                self.thrown_reported.append(exc)
            gevent.kill(rec.worker, exc)
            gevent.idle()
            assert rec not in self.in_handler
        rec.hold.set()  # if it is still queued, its handler will not wait

    # -- after every step ---------------------------------------------------------------

    @invariant()
    def matches_the_model(self) -> None:
        if self.pool is None:
            return
        gevent.idle()
        pool = self.pool
        s = pool.stats()
        for rec in self.recs:
            if rec.state in ("queued", "cancelled"):
                assert rec.starts == 0, rec
            else:
                assert rec.starts == 1, rec
                assert rec.seen_ctx == [rec.ctx_value], rec
            if rec.handle is not None:
                self.check_handle(rec, rec.handle)
        n = {state: len(self.by_state(state)) for state in ("queued", "running", "cancelled")}
        completed = len(self.by_state("returned", "killed"))
        failed = len(self.by_state("raised"))
        assert (s.submitted, s.completed, s.failed, s.cancelled, s.running, s.pending) == (
            len(self.recs),
            completed,
            failed,
            n["cancelled"],
            n["running"],
            n["queued"],
        ), s
        assert s.submitted == s.completed + s.failed + s.cancelled + s.running + s.pending
        assert s.rejected == self.rejected
        # Every count stats() exports as a count never goes down (Prometheus counters).
        last = self.last_stats
        if last is not None:
            for name in ("submitted", "completed", "failed", "cancelled", "rejected"):
                assert getattr(s, name) >= getattr(last, name), (name, last, s)
        self.last_stats = s
        assert pool.task_count() == n["queued"]
        assert s.workers == pool.worker_count()
        assert pool.worker_count() >= 0, s
        # The free list holds live parked workers only: none that died or was retired.
        parked = free_list(pool)
        assert len(parked) == s.idle, (parked, s)
        assert not [worker for worker in parked if worker.dead], parked
        if self.max_idle is not None:
            assert s.idle <= self.max_idle, s
        # Every awake worker is inside a task, or in the panic handler of a failed one (done,
        # not running): none was left woken and not running.
        assert s.workers - s.idle == n["running"] + len(self.in_handler), s
        # set_cap: parked workers above the cap exit at once; running ones after their
        # current task. So only workers running a task since the cap was set are above it.
        still_allowed = self.busy() & self.allowed_over_cap
        assert n["running"] <= s.cap + len(still_allowed), (s, still_allowed)
        assert s.workers <= s.cap + len(still_allowed), (s, still_allowed)
        if s.workers > s.cap:
            assert s.idle == 0, s
        if self.closed or pool.config.idle_timeout == 0:
            assert s.idle == 0, s  # such workers never park
        if n["queued"]:
            # Liveness: queued tasks never wait without a worker (one in a handler counts).
            assert n["running"] + len(self.in_handler) > 0, s
        self.check_failures()

    def check_handle(self, rec: Rec, task: ggopool.Task[int]) -> None:
        if rec.state in ("queued", "running"):
            assert not task.ready()
        elif rec.state == "cancelled":
            assert task.cancelled()
            assert task.ready()
        elif rec.state == "returned":
            assert task.get(block=False) == rec.ident
        elif rec.state == "raised":
            assert task.ready()
            assert task.exception is rec.exc
        else:
            assert isinstance(task.value, GreenletExit)

    def check_failures(self) -> None:
        # A go/ctx_go/try_go task's Exception goes to the panic handler, if there is one;
        # its other failures to the hub, once each; a submitted one's only to get().
        # Each report names the pool, and formatting it never raises.
        for context, type_, value in self.hub_errors.take():
            assert "'model'" in repr(context), (context, type_, value)
            assert getattr(context, "pool", self.pool) is self.pool, context
            assert type_ is type(value), (context, type_, value)
            self.reported.append(value)
        failures = [r.exc for r in self.by_state("raised") if r.handle is None]
        handled = [e for e in failures if self.use_handler and isinstance(e, Exception)]
        to_hub = [e for e in failures if e not in handled] + self.thrown_reported
        assert sorted(map(id, self.handler_seen)) == sorted(map(id, handled))
        assert sorted(map(id, self.reported)) == sorted(map(id, to_hub)), (self.reported, to_hub)

    def teardown(self) -> None:
        try:
            if self.pool is not None:
                for gate in self.gates:
                    gate.set()
                for rec in self.recs:
                    if rec.hold is not None:
                        rec.hold.set()
                self.hub_raises = False
                self.pool.kill(timeout=None)
                gevent.idle()
        finally:
            self.hub.handle_error = self.hub_errors.handle_error  # type: ignore[method-assign,assignment]
            # What an example that failed midway left behind is not the next example's.
            self.hub_errors.take()


def run_model(
    hub_errors: HubErrors,
    idle_timeouts: tuple[float | None, ...],
    max_pendings: st.SearchStrategy[int | None],
) -> None:
    PoolModel.hub_errors = hub_errors
    PoolModel.idle_timeouts = idle_timeouts
    PoolModel.max_pendings = max_pendings
    run_state_machine_as_test(PoolModel, settings=MODEL_SETTINGS)


def test_pool_with_parked_workers_matches_its_model(hub_errors: HubErrors) -> None:
    run_model(hub_errors, (None,), st.none())


def test_pool_whose_workers_never_park_matches_its_model(hub_errors: HubErrors) -> None:
    run_model(hub_errors, (0,), st.none())


def test_bounded_pool_matches_its_model(hub_errors: HubErrors) -> None:
    # Tasks are added from the hub, where a full queue raises PoolFull instead of waiting.
    run_model(hub_errors, (None, 0), st.integers(1, 4))


# -- spawn_later, drains, forks and other threads' hand-overs ---------------------------------

#: Delays of spawn_later: due at once, soon, or long after any drain's deadline here.
LATER_DELAYS = (0.0, 0.001, 0.01, 60.0)
LATER_SETTINGS = settings(
    derandomize=True,
    database=None,
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class LaterModel(RuleBasedStateMachine):
    """``ggopool.spawn_later`` tasks and tasks handed over by real threads, against a model:
    each runs once (in this process; never in a forked child), a cancelled one never, and
    the drain returns True only once every one due within its deadline has run."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = ggopool.new_pool("later-model", 2)
        self.ran: list[int] = []
        self.later: dict[int, tuple[ggopool.Task[None], float]] = {}  # id: (handle, delay)
        self.cancelled: set[int] = set()
        self.cancel_tried: set[int] = set()  # cancelled, or tried once it had run
        self.handed: set[int] = set()  # ids handed over by other threads
        self.next_id = 0

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def waiting(self) -> list[int]:
        return [i for i, (task, _) in self.later.items() if not task.ready()]

    @rule(delay=st.sampled_from(LATER_DELAYS))
    def spawn_later(self, delay: float) -> None:
        i = self.new_id()
        self.later[i] = (ggopool.spawn_later(delay, self.ran.append, i), delay)

    def not_cancelled_yet(self) -> list[int]:
        """The tasks no `cancel` step has tried to cancel, whether their time came or not."""
        return [i for i in self.later if i not in self.cancel_tried]

    # What a step may draw must not depend on the clock: hypothesis replays each example's
    # choices, and a task due in 1 ms may have run on one run and not on the next.
    @precondition(lambda self: bool(self.not_cancelled_yet()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self.not_cancelled_yet()))
        self.cancel_tried.add(i)
        task = self.later[i][0]
        if task.ready():
            assert not task.cancel()  # it ran: too late to cancel
            assert i in self.ran
        else:
            assert task.cancel()  # waiting for its time, or queued: it never runs now
            self.cancelled.add(i)

    @rule(n=st.integers(1, 3))
    def go_from_a_thread(self, n: int) -> None:
        ids = [self.new_id() for _ in range(n)]

        def other_thread() -> None:
            for i in ids:
                self.pool.go(self.ran.append, i)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join(10)  # a real join: the hub does not run meanwhile
        assert not t.is_alive()
        self.handed.update(ids)

    @rule()
    def let_the_loop_run(self) -> None:
        gevent.sleep(0.002)

    # Only tasks due in 60 s are late, and each waits until it is cancelled.
    @precondition(lambda self: all(self.later[i][1] < 1 for i in self.not_cancelled_yet()))
    @rule()
    def drain_without_a_deadline(self) -> None:
        assert ggopool.drain(30)
        self.check_everything_due_ran()

    @rule()
    def drain_with_a_deadline(self) -> None:
        late = [i for i in self.waiting() if self.later[i][1] > 1]
        assert ggopool.drain(1.0) is not bool(late)  # False at once when only late ones are left
        self.check_everything_due_ran()
        assert sorted(self.waiting()) == sorted(late)

    def check_everything_due_ran(self) -> None:
        for i, (task, delay) in self.later.items():
            if i not in self.cancelled and delay < 1:
                assert task.successful(), task
                assert i in self.ran
        assert self.handed <= set(self.ran)

    @rule()
    def fork(self) -> None:
        waiting = self.waiting()
        gevent.get_hub().loop.install_sigchld()  # see tests/test_threads_fork.py
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                # The parent's waiting tasks are cancelled here, and nothing of the parent's
                # runs in the child, whatever the drain waits for.
                ran_before = list(self.ran)
                seen = [all(self.later[i][0].cancelled() for i in waiting)]
                seen.append(not ggopool.default_pool()._later)
                seen.append(ggopool.drain(5))
                seen.append(self.ran == ran_before)
                code = 0 if all(seen) else 3
                if code:
                    os.write(2, f"child: {seen}\n".encode())
            except BaseException as exc:  # noqa: BLE001 - the child says why it failed
                os.write(2, f"child: {exc!r}\n".encode())
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert status == 0

    @invariant()
    def each_task_ran_at_most_once_and_no_cancelled_one(self) -> None:
        gevent.idle()
        assert len(self.ran) == len(set(self.ran))
        assert not self.cancelled & set(self.ran)
        waiting = {self.later[i][0] for i in self.waiting()}
        # Waiting for their time: exactly those the drain counts (a fired one is queued).
        assert set(ggopool.default_pool()._later) <= waiting
        s = self.pool.stats()
        assert s.submitted == s.completed + s.failed + s.cancelled + s.running + s.pending

    def teardown(self) -> None:
        for task, _ in self.later.values():
            task.cancel()
        ggopool.drain(5)


def test_spawn_later_drains_forks_and_threads_match_the_model() -> None:
    run_state_machine_as_test(LaterModel, settings=LATER_SETTINGS)
