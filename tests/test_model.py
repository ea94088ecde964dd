"""A model of a pool, driven by hypothesis: every accepted task runs once, is queued or
running, or was cancelled, and `Pool.stats` counts it so, after every step.

The machine adds tasks (go, ctx_go, submit, try_go; from the hub when ``max_pending`` is
set, where a full queue raises instead of waiting), changes the cap, opens gates that
tasks wait on, kills and cancels tasks, kills, closes and joins the pool. After each step
it lets every runnable greenlet run (``gevent.idle()``) and checks the pool against the
model: each task's state, the counts, the cap rule of `Pool.set_cap`, the errors that
reached the hub.
"""

from __future__ import annotations

import contextvars
import functools
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
from ggopool import Config, FailedTask, PoolClosed, PoolFull
from tests.conftest import HubErrors

request_id: contextvars.ContextVar[int] = contextvars.ContextVar("model_request_id", default=-1)

KINDS = ("return", "raise", "yield", "gate")
GATES = 3

#: Sized to run in well under the 60 s per-test timeout on a busy 2-core machine.
MODEL_SETTINGS = settings(
    derandomize=True,
    database=None,
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(eq=False)
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


class PoolModel(RuleBasedStateMachine):
    #: Set by the test function: the conftest's recorder of errors that reach the hub.
    hub_errors: HubErrors
    #: What the pools are made with (set by the test function too).
    idle_timeouts: tuple[float | None, ...] = (None,)
    max_pendings: st.SearchStrategy[int | None] = st.none()

    def __init__(self) -> None:
        super().__init__()
        self.pool: ggopool.Pool | None = None
        self.recs: list[Rec] = []
        self.gates = [Event() for _ in range(GATES)]
        self.rejected = 0
        self.closed = False
        self.max_pending: int | None = None
        self.handler_seen: list[int] = []
        self.use_handler = False
        # Tasks running when the cap was last set: only their workers may be above it.
        self.allowed_over_cap: set[int] = set()
        # Tasks cancelled while queued: their entries may still take room in the queue.
        self.cancelled_entries = 0
        self.reported: list[int] = []

    # -- the task body -----------------------------------------------------------------

    def body(self, rec: Rec) -> int:
        rec.starts += 1
        rec.state = "running"
        rec.worker = gevent.getcurrent()
        rec.seen_ctx.append(request_id.get())
        try:
            if rec.kind == "raise":
                rec.state = "raised"
                raise ValueError(f"task {rec.ident}")
            if rec.kind == "yield":
                gevent.sleep(0)
            elif rec.kind == "gate":
                rec.gate.wait()
        except GreenletExit:
            rec.state = "killed"
            raise
        rec.state = "returned"
        return rec.ident

    def on_panic(self, ctx: contextvars.Context, exc: Exception) -> None:
        assert isinstance(exc, ValueError)
        self.handler_seen.append(int(str(exc).split()[1]))

    # -- setup -------------------------------------------------------------------------

    @initialize(data=st.data())
    def make_pool(self, data: st.DataObject) -> None:
        cap = data.draw(st.integers(1, 4), "cap")
        threshold = data.draw(st.integers(1, 3), "scale_threshold")
        idle_timeout = data.draw(st.sampled_from(self.idle_timeouts), "idle_timeout")
        max_pending = data.draw(self.max_pendings, "max_pending")
        self.use_handler = data.draw(st.booleans(), "use_handler")
        config = Config(
            scale_threshold=threshold, idle_timeout=idle_timeout, max_pending=max_pending
        )
        self.pool = ggopool.new_pool("model", cap, config)
        self.max_pending = max_pending
        if self.use_handler:
            self.pool.set_panic_handler(self.on_panic)

    @property
    def p(self) -> ggopool.Pool:
        assert self.pool is not None
        return self.pool

    def by_state(self, *states: str) -> list[Rec]:
        return [r for r in self.recs if r.state in states]

    # -- adding tasks --------------------------------------------------------------------

    def _add(self, via: str, kind: str, gate: int) -> None:
        rec = Rec(len(self.recs), kind, via, self.gates[gate], ctx_value=1000 + len(self.recs))
        pool = self.p
        fn = functools.partial(self.body, rec)

        def add() -> None:
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
            self.recs.append(rec)

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
            gevent.get_hub().loop.run_callback(run)
            gevent.idle()
        else:
            run()
        [outcome] = result
        return outcome

    # One rule per way in, so that adding is drawn four times as often as closing.
    @rule(kind=st.sampled_from(KINDS), gate=st.integers(0, GATES - 1))
    def go(self, kind: str, gate: int) -> None:
        self._add("go", kind, gate)

    @rule(kind=st.sampled_from(KINDS), gate=st.integers(0, GATES - 1))
    def ctx_go(self, kind: str, gate: int) -> None:
        self._add("ctx_go", kind, gate)

    @rule(kind=st.sampled_from(KINDS), gate=st.integers(0, GATES - 1))
    def submit(self, kind: str, gate: int) -> None:
        self._add("submit", kind, gate)

    @rule(kind=st.sampled_from(KINDS), gate=st.integers(0, GATES - 1))
    def try_go(self, kind: str, gate: int) -> None:
        self._add("try_go", kind, gate)

    # -- changing the pool ----------------------------------------------------------------

    @rule(cap=st.integers(1, 4))
    def set_cap(self, cap: int) -> None:
        self.allowed_over_cap = {r.ident for r in self.by_state("running")}
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

    @precondition(lambda self: any(r.handle is not None for r in self.by_state("running")))
    @rule(data=st.data())
    def kill_running_task(self, data: st.DataObject) -> None:
        rec = data.draw(st.sampled_from([r for r in self.by_state("running") if r.handle]))
        assert rec.handle is not None
        assert rec.handle.cancel() is False
        rec.handle.kill()
        assert rec.state == "killed"
        assert isinstance(rec.handle.value, GreenletExit)

    @precondition(lambda self: bool(self.by_state("running")))
    @rule(data=st.data())
    def kill_worker(self, data: st.DataObject) -> None:
        # GreenletExit thrown into the worker running a task, as gevent.kill does: the
        # task ends (killed), the worker ends, and another takes the queue.
        rec = data.draw(st.sampled_from(self.by_state("running")))
        assert rec.worker is not None
        gevent.kill(rec.worker)
        gevent.idle()
        assert rec.state == "killed"

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
        rec.state = "cancelled"
        self.cancelled_entries += 1

    @rule()
    def kill_pool(self) -> None:
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
        assert self.p.join() is True
        assert not self.by_state("queued", "running")

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
        )
        assert s.submitted == s.completed + s.failed + s.cancelled + s.running + s.pending
        assert s.rejected == self.rejected
        assert pool.task_count() == n["queued"]
        assert s.workers == pool.worker_count()
        # Every awake worker is inside a task: none was left woken and not running.
        assert s.workers - s.idle == n["running"]
        # set_cap: parked workers above the cap exit at once; running ones after their
        # current task. So only workers running a task since the cap was set are above it.
        still_allowed = {r.ident for r in self.by_state("running")} & self.allowed_over_cap
        assert s.workers <= s.cap + len(still_allowed), (s, still_allowed)
        if s.workers > s.cap:
            assert s.idle == 0, s
        if self.closed or pool.config.idle_timeout == 0:
            assert s.idle == 0, s  # such workers never park
        if n["queued"]:
            assert n["running"] > 0, s  # queued tasks are never left without a worker
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
            assert isinstance(task.exception, ValueError)
        else:
            assert isinstance(task.value, GreenletExit)

    def check_failures(self) -> None:
        # A go/ctx_go/try_go task that raised goes to the panic handler, or to the hub;
        # a submitted one only to whoever calls get().
        expected = sorted(r.ident for r in self.by_state("raised") if r.handle is None)
        reported: list[int] = []
        for context, type_, value in self.hub_errors.take():
            assert not self.use_handler, value
            assert isinstance(context, FailedTask)
            assert context.pool is self.pool
            assert type_ is ValueError
            reported.append(int(str(value).split()[1]))
        self.reported += reported
        seen = self.handler_seen if self.use_handler else self.reported
        assert sorted(seen) == expected

    def teardown(self) -> None:
        if self.pool is not None:
            for gate in self.gates:
                gate.set()
            self.pool.kill(timeout=None)
            gevent.idle()
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
