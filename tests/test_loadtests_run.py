"""``python -m loadtests.run`` when the app cannot start: it says what happened, at once."""

from __future__ import annotations

import sys

from tests.deploy_helpers import Proc, subprocess_env


def test_run_says_the_app_exited_when_it_exits_before_listening() -> None:
    # A cap of 0 makes the app refuse to start (argparse's exit code 2).
    env = subprocess_env(LOADTESTS_BACKGROUND_CAP="0")
    run = Proc([sys.executable, "-m", "loadtests.run"], env)
    try:
        code = run.wait(timeout=30)
    finally:
        run.stop()
    assert code == 1, run.output
    assert "--background-cap and --fanout-cap must be ints >= 1, got 0 and 32" in run.output
    assert "the app exited with code 2 before it was listening" in run.output
    assert "not listening after" not in run.output
