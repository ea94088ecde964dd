"""Fork never touches the child's counts: a task running when the process forked, which then
fails in the child (its worker inherited from the parent), is reported there but counted
only in the parent's pool; the child's pool starts at zero and counts its own tasks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.subprocess_helpers import printed_lines

FORK_RUNNING_TASKS_FAIL = """
    from gevent import monkey
    monkey.patch_all()

    import os
    import gevent
    from gevent.event import Event
    import ggopool


    def say(*words):
        # One write per line: the parent and the child share the pipe.
        os.write(1, (" ".join(map(str, words)) + "\\n").encode())

    def counts(pool):
        s = pool.stats()
        return (s.submitted, s.completed, s.failed, s.running, s.pending, s.cancelled)

    pool = ggopool.new_pool("fork", 3, ggopool.Config(idle_timeout=None))
    gate = Event()

    def fails(how):
        gate.wait()
        raise ValueError(how)

    during = []

    def handler(ctx, exc):
        gevent.sleep(0.01)  # a handler that logs over the network: it yields
        during.append(counts(pool))

    pool.set_panic_handler(handler)
    submitted = pool.submit(fails, "submit")
    pool.spawn(fails, "spawn")
    pool.go(fails, "go")
    gevent.idle()
    assert pool.stats().running == 3
    # The child watcher's SIGCHLD handler, installed before the child can exit: a
    # child that exits first is otherwise never seen, and waitpid waits for ever.
    gevent.get_hub().loop.install_sigchld()
    pid = os.fork()
    if pid == 0:
        before = counts(pool)
        gate.set()  # the tasks running at fork fail here, in their inherited workers
        for _ in range(1000):
            if len(during) == 2 and submitted.ready():
                break
            gevent.sleep(0.005)
        say("child", before, during, counts(pool), type(submitted.exception).__name__)
        ran = pool.submit(abs, -1).get(timeout=10)
        say("child after", ran, counts(pool))
        os._exit(0)
    gate.set()
    assert pool.join(10)
    say("parent", counts(pool), during)
    _, status = os.waitpid(pid, 0)
    say("status", status)
"""


def test_tasks_running_at_fork_that_fail_in_the_child_are_not_counted_there() -> None:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK_RUNNING_TASKS_FAIL)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, (out.stdout, out.stderr)
    zero = (0, 0, 0, 0, 0, 0)
    assert sorted(out.stdout.splitlines()) == [
        # In the child: zero before, while the handlers ran, and after; the submitted
        # task's handle has its failure all the same.
        f"child {zero} {[zero, zero]} {zero} ValueError",
        f"child after 1 {(1, 1, 0, 0, 0, 0)}",
        # In the parent: its own three failures, counted once each.
        f"parent {(3, 0, 3, 0, 0, 0)} {[(3, 0, 3, 0, 0, 0)] * 2}",
        "status 0",
    ]


FORK_WHILE_NOTIFICATIONS_HELD = """
    import os
    import gevent
    import ggopool
    from ggopool._instrument import notifications_held


    class Finished(ggopool.Instrument):
        def __init__(self):
            self.finished = 0

        def task_finished(self, task, outcome, exc):
            self.finished += 1


    pool = ggopool.new_pool("held", 2)
    seen = Finished()
    pool.add_instrument(seen)
    # As if another thread forked while this pool's kill held its instruments' calls.
    held = notifications_held(pool)
    held.__enter__()
    pid = os.fork()
    if pid == 0:
        for _ in range(3):
            pool.go(lambda: None)
        pool.join(10)
        os.write(1, f"child finished {seen.finished}\\n".encode())
        os._exit(0)
    held.__exit__(None, None, None)
    os.waitpid(pid, 0)
"""


def test_a_child_forked_while_a_pool_held_its_instruments_calls_makes_them() -> None:
    assert printed_lines(FORK_WHILE_NOTIFICATIONS_HELD) == ["child finished 3"]
