"""What the Locust tests share: reading `ggopool.locust`'s counts from a run's output, and a
distributed run (a headless master and two workers, in subprocesses)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.deploy_helpers import LOCUST, Proc, free_port, headless, running

COUNTS = r"(\d+) submitted, (\d+) run, (\d+) failed, (\d+) cancelled, (\d+) peak workers"


def entries(json_file: Path) -> dict[str, dict[str, Any]]:
    stats = json.loads(json_file.with_suffix(".json").read_text())
    return {entry["name"]: entry for entry in stats}


def counts(output: str, pattern: str) -> list[tuple[int, int, int, int, int]]:
    found = re.findall(pattern + COUNTS, output)
    return [(int(a), int(b), int(c), int(d), int(e)) for a, b, c, d, e in found]


def distributed(
    locustfile: str, url: str, *extra: str, run_time: str = "3s"
) -> tuple[int, Proc, Proc, Proc]:
    """A headless master and two workers on 127.0.0.1, for ``run_time`` once both workers
    are connected; the master's exit code and the three processes, all exited."""
    port = str(free_port())
    master_args = headless(
        locustfile,
        url,
        run_time,
        "--master",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        port,
        "--expect-workers",
        "2",
        "--expect-workers-max-wait",
        "20",
        *extra,
    )
    worker_args = [*LOCUST, "-f", locustfile, "--worker", "--master-host", "127.0.0.1"]
    worker_args += ["--master-port", port]
    with running(master_args) as master, running(worker_args) as w1, running(worker_args) as w2:
        code = master.wait(timeout=45)
        w1.wait(timeout=15)
        w2.wait(timeout=15)
    return code, master, w1, w2
