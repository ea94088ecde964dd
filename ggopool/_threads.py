"""The real thread primitives, even under monkey-patching: once patched, ``get_ident``
names greenlets and a ``threading`` lock blocks only the greenlet, where the pools need the
OS thread's id and a lock that blocks the whole thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent.monkey import get_original

get_ident: Callable[[], int] = get_original("_thread", "get_ident")
allocate_lock: Callable[[], Any] = get_original("_thread", "allocate_lock")
#: The real thread-local class: monkey-patched, ``threading.local`` is per greenlet.
local: Callable[[], Any] = get_original("_thread", "_local")
