"""Running a part of the bench in a fresh Python process and reading back its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_json(args: list[str], timeout: float) -> Any:
    """Run ``python <args>`` with this ggopool importable; parse the JSON it prints.

    Its stderr (progress, tracebacks) goes straight to ours. A non-zero exit or output
    that is not JSON raises RuntimeError with what the child printed.
    """
    env = dict(os.environ)
    # The directory that holds the ggopool package first, so the child imports this very
    # ggopool even when it is run from a checkout that is not installed.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        env=env,
        timeout=timeout,
        check=False,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"bench subprocess {args[:2]!r} exited with {proc.returncode}: {proc.stdout[-2000:]}"
        )
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(
            f"bench subprocess {args[:2]!r} printed no JSON: {proc.stdout[-2000:]!r}"
        ) from exc
