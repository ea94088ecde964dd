"""What keeps ``Pool.go`` and the worker loop cheap, pinned where a change could undo it
without any test failing."""

from __future__ import annotations

import sys

import ggopool

#: CPython 3.11 shares one keys table among the instance dicts of a class (and reads an
#: attribute by its index, without a lookup) only while an instance has fewer than 30
#: attributes. A 30th made every attribute read on go()'s path a dict lookup: a no-op task
#: cost 8,726 -> 9,202 instructions under callgrind, the code otherwise the same
#: (docs/design.md).
MOST_POOL_ATTRIBUTES = 29


def test_a_pool_keeps_its_attributes_in_a_shared_keys_dict() -> None:
    pool = ggopool.new_pool("attrs", 4)
    attributes = sorted(vars(pool))
    assert len(attributes) <= MOST_POOL_ATTRIBUTES, attributes
    if sys.version_info[:2] == (3, 11):
        # The same size as the dict of an object of a class with one attribute: shared
        # keys (a dict with keys of its own is several times larger).
        class One:
            def __init__(self) -> None:
                self.a = 1

        assert sys.getsizeof(vars(pool)) < 4 * sys.getsizeof(vars(One())), attributes
