"""The soak script, as CI runs it: 20 seconds of Locust against the app, and its bar."""

from __future__ import annotations

import re
import sys

from gevent import subprocess

from tests.deploy_helpers import REPO, subprocess_env


def test_a_twenty_second_soak_passes_with_no_failures_and_flat_rss() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "loadtests.soak", "--duration", "20"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=55,  # under the conftest's 60 s
    )
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "result: PASS" in out.stdout
    requests, failures = map(int, re.findall(r"requests: (\d+), failures: (\d+)", out.stdout)[0])
    assert requests > 0
    assert failures == 0
    assert re.search(
        r"pool background: cap 16, submitted (\d+), completed \1, failed 0", out.stdout
    )
    assert re.search(r"pool fanout: cap 32, submitted (\d+), completed \1, failed 0", out.stdout)
