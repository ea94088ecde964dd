"""Stopping without losing tasks: the process-wide drain, and the drain at interpreter exit.

Every task a pool accepted is either run or reported: `drain` waits for this thread's pools
to finish what they hold, and when the process exits the same drain runs by itself, up to a
deadline, and logs one line per pool for whatever it had to abandon.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - imported before the exit: see below
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from gevent import kill
from gevent.hub import Hub
from greenlet import getcurrent
from greenlet import greenlet as Greenlet

from ggopool._config import check_timeout
from ggopool._pool import Pool, all_pools, refuse_hand_overs
from ggopool._threads import get_ident as _get_ident

if TYPE_CHECKING:
    from ggopool._task import Task

# concurrent.futures.thread is imported above, at import, not when a task first reaches
# gevent's threadpool (DNS through gevent's default resolver, say): importing
# gevent.threadpool imports it, it registers a callback with threading._register_atexit,
# and that raises "can't register atexit after shutdown" once the interpreter has begun to
# exit, which is when the exit drain runs such a task.

log = logging.getLogger("ggopool")

#: The exit drain's deadline unless `set_exit_drain` changes it, in seconds. Supervisors
#: send SIGTERM, then SIGKILL after a grace period: Docker after 10 s (``docker stop``),
#: Kubernetes after 30 s (``terminationGracePeriodSeconds``), gunicorn's master after its
#: ``graceful_timeout`` of 30 s. 5 s is half of the shortest, so a server has the other
#: half to finish the requests it is serving before the drain starts, and a process that
#: must abandon tasks lives long enough to say so before it is killed.
DEFAULT_EXIT_DRAIN = 5.0

#: After this many seconds of draining, one line says what the drain is waiting for.
NOTE_AFTER = 1.0

_exit_deadline: float | None = DEFAULT_EXIT_DRAIN
# Whether set_exit_drain chose the deadline: if not, a server that knows its own grace
# period (ggopool.gunicorn) gives the exit drain what the period leaves instead.
_exit_deadline_chosen = False
# The process whose exit drain has run (gunicorn's worker_exit runs it before the
# interpreter exits, and it runs only once); a forked child has another pid.
_exit_drained_pid: int | None = None
# The greenlet running a drain now, so that a second stop signal can interrupt it.
_drainer: Greenlet | None = None
# Pools whose tasks are a server's connections (ggopool.gunicorn's worker class): drain()
# does not wait for them.
_connection_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def serves_connections(pool: Pool) -> None:
    """Mark ``pool`` as a server's connection pool, which `drain` does not wait for (the
    server finishes its requests itself): a request that drains waits for every other pool,
    as under a server whose connections are on no ggopool pool."""
    _connection_pools.add(pool)


def set_exit_drain(deadline: float | None) -> None:
    """Change how long the drain at interpreter exit waits, or turn it off with None.

    When the interpreter exits (the main module returns, ``sys.exit()``, an uncaught
    exception or Ctrl-C, gunicorn's worker leaving), ggopool waits, like `drain`, until no
    pool of the main thread has a task queued or running, including tasks that running
    tasks queue meanwhile, for at most ``deadline`` seconds (default 5). It then logs, on
    the ``ggopool`` logger at WARNING (so it reaches stderr even when the application
    configured no logging), one line per pool it had to abandon::

        ggopool: pool 'audit': 37 tasks abandoned at exit (35 queued, 2 running) after the
        5.0 s deadline

    (one line). In a gunicorn worker (``ggopool.gunicorn``) it goes through gunicorn's
    error log instead, unless the application configured logging.
    A second Ctrl-C (or any exception thrown into the drain) ends it at once, with the
    same lines saying it was interrupted.

    ``deadline`` is seconds >= 0: 0 waits for nothing but still reports what is
    abandoned; ``math.inf`` waits as long as it takes, as the stdlib's
    ``ThreadPoolExecutor`` does at exit. ``None`` turns the exit drain off: nothing waits
    and nothing is reported. The default of 5 s is below the grace periods of the common
    supervisors (Docker 10 s, Kubernetes and gunicorn 30 s), which kill the process
    without a word. A bad ``deadline`` raises and changes nothing.

    In a gunicorn worker (``ggopool.gunicorn``'s worker class or hooks) the default is
    instead what gunicorn's ``graceful_timeout`` leaves once the worker's requests have
    finished, less a margin; a deadline set here replaces it, but never runs past that
    point either, so the report is written before gunicorn kills the worker.
    """
    global _exit_deadline, _exit_deadline_chosen
    if deadline is not None:
        if type(deadline) is bool or not isinstance(deadline, (int, float)):
            raise TypeError(f"deadline must be None or a number of seconds >= 0, got {deadline!r}")
        if math.isnan(deadline) or deadline < 0:
            raise ValueError(f"deadline must be None or a number of seconds >= 0, got {deadline!r}")
        deadline = float(deadline)
    _exit_deadline = deadline
    _exit_deadline_chosen = True


def drain(timeout: float | None = None) -> bool:
    """Wait until no pool of this thread has a task queued or running; False if ``timeout``
    passed first.

    For the end of a process's work, where ``pool.join()`` for each pool falls short: a
    task running on one pool may queue more on another (or on one already joined). The
    drain waits until every pool of the calling thread is quiet at the same moment::

        server.serve_forever()  # returned: SIGTERM stopped the server
        ggopool.drain(5.0)  # the background work of the requests it answered
        database.close()  # what those tasks needed

    Rules:

    * It covers every pool of the calling thread (the default pool included), as
      ``join()`` would; pools of other threads are theirs to drain.
    * If ``timeout`` seconds pass first it logs, on the ``ggopool`` logger at WARNING, one
      line per pool with what is left, ``ggopool: pool 'audit': 37 tasks unfinished
      (35 queued, 2 running) after the 5.0 s deadline``, and returns False. The tasks go
      on running whenever the hub runs again.
    * After one second it logs, once, what it is still waiting for.
    * An exception thrown into the waiting greenlet (Ctrl-C's KeyboardInterrupt, a
      ``gevent.Timeout``, a kill) is logged the same way, "when the drain was
      interrupted", and raised.
    * It does not wait for the connections of ggopool's gunicorn worker class (the
      requests are the server's to finish), as under ``-k gevent``, whose connections
      are on no ggopool pool: a request can drain.
    * From one of a pool's own tasks (other than a request, above) it would wait for
      itself, and from the hub it would block the loop: RuntimeError. ``timeout`` is
      checked as for ``join``.

    The interpreter runs the same drain at exit; see `set_exit_drain`.
    """
    timeout = check_timeout(timeout)
    current = getcurrent()
    if isinstance(current, Hub):
        raise RuntimeError("cannot drain from the hub: it would block the loop")
    # A server's connections are its own to finish: a request (or a greenlet it spawned)
    # that drains would wait for itself.
    skip = frozenset(_connection_pools)
    for pool in _pools_of_this_thread(skip):
        if current in pool._greenlets:
            raise RuntimeError(
                f"cannot drain from a task of pool {pool.name!r}: it would wait for itself"
            )
    # Only a drain in the main greenlet (a process's own stop) is one a second stop signal
    # ends (interrupt_drain): a request's, or a greenlet's it spawned, is its own business.
    return _drain(timeout, "unfinished", "", skip, stoppable=current.parent is None)


def _pools_of_this_thread(skip: Collection[Pool] = ()) -> list[Pool]:
    ident = _get_ident()
    pools = (pool for pool in list(all_pools) if pool._ident == ident and pool not in skip)
    return sorted(pools, key=_name)


def _name(pool: Pool) -> str:
    return pool.name


def _busy(skip: Collection[Pool] = ()) -> list[Pool]:
    return [pool for pool in _pools_of_this_thread(skip) if not pool._is_quiet()]


def _waiting_later(pools: list[Pool], before: float) -> list[Task[Any]]:
    """The ``spawn_later`` tasks of ``pools`` whose time comes by ``before`` (monotonic),
    the soonest first."""
    due = [(when, task) for pool in pools for task, when in list(pool._later.items())]
    return [task for when, task in sorted(due, key=_first) if when <= before]


def _first(pair: tuple[float, object]) -> float:
    return pair[0]


def _drain(
    timeout: float | None,
    left: str,
    hint: str,
    skip: Collection[Pool] = (),
    stoppable: bool = True,
) -> bool:
    """Wait until every pool of this thread (but those in ``skip``) is quiet at once, or ``timeout``
    passed; ``left`` says what unfinished tasks are in the report, ``hint`` ends the note.
    ``stoppable``: the drain `interrupt_drain` ends."""
    global _drainer
    started = time.monotonic()
    deadline = math.inf if timeout is None else started + timeout
    noted = False
    previous = _drainer
    if stoppable:
        _drainer = getcurrent()
    try:
        while True:
            # Nothing yields between the pools' checks: they are quiet at the same moment.
            busy = _busy(skip)
            # spawn_later's tasks are accepted work too: waited for if their time comes
            # within the deadline, and reported as left otherwise.
            due = _waiting_later(_pools_of_this_thread(skip), deadline)
            if not busy and not due:
                later = _waiting_later(_pools_of_this_thread(skip), math.inf)
                if later:
                    _report_later(later, left, f"due after the {timeout:.1f} s deadline")
                    return False
                return True
            now = time.monotonic()
            if now >= deadline:
                _report(busy, left, f"after the {timeout:.1f} s deadline")
                later = _waiting_later(_pools_of_this_thread(skip), math.inf)
                _report_later(later, left, f"after the {timeout:.1f} s deadline")
                return False
            wait = deadline - now
            if not noted:
                until_note = started + NOTE_AFTER - now
                if until_note <= 0:
                    noted = True
                    _note(busy, deadline - now, hint, due)
                else:
                    wait = min(wait, until_note)
            if busy:
                busy[0].join(wait)
            else:
                due[0].join(wait)  # the soonest: done once its time came and it ran
    except BaseException as exc:
        elapsed = time.monotonic() - started
        why = f"when the drain was interrupted by {type(exc).__name__} after {elapsed:.1f} s"
        _report(_busy(skip), left, why)
        _report_later(_waiting_later(_pools_of_this_thread(skip), math.inf), left, why)
        raise
    finally:
        if stoppable:
            _drainer = previous


def _note(busy: list[Pool], remaining: float, hint: str, due: list[Task[Any]]) -> None:
    try:
        tasks = len(due)
        busy = busy + [pool for pool in {task._pool: None for task in due} if pool not in busy]
        for pool in busy:
            stats = pool.stats()
            tasks += stats.pending + stats.running
        more = "as long as it takes" if math.isinf(remaining) else f"up to {remaining:.1f} s more"
        log.warning(
            "ggopool: draining: waiting %s for %d tasks of %s %s%s",
            more,
            tasks,
            "pool" if len(busy) == 1 else "pools",
            ", ".join(repr(pool.name) for pool in busy),
            hint,
        )
    except Exception:  # noqa: BLE001 - a report must never raise
        pass


def _report(busy: list[Pool], left: str, why: str) -> None:
    for pool in busy:
        try:
            stats = pool.stats()
            log.warning(
                "ggopool: pool %r: %d tasks %s (%d queued, %d running) %s",
                stats.name,
                stats.pending + stats.running,
                left,
                stats.pending,
                stats.running,
                why,
            )
        except Exception:  # noqa: BLE001 - a report must never raise
            pass


def _report_later(tasks: list[Task[Any]], left: str, why: str) -> None:
    """One line per pool for its ``spawn_later`` tasks that did not run (only str and int
    are formatted: it cannot raise)."""
    counts: dict[str, int] = {}
    for task in tasks:
        name = task._pool.name
        counts[name] = counts.get(name, 0) + 1
    for name, n in sorted(counts.items()):
        log.warning("ggopool: pool %r: %d spawn_later tasks %s, %s", name, n, left, why)


def interrupt_drain() -> bool:
    """End the drain running now (if any) as a second Ctrl-C would; True if there was one.

    For a stop signal that arrives while the process drains (gunicorn's ``worker_int``).
    """
    drainer = _drainer
    if drainer is None or drainer.dead:
        return False
    kill(drainer, KeyboardInterrupt)
    return True


def exit_drain(limit: float | None = None, budget: float | None = None) -> None:
    """The drain at interpreter exit: once per process, up to the exit deadline (and
    ``limit``, if given); never raises. ggopool.gunicorn runs it early.

    ``budget``: the seconds left before the process is killed, which a server that knows
    its grace period passes: the deadline unless `set_exit_drain` chose one, and a limit."""
    global _exit_drained_pid, _after_exit_drain
    pid = os.getpid()
    if _exit_drained_pid == pid:
        return
    _exit_drained_pid = pid
    deadline = _exit_deadline
    if deadline is None:
        return
    if budget is not None:
        deadline = min(deadline, budget) if _exit_deadline_chosen else budget
    if limit is not None:
        deadline = min(deadline, limit)
    try:
        current = getcurrent()
        if isinstance(current, Hub) or any(current in pool._greenlets for pool in _busy()):
            deadline = 0.0  # it cannot wait from here: report at once
        started = time.monotonic()
        try:
            _drain(
                None if math.isinf(deadline) else deadline,
                "abandoned at exit",
                "; Ctrl-C to abandon them",
            )
        finally:
            # The interpreter joins the other threads after this: their go() from now on
            # raises PoolClosed. What they handed over before is drained too, within what
            # is left of the deadline, or reported.
            refuse_hand_overs()
        if any(pool._in_flight() for pool in _pools_of_this_thread()):
            _drain(_left(deadline, started), "abandoned at exit", "; Ctrl-C to abandon them")
    except BaseException:  # noqa: BLE001 - reported by _drain; the exit goes on
        pass
    finally:
        _after_exit_drain = (pid, deadline, started, _Accepted())


def _left(deadline: float, started: float) -> float | None:
    """What is left of the exit drain's ``deadline`` (None: no limit)."""
    if math.isinf(deadline):
        return None
    return max(0.0, deadline - (time.monotonic() - started))


class _Accepted:
    """What this thread's pools had accepted when the exit drain ended, to tell a task
    accepted after it. (A count would not do: a spawn_later task cancelled since takes one
    away, and a pool collected since takes its own.)"""

    __slots__ = ("later", "submitted")

    def __init__(self) -> None:
        pools = _pools_of_this_thread()
        self.submitted = {pool: pool._submitted for pool in pools}  # never goes down
        self.later = {task for pool in pools for task in list(pool._later)}

    def since(self) -> bool:
        """Whether a pool of this thread has accepted a task since."""
        for pool in _pools_of_this_thread():
            if pool._submitted > self.submitted.get(pool, 0) or pool._in_flight():
                return True
            if any(task not in self.later for task in list(pool._later)):
                return True
        return False


#: After the exit drain in this process: its pid, deadline, start and what was accepted.
_after_exit_drain: tuple[int, float, float, _Accepted] | None = None


def _last_look() -> None:
    """atexit, after the application's atexit callbacks that ggopool's import preceded: a
    task one of them queued (``go()`` to flush a buffer, say) runs within what is left of
    the exit drain's deadline, or is logged as abandoned, instead of being lost silently.
    Never raises."""
    after = _after_exit_drain
    if after is None or after[0] != os.getpid():
        return  # no exit drain here, or it was turned off
    _, deadline, started, accepted = after
    try:
        if accepted.since():
            _drain(_left(deadline, started), "abandoned at exit", "; Ctrl-C to abandon them")
    except BaseException:  # noqa: BLE001 - reported by _drain; the exit goes on
        pass


def _register(callback: Callable[[], None]) -> None:
    # threading's exit callbacks run before the interpreter joins its other threads and
    # before every atexit callback, so an application's own atexit callbacks (closing
    # the connections its tasks use) run after the drain; concurrent.futures waits for
    # its executors from the same place.
    register: Callable[[Callable[[], None]], None] | None = getattr(
        threading, "_register_atexit", None
    )
    try:
        if register is not None:
            register(callback)
            return
    except RuntimeError:
        pass  # imported while the interpreter exits
    atexit.register(callback)


_register(exit_drain)
# atexit runs its callbacks last registered first: this one after those registered after
# ggopool was imported.
atexit.register(_last_look)
