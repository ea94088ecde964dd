"""Fresh greenlet-local state for every task, although the tasks share worker greenlets.

Inside a task, ``gevent.getcurrent()`` is the worker that runs it, and the next task on the
same worker would see what this one left in ``gevent.local.local`` objects (and in
``threading.local`` ones under monkey-patching, which libraries such as SQLAlchemy's
``scoped_session`` keep their state in), or set as attributes of ``getcurrent()``. In a
greenlet of its own, as with ``gevent.spawn``, a task starts with none of that.

gevent keeps a greenlet's locals through its ``__dict__``: one key per local object it
used there (a weak reference to the local's implementation), and, on the implementation, a
dict per greenlet, dropped by a weak-reference callback on the greenlet when the greenlet
is collected. A worker is not collected between tasks, so after a task that left anything
in its ``__dict__`` the worker calls `clear_locals`, which runs those callbacks now and
empties the ``__dict__``: the next task starts as a new greenlet would, and a local whose
class defines ``__init__`` runs it again on first use. A task that leaves nothing costs the
worker one truth test of an empty dict.
"""

from __future__ import annotations

import weakref
from typing import Any

import gevent.local
from greenlet import greenlet as Greenlet

#: The weak-reference callback gevent.local sets on a greenlet that used a local (private
#: to gevent, and absent from its stubs; tests/test_locals.py pins that it still works).
_greenlet_deleted: type[Any] = gevent.local._greenlet_deleted  # type: ignore[attr-defined]


def clear_locals(worker: Greenlet) -> None:
    """Forget every greenlet-local value and attribute ``worker`` holds."""
    for ref in weakref.getweakrefs(worker):
        forget = ref.__callback__
        if isinstance(forget, _greenlet_deleted):
            # What gevent runs when the greenlet is collected: drop its dict from the
            # local's implementation (a gevent.local.local used in this task).
            forget(ref)
    # The local's key, and any attribute the task set on getcurrent(). The key holds the
    # only reference to gevent's weak reference to the local, so its callback (which
    # would delete the key again) goes with it.
    worker.__dict__.clear()
