"""A plain script and a Locust run that end with tasks still queued: the exit drain runs
them, or says what it abandoned; a Ctrl-C in ``with pool:`` does not wait for the queue,
and a second one ends the exit drain."""

from __future__ import annotations

import os
import re
import signal
import sys
import textwrap
import time
from pathlib import Path

from tests.deploy_helpers import Proc, subprocess_env
from tests.shutdown_scenarios import ABANDONED

SCRIPT_ENDS = """
    import os, sys
    import gevent, gevent.socket
    import ggopool

    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write_line(kind, i):
        gevent.sleep(0.001)
        os.write(fd, f"{kind} {i}\\n".encode())

    def resolve():
        # The first use of gevent's threadpool, at exit: DNS through the default resolver.
        host = gevent.socket.getaddrinfo("localhost", 80)[0][4][0]
        os.write(fd, f"dns {host}\\n".encode())

    pool = ggopool.new_pool("lines", 4)
    for i in range(1000):
        ggopool.go(write_line, "go", i)
        pool.go(write_line, "pool", i)
        ggopool.spawn(write_line, "spawn", i)
    ggopool.go(resolve)
    print("queued", flush=True)
"""


def script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(text))
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_script_that_ends_runs_every_queued_task_at_exit(tmp_path: Path) -> None:
    out = tmp_path / "lines.txt"
    proc = Proc([sys.executable, str(script(tmp_path, SCRIPT_ENDS)), str(out)])
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
    assert "ggopool" not in proc.output


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
    proc = Proc([sys.executable, str(script(tmp_path, SCRIPT_TOO_LONG)), str(out), "0.3"])
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
    proc = Proc([sys.executable, str(script(tmp_path, text)), str(out)])
    try:
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    assert lines(out) == []
    assert proc.output == ""


SCRIPT_CTRL_C = """
    import os, sys
    import gevent
    import ggopool

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
    proc = Proc([sys.executable, str(script(tmp_path, SCRIPT_CTRL_C)), str(out)])
    try:
        proc.wait_for(r"^queued", timeout=15)
        first = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        # The queue holds 10 s of work; `with` lets the KeyboardInterrupt through at once,
        # then the exit drain says what it waits for (after 1 s).
        proc.wait_for(r"^KeyboardInterrupt", timeout=15)
        assert time.monotonic() - first < 3.0, proc.output
        [note] = proc.wait_for(r"ggopool: draining: waiting up to [\d.]+ s more", timeout=15)
        assert "; Ctrl-C to abandon them" in note.string
        second = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(15)
        assert time.monotonic() - second < 3.0, proc.output
    finally:
        proc.stop()
    assert code != 0  # ended by KeyboardInterrupt
    ran = len(lines(out))
    [report] = ABANDONED.findall(proc.output)
    assert 0 < ran < 100
    assert int(report[1]) == 100 - ran, proc.output
    assert "when the drain was interrupted by KeyboardInterrupt after" in proc.output


LOCUSTFILE = """
    import os
    import gevent
    import ggopool
    from locust import User, constant, events, task

    fd = os.open(os.environ["SHUTDOWN_LINES"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    jobs = ggopool.new_pool("jobs", 1)  # untracked: nothing drains it at test_stop

    def job(i):
        gevent.sleep(0.02)
        os.write(fd, f"done {i}\\n".encode())

    n = 0

    class Worker(User):
        wait_time = constant(0.02)

        @task
        def queue(self):
            global n
            n += 1
            os.write(fd, f"queued {n}\\n".encode())
            jobs.go(job, n)

    @events.quitting.add_listener
    def backlog(environment, **kwargs):
        os.write(fd, f"pending at quit {jobs.stats().pending}\\n".encode())
"""


def test_locust_tasks_queued_near_the_end_on_an_untracked_pool_run_at_exit(
    tmp_path: Path,
) -> None:
    locustfile = tmp_path / "locustfile.py"
    locustfile.write_text(textwrap.dedent(LOCUSTFILE))
    out = tmp_path / "lines.txt"
    args = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", "4"]
    args += ["-r", "4", "-t", "2s", "-H", "http://127.0.0.1:9", "--only-summary"]
    proc = Proc(args, subprocess_env(SHUTDOWN_LINES=str(out)))
    try:
        code = proc.wait(40)
    finally:
        proc.stop()
    assert code == 0, proc.output
    written = lines(out)
    queued = {line.split()[1] for line in written if line.startswith("queued ")}
    done = [line.split()[1] for line in written if line.startswith("done ")]
    [pending] = [int(line.split()[-1]) for line in written if line.startswith("pending at quit")]
    assert pending > 0  # the run ended with a backlog: without the exit drain it was lost
    assert len(queued) > pending
    assert sorted(done) == sorted(queued)
    assert ABANDONED.search(proc.output) is None
