"""How a queued task lies on a pool's deque."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Context
from typing import Any

#: A queued task takes this many slots of the pool's deque, in this order: the context it
#: runs in, the callable, its positional arguments and its keyword arguments. Four flat
#: slots rather than one 4-tuple per task: a burst of queued tuples that each hold a
#: Context keeps the cyclic GC busy. Queueing 200,000 no-op tasks measured 728 ns per task
#: with tuples and 309 ns with flat slots; go() as a whole went from about 1,000 to 480 ns.
SLOTS = 4

#: The keyword arguments of a task queued without any. Shared: ``fn(**kwargs)`` copies it,
#: so nothing can change it, and it saves a dict per task.
NO_KWARGS: dict[str, Any] = {}

#: One task's slots, as a tuple (``deque.extend`` takes it; the other threads' inbox holds
#: them whole).
Entry = tuple[Context, Callable[..., object], tuple[Any, ...], dict[str, Any]]
