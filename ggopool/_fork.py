"""What a forked child does to every pool: start empty, with no workers, and work."""

from __future__ import annotations

import logging
import os

from ggopool._instrument import forget_held_notifications
from ggopool._pool import _new_hand_over_lock, all_pools


def _after_fork_in_child() -> None:
    _new_hand_over_lock()
    # A fork from another thread may land while a pool holds its instruments' calls: the
    # child's pool would hold them for ever.
    forget_held_notifications()
    for pool in list(all_pools):
        # Each on its own: one that fails must not leave the others holding the parent's
        # tasks, which would then run twice.
        try:
            pool._after_fork_in_child()
        except Exception as exc:  # noqa: BLE001 - reported; the other pools go on
            logging.getLogger("ggopool").warning(
                "ggopool: pool %r: resetting it in a forked child failed with %s",
                pool.name,
                type(exc).__name__,
            )


os.register_at_fork(after_in_child=_after_fork_in_child)
