"""gunicorn integration: a gevent worker class whose workers drain their pools on every stop,
and the same drain as hooks for ``-k gevent``.

The worker class (extra ``loadtests`` or any install with gunicorn)::

    gunicorn -k ggopool.gunicorn.GeventWorker -w 2 app:app

is gunicorn's gevent worker with its connections on a ggopool pool named
``"gunicorn.connections"`` (``worker_connections`` at once; registered, so ``stats()``
readers and `ggopool.prometheus.PoolCollector` see it), every request in a fresh
``contextvars`` context and fresh greenlet-local state, and the drain built in: see
`ggopool.gunicorn._worker.GeventWorker`. Importing this module does not import gunicorn;
the class is loaded when first asked for.

The hooks, for ``-k gevent``, go in the gunicorn config file (``-c python:myapp.conf``)::

    from ggopool.gunicorn import post_worker_init, worker_exit, worker_int  # noqa: F401

What each stop of a worker then does (with the class, or with the hooks):

* SIGTERM to the master (graceful stop), SIGHUP (reload: the old workers get SIGTERM),
  ``--max-requests`` (the worker recycles itself): the worker stops accepting, finishes
  the requests it is serving, then drains its pools and logs one line per pool for
  whatever it abandons.
* SIGINT or SIGQUIT (quick stop, Ctrl-C): gunicorn's gevent worker would leave at once,
  skipping the close of its server. The worker stops the way a graceful stop does instead.
* Another SIGINT or SIGQUIT while the worker drains (a second Ctrl-C; the master sends
  SIGQUIT when it gets SIGINT or SIGQUIT during a graceful stop) ends the drain at once,
  and what it abandons is logged.

The drain's deadline is gunicorn's: the master SIGKILLs a worker ``graceful_timeout``
(30 s) after a stop began, and a worker that sends no heartbeat for ``timeout`` (30 s).
Unless `ggopool.set_exit_drain` chose a deadline, the drain takes what is left of
``graceful_timeout`` once the requests have finished, less `MARGIN`; a deadline chosen
there is cut to the same point, so the report is written before any kill. The worker class
sends its heartbeat while it drains; with the hooks the worker cannot, so ``timeout``
bounds the drain too. `post_worker_init` lets the hooks see when the stop began and the
last heartbeat; without it they take the stop to have begun when the requests finished.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import gevent
from greenlet import getcurrent

from ggopool import _shutdown

if TYPE_CHECKING:
    from ggopool.gunicorn._worker import GeventWorker

__all__ = ["MARGIN", "GeventWorker", "post_worker_init", "worker_exit", "worker_int"]

#: Seconds the drain keeps free before gunicorn's kill, to log and exit.
MARGIN = 1.0

#: Seconds between two heartbeats of gunicorn's gevent worker (its main loop's sleep).
HEARTBEAT = 1.0


def __getattr__(name: str) -> Any:
    # -k ggopool.gunicorn.GeventWorker: gunicorn imports this module, then asks for the
    # class; only then is gunicorn imported.
    if name == "GeventWorker":
        from ggopool.gunicorn._worker import GeventWorker

        return GeventWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class StopClock:
    """When a worker's stop began and when it last sent its heartbeat (monotonic seconds).

    gunicorn's gevent worker checks ``alive`` once a second, right after its heartbeat, so
    it may learn of a SIGTERM up to a second late. A stop not yet seen to begin (no stop
    signal reached `stopping`, no heartbeat found the worker stopping) is taken to have
    begun at the last heartbeat that found the worker alive: never later than the truth,
    so the drain never outlives gunicorn's budget.
    """

    __slots__ = ("beat", "began", "last_alive")

    def __init__(self) -> None:
        now = time.monotonic()
        self.beat = now
        self.last_alive = now
        self.began: float | None = None

    def heartbeat(self, alive: bool) -> None:
        self.beat = now = time.monotonic()
        if alive:
            self.last_alive = now
        elif self.began is None:
            self.began = self.last_alive

    def stopping(self) -> None:
        """A stop signal arrived: the stop began now, if not before."""
        if self.began is None:
            self.began = time.monotonic()

    def budget(self, cfg: Any, beating: bool) -> float:
        """Seconds the drain may take from now: what ``graceful_timeout`` leaves since the
        stop began and, unless the worker goes on ``beating``, ``timeout`` since the last
        heartbeat; less `MARGIN`, and never below 0."""
        now = time.monotonic()
        began = self.last_alive if self.began is None else self.began
        limits = [float(cfg.graceful_timeout) - (now - began)]
        if not beating and cfg.timeout:
            limits.append(float(cfg.timeout) - (now - self.beat))
        return max(0.0, min(limits) - MARGIN)


# The clock of this process's worker, if post_worker_init (or the worker class) made one.
_clock: StopClock | None = None
_clock_pid: int | None = None


def _worker_clock() -> StopClock | None:
    return _clock if _clock_pid == os.getpid() else None


def _set_clock(clock: StopClock) -> None:
    global _clock, _clock_pid
    _clock, _clock_pid = clock, os.getpid()


def post_worker_init(worker: Any) -> None:
    """gunicorn's ``post_worker_init`` hook: note when this worker's stop begins and its
    heartbeats, so that `worker_exit` can take the time spent finishing requests off the
    drain's deadline.

    It wraps the worker's ``notify`` (its heartbeat). If the config defines a
    ``post_worker_init`` of its own, call this one from it. With the worker class it does
    nothing (the class keeps its own clock).
    """
    if getattr(worker, "ggopool_drains", False):
        return
    clock = StopClock()
    _set_clock(clock)
    notify = worker.notify

    def heartbeat() -> None:
        clock.heartbeat(bool(worker.alive))
        notify()

    worker.notify = heartbeat


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook: drain this worker's pools before it exits.

    Runs the exit drain (see `ggopool.set_exit_drain`) in the worker's main greenlet,
    after its server closed and its requests finished, for what ``graceful_timeout`` and
    ``timeout`` leave (see the module's docstring). The interpreter's own exit drain then
    has nothing left to do. Called by the master for a worker that had already gone, or
    in a worker of the worker class (which has drained already), it does nothing.
    """
    if getattr(worker, "pid", None) != os.getpid():
        return
    clock = _worker_clock()
    if clock is None:
        clock = StopClock()  # no post_worker_init: the stop and the heartbeat taken as now
    _shutdown.exit_drain(budget=clock.budget(worker.cfg, beating=False))


def worker_int(worker: Any) -> None:
    """gunicorn's ``worker_int`` hook (SIGINT, SIGQUIT): stop like a graceful stop, then
    drain; a second signal during the drain ends it.

    gunicorn's gevent worker calls it in a greenlet of its own that, once it returns,
    throws ``SystemExit`` into the worker's main greenlet. Holding that greenlet (up to
    ``graceful_timeout``, after which the master kills the worker anyway) lets the main
    greenlet close the server, finish the requests and leave through `worker_exit`. With a
    worker class that calls it from the signal handler itself (not gevent's), or with
    ggopool's worker class (which stops this way by itself), it returns at once.
    """
    if getattr(worker, "ggopool_drains", False):
        return
    clock = _worker_clock()
    if clock is not None:
        clock.stopping()
    interrupted = _shutdown.interrupt_drain()
    if getcurrent().parent is None:
        return  # the main greenlet: not gunicorn's gevent worker, nothing to hold
    if interrupted:
        worker.log.info("ggopool: a second stop signal ended the drain")
    gevent.sleep(float(worker.cfg.graceful_timeout) + MARGIN)
