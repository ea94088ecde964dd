"""Running a Python script in a process of its own, from a test: for what only a fresh
interpreter shows (its exit, a fork, memory measured from zero, a planted fault that must
not reach the test process).

The script runs from the repository root with the repository importable first, its output
captured, under a bound in time; the hub runs meanwhile (gevent's subprocess), so the
test's own timeout and other greenlets go on. A script that a test sends signals sets
their handling itself: the suite may run with SIGINT ignored (a background job of a
non-interactive shell), and a child inherits that. Long-running programs read line by
line (servers, gunicorn, Locust) use `tests.deploy_helpers.Proc`.
"""

from __future__ import annotations

import sys
import textwrap

from gevent import subprocess

from tests.deploy_helpers import REPO, subprocess_env

#: The longest a script may run by default, in seconds: ample for a busy 2-core machine.
SCRIPT_TIMEOUT = 60.0


def run_python(
    source: str,
    *args: object,
    env: dict[str, str] | None = None,
    timeout: float = SCRIPT_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``source`` (dedented) with ``python -c``, its arguments ``args`` as strings.

    With ``check`` (the default), fail the test unless it exited with 0, showing what it
    printed on both streams; what it printed is the caller's to check.
    """
    out: subprocess.CompletedProcess[str] = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *map(str, args)],
        cwd=REPO,
        env=env if env is not None else subprocess_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def printed_lines(
    source: str,
    *args: object,
    env: dict[str, str] | None = None,
    timeout: float = SCRIPT_TIMEOUT,
) -> list[str]:
    """Run ``source`` as `run_python` does and check its clean exit; the lines it printed."""
    return run_python(source, *args, env=env, timeout=timeout).stdout.splitlines()
