"""What a forked child does to every pool: start empty, with no workers, and work."""

from __future__ import annotations

import os

from ggopool._pool import all_pools


def _after_fork_in_child() -> None:
    for pool in list(all_pools):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
