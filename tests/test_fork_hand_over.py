"""A child forked while another thread of the parent was handing a task over to a pool
(holding the lock every hand-over takes) has no such thread: its own threads can still hand
tasks over, and it exits (its exit drain takes that lock too). No deadlock."""

from __future__ import annotations

from tests.subprocess_helpers import printed_lines

# In a process of its own: it forks, with a thread of the parent inside a hand-over.
FORK_DURING_A_HAND_OVER = """
    import os, sys, threading, time
    import ggopool
    from ggopool import _pool

    def say(*words):
        # One write per line: the parent and the child share the pipe.
        os.write(1, (" ".join(map(str, words)) + "\\n").encode())

    pool = ggopool.new_pool("forked", 2)
    inside, leave = threading.Event(), threading.Event()

    def handing_over():
        # Where a thread handing a task over is, between taking the lock and letting go.
        with _pool._hand_over_lock:
            inside.set()
            leave.wait(60)

    holder = threading.Thread(target=handing_over)
    holder.start()
    assert inside.wait(10)
    pid = os.fork()
    if pid == 0:
        ran = []

        def from_a_thread():
            pool.go(ran.append, "handed over")

        thread = threading.Thread(target=from_a_thread, daemon=True)
        thread.start()
        thread.join(10)
        if thread.is_alive():
            say("child: the hand-over is still blocked after 10 s")
            os._exit(3)
        assert pool.join(10)
        say("child ran", *ran)
        sys.exit(0)  # the normal exit, with its exit drain

    leave.set()
    holder.join(10)
    # Bounded: a child that hangs is killed and reported, not waited for.
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            say("child exit", os.waitstatus_to_exitcode(status))
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            say("child hung")
            break
        time.sleep(0.01)
    # The parent's hand-overs work as before.
    outcome = []
    thread = threading.Thread(target=lambda: pool.go(outcome.append, "parent"))
    thread.start()
    thread.join(10)
    assert pool.join(10)
    say("parent ran", *outcome)
"""


def test_a_child_forked_during_a_hand_over_takes_hand_overs_and_exits() -> None:
    lines = printed_lines(FORK_DURING_A_HAND_OVER)
    assert lines == ["child ran handed over", "child exit 0", "parent ran parent"], lines
