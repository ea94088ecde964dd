"""Each task starts with fresh greenlet-local state, although tasks share worker greenlets:
gevent.local, threading.local under monkey-patching (in a subprocess, so the patching stays
there), attributes set on getcurrent()."""

from __future__ import annotations

import gc
import textwrap
import weakref
from typing import Any

import gevent
import gevent.local

import ggopool
from ggopool._locals import _greenlet_deleted
from tests.subprocess_helpers import run_python


class Counter(gevent.local.local):
    def __init__(self) -> None:
        self.n = 0


def test_gevent_local_and_getcurrent_attributes_are_fresh_in_each_go_task() -> None:
    pool = ggopool.new_pool("locals", 1)  # one worker runs them all
    plain = gevent.local.local()
    counter = Counter()
    seen: list[tuple[Any, ...]] = []

    def task(i: int) -> None:
        me = gevent.getcurrent()
        seen.append((id(me), getattr(plain, "x", None), counter.n, getattr(me, "tag", None)))
        plain.x = i
        counter.n += 1
        me.tag = i  # type: ignore[attr-defined]

    for i in range(3):
        pool.go(task, i)
    pool.join()
    assert len({worker for worker, *_ in seen}) == 1  # the same worker ran all three
    # None left by the task before; the subclass's __init__ ran again in each task.
    assert [rest for _, *rest in seen] == [[None, 0, None]] * 3


def test_a_task_that_leaves_nothing_leaves_the_worker_dict_empty() -> None:
    pool = ggopool.new_pool("locals", 1)
    local = gevent.local.local()
    worker = pool.submit(gevent.getcurrent).get()
    pool.submit(setattr, local, "x", 1).get()
    gevent.idle()
    assert worker.__dict__ == {}
    assert pool.submit(getattr, local, "x", None).get() is None


def test_the_state_is_dropped_not_kept_for_a_later_lookup() -> None:
    pool = ggopool.new_pool("locals", 1)
    local = gevent.local.local()

    class Big:
        pass

    big = Big()
    ref = weakref.ref(big)
    pool.submit(setattr, local, "big", big).get()
    del big
    gevent.idle()
    gc.collect()
    assert ref() is None  # nothing holds the value the task left: the worker let it go


def test_gevent_still_has_the_callback_the_clearing_relies_on() -> None:
    # gevent.local's private class: if a gevent release renames it, this fails first.
    assert isinstance(_greenlet_deleted, type)
    assert _greenlet_deleted.__name__ == "_greenlet_deleted"


PATCHED = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import gc, threading
    import gevent
    import ggopool

    session = threading.local()          # what scoped_session keeps its session in
    class Request(threading.local):
        def __init__(self):
            self.user = "anonymous"
    request = Request()
    pool = ggopool.new_pool("patched", 1)
    seen = []

    def handle(i):
        seen.append((getattr(session, "conn", None), request.user))
        session.conn = "conn-%d" % i
        request.user = "user-%d" % i

    for i in range(3):
        pool.spawn(handle, i)
    pool.join()
    del session, request                 # the locals go while the worker lives on
    gc.collect()
    pool.spawn(int).get()
    print(seen)
    """
)


def test_threading_local_under_monkey_patching_is_fresh_in_each_task() -> None:
    proc = run_python(PATCHED)
    assert proc.stdout.strip() == str([(None, "anonymous")] * 3)
    assert proc.stderr == ""  # no "Exception ignored" from a weak-reference callback
