"""Real OS threads handing tasks to a pool's hub thread, and real forks under monkey-patching."""

from __future__ import annotations

import contextvars
import sys
import textwrap
import threading
from pathlib import Path

import gevent
from gevent.event import Event
from gevent.monkey import get_original

import ggopool
from ggopool._entry import SLOTS
from tests.deploy_helpers import answer_from_each_worker, gunicorn_booted, running, subprocess_env
from tests.subprocess_helpers import run_python

real_get_ident = get_original("_thread", "get_ident")


def test_four_threads_submit_40000_tasks_all_run_once_on_the_hub_thread() -> None:
    pool = ggopool.new_pool("threads", 8)
    per_thread = 10_000
    runs = bytearray(4 * per_thread)
    idents: set[int] = set()
    remaining = len(runs)
    done = Event()

    def task(i: int) -> None:
        nonlocal remaining
        runs[i] += 1
        idents.add(real_get_ident())
        remaining -= 1
        if not remaining:
            done.set()

    def submitter(t: int) -> None:
        for i in range(t * per_thread, (t + 1) * per_thread):
            pool.go(task, i)

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    assert done.wait(60)  # the main thread runs the hub while the threads submit
    for t in threads:
        t.join(10)
    assert runs == bytearray(b"\x01") * len(runs)
    assert idents == {real_get_ident()}
    assert pool.worker_count() <= 8
    assert pool.stats().submitted == len(runs)


def test_module_go_and_the_default_pools_spawn_from_a_thread_with_no_hub_hand_over() -> None:
    got: list[tuple[str, int]] = []
    done = Event()
    handles: list[ggopool.Task[int]] = []

    def record(what: str) -> None:
        got.append((what, real_get_ident()))
        if len(got) == 3:
            done.set()

    def spawned() -> int:
        record("spawn")
        return 42

    def other_thread() -> None:
        ggopool.go(record, "go")
        ggopool.ctx_go(contextvars.Context(), record, "ctx_go")
        handles.append(ggopool.default_pool().spawn(spawned))  # ggopool.spawn makes a hub

    t = threading.Thread(target=other_thread)
    t.start()
    assert done.wait(10)
    t.join(10)
    assert sorted(w for w, _ in got) == ["ctx_go", "go", "spawn"]
    assert {ident for _, ident in got} == {real_get_ident()}
    assert handles[0].get(timeout=5) == 42


def test_set_cap_from_another_thread_is_applied_on_the_pool_thread() -> None:
    pool = ggopool.new_pool("threads", 2)
    t = threading.Thread(target=pool.set_cap, args=(5,))
    t.start()
    t.join(10)
    with gevent.Timeout(5):
        while pool.cap != 5:
            gevent.sleep(0.001)
    assert pool.cap == 5


FORK_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import os, sys
    import gevent
    from gevent.event import Event
    import ggopool

    log_path = sys.argv[1]
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def record(name):
        os.write(log, f"{os.getpid()} {name}\\n".encode())

    gate = Event()
    pool = ggopool.new_pool("fork", 4)

    def running(i):
        gate.wait()
        record(f"parent-running-{i}")

    for i in range(4):
        pool.go(running, i)
    for i in range(10):
        pool.go(record, f"parent-queued-{i}")
    gevent.idle()
    assert pool.worker_count() == 4 and pool.task_count() == 10, pool

    gevent.get_hub().loop.install_sigchld()  # see FORK_LATER_SCRIPT
    pid = os.fork()
    if pid == 0:
        ok = pool.task_count() == 0 and pool.worker_count() == 0
        done = Event()
        left = [20]
        def child_task(i):
            record(f"child-{i}")
            left[0] -= 1
            if not left[0]:
                done.set()
        for i in range(20):
            pool.go(child_task, i)
        ok = ok and done.wait(20) and pool.join(5)
        gevent.sleep(0.05)  # room for any inherited work that wrongly ran to show up in the log
        os._exit(0 if ok else 3)

    gate.set()
    assert pool.join(20)
    _, status = os.waitpid(pid, 0)
    print("child", pid, "status", status)
    """
)


def test_fork_child_starts_empty_and_runs_only_its_own_tasks(tmp_path: object) -> None:
    log = f"{tmp_path}/runs.log"
    out = run_python(FORK_SCRIPT, log)
    child_pid = int(out.stdout.split()[1])
    assert out.stdout.split()[3] == "0", out.stdout
    with open(log) as f:
        lines = [line.split() for line in f]
    names = [name for _, name in lines]
    assert len(names) == len(set(names)), "a task ran twice"
    parent = {name for pid, name in lines if int(pid) != child_pid}
    child = {name for pid, name in lines if int(pid) == child_pid}
    assert parent == {f"parent-running-{i}" for i in range(4)} | {
        f"parent-queued-{i}" for i in range(10)
    }
    assert child == {f"child-{i}" for i in range(20)}


def test_tasks_handed_over_to_a_full_bounded_pool_wait_for_slots_and_all_run() -> None:
    pool = ggopool.new_pool("threads", 1, ggopool.Config(max_pending=2))
    gate = Event()
    pool.go(gate.wait)
    gevent.idle()
    ran: list[int] = []

    def submitter() -> None:
        for i in range(10):
            pool.go(ran.append, i)

    t = threading.Thread(target=submitter)
    t.start()
    t.join(10)
    assert not t.is_alive()  # the thread never waited for room
    assert pool.task_count() == 10  # accepted: counted as pending from the moment go() returned
    with gevent.Timeout(10):
        while pool._inbox:
            gevent.sleep(0.001)  # the hand-overs arrive through the loop's async watcher
    assert len(pool._tasks) // SLOTS == 2  # the bound holds; the rest wait for slots
    assert pool.task_count() == 10
    gate.set()
    with gevent.Timeout(10):
        while len(ran) < 10:
            gevent.sleep(0.001)
    assert sorted(ran) == list(range(10))
    assert pool.join(5)


def test_join_waits_for_tasks_accepted_from_another_thread() -> None:
    pool = ggopool.new_pool("threads", 2)
    ran: list[int] = []

    def submitter() -> None:
        for i in range(100):
            pool.go(ran.append, i)

    t = threading.Thread(target=submitter)
    t.start()
    t.join(10)  # blocks the hub: the hand-overs are accepted, not yet queued
    assert pool.stats().submitted == 100
    assert pool.join(10)
    assert sorted(ran) == list(range(100))


FORK_PENDING_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import os
    import gevent
    import ggopool

    pool = ggopool.new_pool("fork", 4, ggopool.Config(idle_timeout=None))
    pool.go(lambda: None)
    gevent.idle()
    assert pool.stats().idle == 1
    ran = []
    for i in range(3):
        pool.go(ran.append, i)  # wakes the parked worker and starts two: none has run yet
    gevent.get_hub().loop.install_sigchld()  # see FORK_LATER_SCRIPT
    pid = os.fork()
    if pid == 0:
        s = pool.stats()
        ok = (s.workers, s.idle, s.running, s.pending, s.submitted) == (0, 0, 0, 0, 0)
        for i in range(10):
            pool.go(ran.append, 100 + i)
        ok = ok and pool.join(10)
        gevent.sleep(0.05)  # room for an inherited worker to (wrongly) run or count
        s = pool.stats()
        ok = ok and sorted(ran) == [100 + i for i in range(10)]
        ok = ok and (s.submitted, s.completed, s.running) == (10, 10, 0)
        ok = ok and s.workers == s.idle and pool._starting == 0
        os._exit(0 if ok else 3)
    assert pool.join(10)
    _, status = os.waitpid(pid, 0)
    print("status", status, sorted(ran))
    """
)


def test_workers_whose_start_or_wake_up_was_pending_at_the_fork_stay_out_of_the_child() -> None:
    out = run_python(FORK_PENDING_SCRIPT)
    assert out.stdout.split() == ["status", "0", "[0,", "1,", "2]"], out.stdout


def test_start_later_from_another_thread_starts_its_timer_on_the_pools_hub() -> None:
    ran: list[int] = []
    done = Event()
    handles: list[ggopool.Task[None]] = []

    def record() -> None:
        ran.append(real_get_ident())
        done.set()

    def other_thread() -> None:
        # As ggopool.spawn_later(0.01, record) does from the pool's thread (from this one,
        # it would make this thread's hub and run there: tests/test_threads_hub.py).
        task = ggopool.default_pool().task(record)
        task.start_later(0.01)
        handles.append(task)

    t = threading.Thread(target=other_thread)
    t.start()
    # The hub waits in its loop while the thread asks: only a hand-over wakes it to start
    # the timer (a timer made from the other thread would wait for this wait's own).
    assert done.wait(5)
    t.join(10)
    assert ran == [real_get_ident()]
    [task] = handles
    assert task.get(timeout=5) is None
    assert task.successful()


def test_start_later_from_another_thread_killed_before_the_hub_starts_its_timer() -> None:
    ran: list[int] = []
    handles: list[ggopool.Task[None]] = []

    def other_thread() -> None:
        task = ggopool.default_pool().task(ran.append, 1)
        task.start_later(0)
        handles.append(task)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(10)  # a real join: the hub does not run meanwhile, so the timer is not made yet
    [task] = handles
    task.kill()  # from the pool's thread, before the hub takes the hand-over
    assert task.dead
    gevent.idle()  # the hand-over runs
    gevent.idle()  # and a timer of 0 s would have fired
    assert ran == []
    assert task.successful()
    assert isinstance(task.value, gevent.GreenletExit)


FORK_LATER_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import os, sys
    import gevent
    import ggopool

    log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def record(name):
        os.write(log, f"{os.getpid()} {name}\\n".encode())

    pool = ggopool.default_pool()
    later = ggopool.spawn_later(0.05, record, "later")
    # gevent installs libev's SIGCHLD handler with its first child watcher, made by the
    # patched fork in the parent after fork() returns: a child that exits before that is
    # never seen and os.waitpid waits for ever. Installed first, it cannot be missed.
    gevent.get_hub().loop.install_sigchld()
    pid = os.fork()
    if pid == 0:
        # The parent's timer is not the child's: its handle says so at once, and the
        # drain has nothing of it to wait for.
        ok = later.cancelled() and not pool._later and ggopool.drain(5)
        try:
            later.get(timeout=0)
        except ggopool.TaskCancelled as exc:
            ok = ok and "was waiting for its time at fork(): it runs in the parent" in str(exc)
        gevent.sleep(0.2)  # past its time: room for the task to (wrongly) run here
        os._exit(0 if ok else 3)
    assert ggopool.drain(10)
    _, status = os.waitpid(pid, 0)
    print("status", status, later.successful())
    """
)


def test_a_spawn_later_task_waiting_at_a_fork_runs_in_the_parent_only(tmp_path: object) -> None:
    log = f"{tmp_path}/runs.log"
    out = run_python(FORK_LATER_SCRIPT, log)
    assert out.stdout.split() == ["status", "0", "True"], out.stdout
    with open(log) as f:
        lines = [line.split() for line in f]
    assert [name for _, name in lines] == ["later"]  # once, in the parent


def test_spawn_from_another_thread_on_a_full_pool_waits_for_room_then_queues() -> None:
    pool = ggopool.new_pool("full", 1, ggopool.Config(spawn_waits_when_full=True))
    gate = Event()
    holder = pool.spawn(gate.wait)
    gevent.idle()
    assert pool.full()
    handles: list[ggopool.Task[int]] = []
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            handles.append(pool.spawn(lambda: 42))
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    # The hand-over reaches the hub: a greenlet there waits for room on the thread's behalf.
    with gevent.Timeout(10):
        while pool._membership().room is None and t.is_alive():
            gevent.sleep(0.001)
    assert errors == []
    assert t.is_alive()  # blocked in spawn(), while this thread's hub runs on
    assert (len(pool), pool.task_count(), handles) == (1, 0, [])  # nothing queued yet
    gate.set()  # the holder ends: room for the thread's task
    with gevent.Timeout(10):
        while t.is_alive():
            gevent.sleep(0.001)
    t.join(10)
    assert errors == []
    [task] = handles
    assert task.get(timeout=5) == 42
    assert holder.successful()
    assert pool.join(5)


def test_spawn_from_another_thread_on_a_pool_closed_meanwhile_raises_there() -> None:
    pool = ggopool.new_pool("full", 1, ggopool.Config(spawn_waits_when_full=True))
    gate = Event()
    pool.spawn(gate.wait)
    gevent.idle()
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            pool.spawn(lambda: None)
        except BaseException as exc:  # noqa: BLE001 - the test checks it
            errors.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    with gevent.Timeout(10):
        while pool._membership().room is None:
            gevent.sleep(0.001)
    pool.close()
    gate.set()
    with gevent.Timeout(10):
        while t.is_alive():
            gevent.sleep(0.001)
    [exc] = errors
    assert isinstance(exc, ggopool.PoolClosed)
    assert str(exc) == "pool 'full' is closed: it accepts no new tasks"
    assert pool.join(5)


PRELOADED_APP = """
import json, os
import ggopool


def record():
    with open(os.environ["LATER_RUNS"], "a") as f:
        f.write(f"{os.getpid()}\\n")


later = ggopool.spawn_later(0.05, record)  # at import: in gunicorn's master, with --preload


def app(environ, start_response):
    try:
        later.get(block=False)
        why = "ran"
    except ggopool.TaskCancelled as exc:
        why = str(exc)
    except Exception as exc:
        why = type(exc).__name__
    answer = {"pid": os.getpid(), "cancelled": later.cancelled(), "why": why}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(answer).encode()]
"""


def test_spawn_later_at_import_under_gunicorn_preload_runs_in_no_worker(tmp_path: Path) -> None:
    (tmp_path / "later_app.py").write_text(PRELOADED_APP)
    runs = tmp_path / "runs.txt"
    env = subprocess_env(LATER_RUNS=str(runs), XDG_RUNTIME_DIR=str(tmp_path))
    args = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2", "--preload"]
    args += ["-b", "127.0.0.1:0", "--chdir", str(tmp_path), "later_app:app"]
    with running(args, env) as gunicorn:
        url, master_pid, worker_pids = gunicorn_booted(gunicorn)
        answers = answer_from_each_worker(url, worker_pids, "GET", "/")
        ran_while_serving = runs.read_text().split() if runs.exists() else []
    for answer in answers.values():
        assert answer["cancelled"] is True, answer
        assert "was waiting for its time at fork(): it runs in the parent" in answer["why"]
    assert ran_while_serving == []  # in no worker (the master never runs its hub)
    # The master's exit drain, when the test stopped it, may run it there: once, at most.
    ran = runs.read_text().split() if runs.exists() else []
    assert ran in ([], [str(master_pid)])


FORK_WITH_A_DESTROYED_HUB_SCRIPT = textwrap.dedent(
    """
    import os, threading
    import gevent
    from gevent.event import Event
    import ggopool

    # A pool whose hub was destroyed, with a parked worker: made in a real thread (nothing
    # is monkey-patched here) that ends.
    kept = []

    def in_thread():
        pool = ggopool.new_pool("destroyed", 2, ggopool.Config(idle_timeout=None))
        pool.go(lambda: None)
        gevent.idle()
        kept.append(pool)
        gevent.get_hub().destroy(destroy_loop=True)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    # Twenty pools of this thread, each with a task queued behind a held worker.
    gate = Event()
    pools = [ggopool.new_pool(f"p{i}", 1) for i in range(20)]
    queued = []
    for pool in pools:
        pool.go(gate.wait)
        queued.append(pool.submit(lambda: os.getpid()))
    gevent.idle()
    pid = os.fork()
    if pid == 0:
        # Every pool was reset, whatever the destroyed one did: no task runs twice.
        ok = all(task.cancelled() for task in queued)
        ok = ok and all(pool.task_count() == 0 for pool in pools)
        os._exit(0 if ok else 3)
    gate.set()
    print("parent ran", sorted(set(task.get(timeout=10) for task in queued)) == [os.getpid()])
    _, status = os.waitpid(pid, 0)
    print("status", status)
    """
)


def test_a_pool_whose_hub_was_destroyed_does_not_stop_the_fork_reset_of_the_others() -> None:
    out = run_python(FORK_WITH_A_DESTROYED_HUB_SCRIPT)
    assert out.stdout.split() == ["parent", "ran", "True", "status", "0"], out.stdout + out.stderr
