"""gunicorn server hooks: a gevent worker that stops finishes its pools' tasks first.

Put them in the gunicorn config file (``-c python:myapp.gunicorn_conf`` or
``gunicorn.conf.py``)::

    from ggopool.gunicorn import worker_exit, worker_int  # noqa: F401

and run ``gunicorn -k gevent ...``. Importing this module does not import gunicorn.

What each stop of a gevent worker then does:

* SIGTERM to the master (graceful stop), SIGHUP (reload: the old workers get SIGTERM),
  ``--max-requests`` (the worker recycles itself): the worker stops accepting, finishes
  the requests it is serving, then `worker_exit` drains its pools, up to the exit drain's
  deadline (`ggopool.set_exit_drain`, 5 s by default), and logs one line per pool for
  whatever it abandons.
* SIGINT or SIGQUIT (quick stop, Ctrl-C): gunicorn's gevent worker would leave at once by
  throwing ``SystemExit`` into its main greenlet, skipping the close of its server, so a
  drain after it would go on accepting requests. `worker_int` holds that exit back: the
  worker then stops the way a graceful stop does, and drains.
* Another SIGINT or SIGQUIT while the worker drains (a second Ctrl-C; the master sends
  SIGQUIT when it gets SIGINT or SIGQUIT during a graceful stop) ends the drain at once,
  and what it abandons is logged.

Deadlines: the master kills a worker with SIGKILL ``graceful_timeout`` (30 s) after a stop
began, and a recycling or reloaded worker ``timeout`` (30 s) after its last heartbeat,
which it cannot send while it drains; a draining worker keeps its slot, so its
replacement is forked only after it exits. `worker_exit` never waits longer than one
second less than the smaller of the two, so the report is written before a kill; the time
the worker spent finishing its requests is not taken off, so keep the exit drain's
deadline below ``graceful_timeout`` minus your longest request.
"""

from __future__ import annotations

import os
from typing import Any

import gevent
from greenlet import getcurrent

from ggopool import _shutdown

__all__ = ["worker_exit", "worker_int"]

#: Seconds `worker_exit` keeps free before the master's kill, to log and exit.
MARGIN = 1.0


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook: drain this worker's pools before it exits.

    Runs the exit drain (see `ggopool.set_exit_drain`) in the worker's main greenlet,
    after its server closed and its requests finished; at most until ``MARGIN`` (1 s)
    before the earlier of ``graceful_timeout`` and ``timeout``. The interpreter's own exit
    drain then has nothing left to do. Called by the master for a worker that had already
    gone, it does nothing.
    """
    if getattr(worker, "pid", None) != os.getpid():
        return
    cfg = worker.cfg
    limits = [float(cfg.graceful_timeout)]
    if cfg.timeout:
        limits.append(float(cfg.timeout))
    _shutdown.exit_drain(limit=max(0.0, min(limits) - MARGIN))


def worker_int(worker: Any) -> None:
    """gunicorn's ``worker_int`` hook (SIGINT, SIGQUIT): stop like a graceful stop, then
    drain; a second signal during the drain ends it.

    gunicorn's gevent worker calls it in a greenlet of its own that, once it returns,
    throws ``SystemExit`` into the worker's main greenlet. Holding that greenlet (up to
    ``graceful_timeout``, after which the master kills the worker anyway) lets the main
    greenlet close the server, finish the requests and leave through `worker_exit`. With a
    worker class that calls it from the signal handler itself (not gevent's), it returns
    at once.
    """
    interrupted = _shutdown.interrupt_drain()
    if getcurrent().parent is None:
        return  # the main greenlet: not gunicorn's gevent worker, nothing to hold
    if interrupted:
        worker.log.info("ggopool: a second stop signal ended the drain")
    gevent.sleep(float(worker.cfg.graceful_timeout) + MARGIN)
