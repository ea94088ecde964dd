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
* Another SIGINT or SIGQUIT once a stop has begun (a second Ctrl-C; the master sends
  SIGQUIT when it gets SIGINT or SIGQUIT during a graceful stop, and SIGKILL 2 s later)
  ends the waiting at once, whether for the requests or for the drain, and what is
  abandoned is logged. Ctrl-C in a terminal reaches the worker twice, as its own SIGINT
  and as the master's SIGQUIT: the SIGQUIT that follows a SIGINT which began the stop is
  the same Ctrl-C, not a second one. (With the hooks, only `post_worker_init` sees the
  signals before the requests have finished; without it a second signal ends the drain
  only.)

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

import logging
import os
import signal
import time
from collections.abc import Callable
from functools import partial
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

    __slots__ = ("abandon", "beat", "began", "echo", "last_alive", "signalled")

    def __init__(self) -> None:
        now = time.monotonic()
        self.beat = now
        self.last_alive = now
        self.began: float | None = None
        # Whether a stop signal has arrived; whether the next SIGQUIT is the master's echo
        # of the SIGINT that began the stop; whether a second stop signal came.
        self.signalled = False
        self.echo = False
        self.abandon = False

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
        self.signalled = True
        self.echo = False

    def quit(self, sig: int) -> bool:
        """A SIGINT or SIGQUIT arrived: True if it is a second stop signal, after which
        nothing more is waited for (`abandon`).

        The first stop signal (SIGTERM, SIGINT or SIGQUIT) begins a graceful stop; any
        SIGINT or SIGQUIT after it is a second one, except the SIGQUIT that follows a
        SIGINT which began the stop: Ctrl-C in a terminal reaches the worker, and the
        master, which forwards it as SIGQUIT."""
        if not self.signalled:
            self.stopping()
            self.echo = sig == signal.SIGINT
            return False
        if self.echo and sig == signal.SIGQUIT:
            self.echo = False
            return False
        self.echo = False
        self.abandon = True
        return True

    def budget(self, cfg: Any, beating: bool) -> float:
        """Seconds the drain may take from now: what ``graceful_timeout`` leaves since the
        stop began and, unless the worker goes on ``beating``, ``timeout`` since the last
        heartbeat; less `MARGIN`, and never below 0; 0 after a second stop signal."""
        if self.abandon:
            return 0.0
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
    """gunicorn's ``post_worker_init`` hook: note when this worker's stop begins, the stop
    signals it gets and its heartbeats, so that `worker_exit` can take the time spent
    finishing requests off the drain's deadline and a second stop signal can end the
    wait for the requests too; and send the ``ggopool`` logger's lines to gunicorn's
    error log (its format, its ``--log-level``) while the application has given neither
    that logger nor the root logger a handler.

    It wraps the worker's ``notify`` (its heartbeat) and its handlers of SIGTERM, SIGINT
    and SIGQUIT. If the config defines a ``post_worker_init`` of its own, call this one
    from it. With the worker class it does nothing (the class keeps its own clock).
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
    if getattr(worker, "pid", None) == os.getpid():  # in the worker: its signals, its log
        _watch_signals(clock)
        _route_logs(worker.log)


def _watch_signals(clock: StopClock) -> None:
    """Let ``clock`` see each stop signal before the worker's own handler runs."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        original = signal.getsignal(sig)
        if callable(original):
            signal.signal(sig, partial(_stop_signal, clock, original))


def _stop_signal(
    clock: StopClock, original: Callable[[int, Any], Any], sig: int, frame: Any
) -> Any:
    if sig == signal.SIGTERM:
        clock.stopping()
    else:
        clock.quit(sig)
    return original(sig, frame)


class _ErrorLog(logging.Handler):
    """Hands the ``ggopool`` logger's records to gunicorn's error log (its handlers, its
    format, its level) when no other handler would take them."""

    def __init__(self, glog: Any) -> None:
        super().__init__()
        self.glog = glog

    def emit(self, record: logging.LogRecord) -> None:
        try:
            error_log = self.glog.error_log
            if not self._others() and error_log.isEnabledFor(record.levelno):
                error_log.handle(record)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def _others(self) -> bool:
        # A handler the application gave the ggopool logger or an ancestor (the root):
        # the line goes there instead.
        logger: logging.Logger | None = logging.getLogger("ggopool")
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


def _route_logs(glog: Any) -> None:
    """Send the ``ggopool`` logger's lines (the drain's notes, what it abandons) to
    gunicorn's error log: each with gunicorn's time, pid and level, at gunicorn's
    ``--log-level``. Only while the application has configured no handler of its own for
    the ``ggopool`` logger or the root logger; then its handlers take them, as anywhere
    else. The worker class and `post_worker_init` call it."""
    logger = logging.getLogger("ggopool")
    for handler in logger.handlers:
        if isinstance(handler, _ErrorLog):
            handler.glog = glog
            return
    logger.addHandler(_ErrorLog(glog))


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
    drain; a second stop signal ends the waiting.

    gunicorn's gevent worker calls it in a greenlet of its own that, once it returns,
    throws ``SystemExit`` into the worker's main greenlet. Holding that greenlet (up to
    ``graceful_timeout``, after which the master kills the worker anyway) lets the main
    greenlet close the server, finish the requests and leave through `worker_exit`. On a
    second stop signal (seen by `post_worker_init`'s handlers) it returns at once instead,
    unless the drain is running (which it ends): the main greenlet stops waiting for its
    requests, and `worker_exit` reports what is abandoned with no wait. With a worker class
    that calls it from the signal handler itself (not gevent's), or with ggopool's worker
    class (which stops this way by itself), it returns at once.
    """
    if getattr(worker, "ggopool_drains", False):
        return
    clock = _worker_clock()
    if clock is not None and not clock.signalled:
        clock.stopping()  # post_worker_init's handlers did not see the signal
    # The master's echo of a Ctrl-C (its SIGQUIT after the terminal's SIGINT) is the same
    # stop, not a second one: only a second stop ends a drain that is running.
    interrupted = (clock is None or clock.abandon) and _shutdown.interrupt_drain()
    if getcurrent().parent is None:
        return  # the main greenlet: not gunicorn's gevent worker, nothing to hold
    if interrupted:
        worker.log.info("ggopool: a second stop signal ended the drain")
    elif clock is not None and clock.abandon:
        worker.log.info("ggopool: a second stop signal ended the wait for the requests")
        return
    gevent.sleep(float(worker.cfg.graceful_timeout) + MARGIN)
