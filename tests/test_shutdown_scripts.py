"""A plain script and a Locust run that end with tasks still queued: the exit drain runs
them, or says what it abandoned; a Ctrl-C in ``with pool:`` does not wait for the queue,
and a second one ends the exit drain."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

from tests.deploy_helpers import Proc
from tests.shutdown_scenarios import (
    ABANDONED,
    SCRIPT_ENDS,
    lines,
    run_locust,
    write_script,
)


def test_a_script_that_ends_runs_every_queued_task_at_exit(tmp_path: Path) -> None:
    out = tmp_path / "lines.txt"
    proc = Proc([sys.executable, str(write_script(tmp_path, SCRIPT_ENDS)), str(out), "1000"])
    try:
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    written = lines(out)
    dns = [line for line in written if line.startswith("dns ")]
    assert sorted(set(written) - set(dns)) == sorted(
        f"{kind} {i}" for kind in ("go", "pool", "spawn") for i in range(1000)
    )
    assert len(written) == 3001
    assert len(dns) == 1
    assert re.fullmatch(r"dns \S+", dns[0]), proc.output
    assert ABANDONED.search(proc.output) is None


SCRIPT_TOO_LONG = """
    import os, sys
    import gevent
    import ggopool

    ggopool.set_exit_drain(float(sys.argv[2]))
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def job(i):
        gevent.sleep(0.02)
        os.write(fd, f"{i}\\n".encode())

    pool = ggopool.new_pool("jobs", 1)
    for i in range(100):
        pool.go(job, i)
"""


def test_a_backlog_longer_than_the_deadline_is_reported_as_abandoned(tmp_path: Path) -> None:
    out = tmp_path / "lines.txt"
    proc = Proc([sys.executable, str(write_script(tmp_path, SCRIPT_TOO_LONG)), str(out), "0.3"])
    try:
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    ran = len(lines(out))
    [report] = ABANDONED.findall(proc.output)
    assert report[0] == "jobs"
    assert 0 < ran < 100
    assert int(report[1]) == 100 - ran  # accepted - ran
    assert int(report[3]) == 1  # the one running when the deadline passed
    assert "after the 0.3 s deadline" in proc.output


def test_the_exit_drain_turned_off_neither_waits_nor_reports(tmp_path: Path) -> None:
    out = tmp_path / "lines.txt"
    text = SCRIPT_TOO_LONG.replace("float(sys.argv[2])", "None")
    proc = Proc([sys.executable, str(write_script(tmp_path, text)), str(out)])
    try:
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    assert lines(out) == []
    assert proc.output == ""


SCRIPT_CTRL_C = """
    import os, signal, sys
    import gevent
    import ggopool

    # Ctrl-C raises KeyboardInterrupt here even if this process was started with SIGINT
    # ignored (as a background job of a non-interactive shell starts the suite, and so
    # this script), where Python would leave it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ggopool.set_exit_drain(60)
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def job(i):
        gevent.sleep(0.1)
        os.write(fd, f"{i}\\n".encode())

    with ggopool.new_pool("jobs", 1) as pool:
        for i in range(100):
            pool.go(job, i)
        print("queued", flush=True)
        gevent.sleep(60)  # Ctrl-C comes here
"""


def test_ctrl_c_in_with_pool_does_not_wait_and_a_second_one_ends_the_exit_drain(
    tmp_path: Path,
) -> None:
    out = tmp_path / "lines.txt"
    proc = Proc([sys.executable, str(write_script(tmp_path, SCRIPT_CTRL_C)), str(out)])
    try:
        proc.wait_for(r"^queued", timeout=15)
        first = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        # The queue holds 10 s of work; `with` lets the KeyboardInterrupt through at once,
        # then the exit drain says what it waits for (after 1 s). The bounds are well under
        # those 10 s, and wide for a machine whose cores are busy.
        proc.wait_for(r"^KeyboardInterrupt", timeout=15)
        assert time.monotonic() - first < 5.0, proc.output
        [note] = proc.wait_for(r"ggopool: draining: waiting up to [\d.]+ s more", timeout=15)
        assert "; Ctrl-C to abandon them" in note.string
        second = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(15)
        assert time.monotonic() - second < 5.0, proc.output
    finally:
        proc.stop()
    assert code != 0  # ended by KeyboardInterrupt
    ran = len(lines(out))
    [report] = ABANDONED.findall(proc.output)
    assert 0 < ran < 100
    assert int(report[1]) == 100 - ran, proc.output
    assert "when the drain was interrupted by KeyboardInterrupt after" in proc.output


def test_locust_tasks_queued_near_the_end_run_at_exit_tracked_or_not(tmp_path: Path) -> None:
    proc, written = run_locust(tmp_path, users=4, seconds=2)
    assert proc.popen.returncode == 0, proc.output
    queued = {(w[1], w[2]) for w in written if w[0] == "queued"}
    done = [(w[1], w[2]) for w in written if w[0] == "done"]
    [pending] = [int(w[-1]) for w in written if w[:3] == ["pending", "at", "quit"]]
    # The run ended with a backlog on the untracked pool: without the exit drain it was lost.
    assert pending > 0
    assert sorted(done) == sorted(queued)
    assert sum(1 for kind, _ in queued if kind == "slow") == 4  # one per user, at its stop
    # The tracked pool's drain at test_stop ran out of time and said so; the exit drain
    # then ran the rest.
    assert re.search(
        r"ggopool pool 'slow': [1-4] tasks unfinished \(\d queued, 1 running\) 0\.2 s after "
        r"the test stopped",
        proc.output,
    ), proc.output
    assert ABANDONED.search(proc.output) is None
