"""The worker class: gunicorn's gevent worker, its connections on a ggopool pool, its pools
drained on every stop. Imports gunicorn; `ggopool.gunicorn` loads it when asked for."""

from __future__ import annotations

import contextvars
import fcntl
import logging
import math
import os
import sys
import termios
from functools import partial
from types import TracebackType
from typing import Any

import gevent
from gevent import Timeout
from gevent.server import StreamServer
from greenlet import getcurrent
from greenlet import greenlet as Greenlet
from gunicorn.sock import ssl_context  # type: ignore[import-untyped]
from gunicorn.workers import ggevent  # type: ignore[import-untyped]

from ggopool import _shutdown
from ggopool._config import Config
from ggopool._default import new_pool, register_pool
from ggopool._locals import clear_locals
from ggopool._pool import Pool
from ggopool.gunicorn import HEARTBEAT, StopClock, _route_logs, _set_clock

__all__ = ["GeventWorker"]

log = logging.getLogger("ggopool")

#: Seconds kept, out of what graceful_timeout leaves for the requests in flight, to end the
#: ones still running when it runs out.
ENDING = 0.5


class GeventWorker(ggevent.GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker on a ggopool pool, draining the process's pools as it stops.

    ``gunicorn -k ggopool.gunicorn.GeventWorker`` where an app runs ``-k gevent``; no hooks
    in the config (the hooks of `ggopool.gunicorn` do nothing in it)::

        gunicorn -k ggopool.gunicorn.GeventWorker -w 2 --preload app:app

    Rules:

    * It is ``-k gevent`` (gunicorn's HTTP parser on gevent's ``StreamServer``), not
      ``-k gevent_pywsgi``.
    * Connections run as tasks of one pool, named ``"gunicorn.connections"``
      (`CONNECTIONS`) and registered (`ggopool.get_pool`), of cap ``worker_connections``
      over all the worker's listeners; the listeners stop accepting while it is full.
    * Every request runs in a copy of the connection task's ``contextvars`` context and
      leaves no greenlet-local state (``gevent.local``, or ``threading.local`` under
      monkey-patching) behind: the next request on the same keep-alive connection (or the
      next stream of an HTTP/2 connection), or the next connection on the same worker
      greenlet, starts without what it set. `ggopool.drain` from a request waits for every
      pool but this one, as from a request of ``-k gevent``.
    * A stop (SIGTERM, SIGHUP's SIGTERM, ``--max-requests``, and SIGQUIT or SIGINT too,
      which gunicorn's gevent worker treats as an exit on the spot) closes the listeners,
      closes the keep-alive connections that wait between two requests (a connection where
      any byte of the next request has arrived is served, as ``-k gevent`` serves it; an
      HTTP/2 connection serving no stream, with nothing unread, gets a GOAWAY and closes),
      lets the requests in flight finish, then drains every pool of the process
      (`ggopool.drain`) while still sending its heartbeat. The requests get what
      ``graceful_timeout`` leaves since the stop began, less `ggopool.gunicorn.MARGIN` and
      half a second (to end those still running then), so that the drain's report comes
      before gunicorn's kill even when a request outlasts ``graceful_timeout``. The drain's
      deadline is what ``graceful_timeout`` leaves, less `ggopool.gunicorn.MARGIN`, unless
      `ggopool.set_exit_drain` chose one, cut to the same point; what it abandons is
      logged, one line per pool.
    * A second SIGQUIT or SIGINT at any point of the stop ends the waiting at once: the
      requests still running are ended (given half a second), the drain waits no longer
      (or, running, is ended), and what it abandons is logged, all within the 2 s the
      master leaves after its own SIGQUIT. The SIGQUIT that follows a SIGINT which began
      the stop is the same Ctrl-C, seen by the worker and through the master, not a second
      signal. The config's ``worker_int`` hook is still called on each.
    * In gunicorn's master (``--preload`` imports the app there), tasks queued at import
      never run in a worker (the master runs them as it exits), and neither do its
      ``spawn_later`` and ``start_later`` tasks; the master logs them once, pool by pool,
      as it makes its first worker: queue start-up work in the ``post_fork`` hook instead.
    * The ``ggopool`` logger's lines (the drain's notes and reports) go through gunicorn's
      error log, with its format and its ``--log-level``, while the application has given
      neither that logger nor the root logger a handler.
    """

    #: The name of the pool the connections run on.
    CONNECTIONS = "gunicorn.connections"

    #: Tells `ggopool.gunicorn`'s hooks that this worker drains by itself.
    ggopool_drains = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # gunicorn makes its workers in the master, before the fork.
        _route_logs(self.log)
        report_master_tasks()
        self.clock = StopClock()
        # Each connection's greenlet: its socket, the requests it has served, and while it
        # waits for another request on a kept-alive connection, the Timeout it waits under.
        self._connections: dict[Greenlet, _Connection] = {}
        self._pool: Pool | None = None

    # -- the main loop ---------------------------------------------------------------------

    def run(self) -> None:
        _set_clock(self.clock)
        _route_logs(self.log)
        pool = self._pool = self._connection_pool()
        servers = [self._server(listener, pool) for listener in self.sockets]
        for server in servers:
            server.start()
        while self.alive:
            self.notify()
            gevent.sleep(HEARTBEAT)
        try:
            for server in servers:
                server.close()
            self._close_between_requests()
            self._finish_requests(pool)
        finally:
            self._drain()

    def notify(self) -> None:
        self.clock.heartbeat(bool(self.alive))
        super().notify()

    def _connection_pool(self) -> Pool:
        # As gevent.pool.Pool(worker_connections), which gunicorn's gevent worker uses.
        config = Config(spawn_waits_when_full=True)
        pool = new_pool(self.CONNECTIONS, self.worker_connections, config)
        register_pool(pool)
        _shutdown.serves_connections(pool)
        return pool

    def _server(self, listener: Any, pool: Pool) -> StreamServer:
        # As gunicorn's gevent worker makes its servers, on the one connection pool.
        ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        listener.setblocking(1)
        handle = partial(self.handle, listener)
        server: StreamServer = StreamServer(  # type: ignore[call-overload]
            listener, handle=handle, spawn=pool, **ssl_args
        )
        if self.cfg.workers > 1:
            server.max_accept = 1
        return server

    def _finish_requests(self, pool: Pool) -> None:
        # The requests in flight finish, with the heartbeat going, for what graceful_timeout
        # leaves on the stop's clock (the main loop sees the stop up to a heartbeat late,
        # and the master kills at graceful_timeout after the signal), less the drain's
        # margin and the time to end them: the drain then still runs, and logs what it
        # abandons, before the kill.
        while pool.free_count() != pool.size:
            left = self.clock.budget(self.cfg, beating=True) - ENDING
            if self.clock.abandon:
                pool.kill(ENDING)  # a second stop signal: _quit ends them too
                return
            if left <= 0:
                self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
                # The listeners are closed already; the connections end here, waited
                # for no longer than ENDING (gevent's server.stop would wait 2 s each).
                pool.kill(ENDING)
                return
            self.notify()
            pool.join(min(HEARTBEAT, left))

    def _drain(self) -> None:
        beat = gevent.spawn(self._beat)
        try:
            _shutdown.exit_drain(budget=self.clock.budget(self.cfg, beating=True))
        finally:
            beat.kill()

    def _beat(self) -> None:
        while True:
            self.notify()
            gevent.sleep(HEARTBEAT)

    # -- stop signals ----------------------------------------------------------------------

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.clock.stopping()
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: Any) -> None:
        # gunicorn's would throw SystemExit into the main greenlet without closing the
        # server: the first stop signal stops as SIGTERM does instead, and a second one
        # ends whatever the stop waits for. Blocking calls and the config's hook run
        # outside the signal handler, in a greenlet.
        second = self.clock.quit(sig)
        self.alive = False
        gevent.spawn(self._quit, second)

    def _quit(self, second: bool) -> None:
        if second:
            self._end_the_wait()
        try:
            self.cfg.worker_int(self)
        except Exception:  # the config's hook must not stop the stop
            self.log.exception("Exception in worker_int hook")

    def _end_the_wait(self) -> None:
        # A second stop signal: the drain, if it runs, ends; otherwise the requests do (the
        # main greenlet's wait for them then returns, and the drain takes no time).
        pool = self._pool
        if _shutdown.interrupt_drain():
            self.log.info("ggopool: a second stop signal ended the drain")
        elif pool is not None and pool.free_count() != pool.size:
            self.log.info("ggopool: a second stop signal ended the requests in flight")
            pool.kill(ENDING)

    # -- connections and requests ----------------------------------------------------------

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        me = getcurrent()
        connection = self._connections[me] = _Connection(client)
        try:
            super().handle(listener, client, addr)
        finally:
            self._connections.pop(me, None)
            connection.unwatch()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        me = getcurrent()
        connection = self._connections.get(me)
        if connection is not None and connection.reader is None:
            connection.watch(getattr(req, "unreader", None))
        try:
            # A copy of the connection's context, never changed by a request: the next
            # request starts from the same one.
            return contextvars.copy_context().run(
                super().handle_request, listener_name, req, sock, addr
            )
        finally:
            if me.__dict__:
                clear_locals(me)
            if connection is not None:
                connection.served += 1

    def handle_http2(self, listener: Any, client: Any, addr: Any, *args: Any, **kwargs: Any) -> Any:
        connection = self._connections.get(getcurrent())
        if connection is not None:
            connection.http2 = True
        return super().handle_http2(listener, client, addr, *args, **kwargs)

    def handle_http2_request(self, listener_name: Any, req: Any, *args: Any) -> Any:
        # The streams of an HTTP/2 connection are served one after the other on its
        # greenlet: each starts fresh, as a request of a kept-alive HTTP/1.1 connection.
        me = getcurrent()
        connection = self._connections.get(me)
        if connection is not None:
            connection.streams += 1
        try:
            return contextvars.copy_context().run(
                super().handle_http2_request, listener_name, req, *args
            )
        except gevent.GreenletExit:
            # Ended by the stop (as gunicorn's gevent worker ends an HTTP/1.1 request): the
            # stream is reset, and the connection closes with a GOAWAY, since the worker
            # is no longer alive.
            return None
        finally:
            if me.__dict__:
                clear_locals(me)
            if connection is not None:
                connection.streams -= 1
                connection.served += 1

    def timeout_ctx(self) -> Any:
        return _NextRequest(self)

    def _close_between_requests(self) -> None:
        # Kept-alive connections waiting for another request close now; those reading
        # or serving one go on.
        hub = gevent.get_hub()
        for greenlet, connection in list(self._connections.items()):
            if connection.waiting is not None:
                hub.loop.run_callback(self._close_waiting, greenlet, connection.waiting)
            elif connection.http2 and not connection.streams:
                hub.loop.run_callback(self._close_idle_http2, greenlet, connection)

    def _close_waiting(self, greenlet: Greenlet, timeout: Timeout) -> None:
        # In the hub: the connection still waits under this timeout, and no byte of its
        # next request has arrived, not even one its greenlet has yet to read (nothing
        # yields between these checks and the throw). Its expiry ends the wait with no
        # request, as gunicorn's keep-alive timeout does, and the connection closes.
        connection = self._connections.get(greenlet)
        if connection is not None and connection.waiting is timeout and not connection.unread():
            greenlet.throw(timeout)

    def _close_idle_http2(self, greenlet: Greenlet, connection: _Connection) -> None:
        # In the hub, as _close_waiting: an HTTP/2 connection serving no stream, with no
        # byte unread, waits in its read between two streams (the stop's check of
        # self.alive comes only after that read). A socket timeout there is its idle
        # timeout: it sends GOAWAY and closes. (Anywhere else between two streams, a
        # write, the timeout closes it too.)
        if (
            self._connections.get(greenlet) is connection
            and not connection.streams
            and not connection.unread()
        ):
            greenlet.throw(TimeoutError("the worker is stopping"))


class _Connection:
    """A kept-alive connection as a stop sees it: idle between two requests only while it
    waits for the next one and no byte of that one has arrived.

    gunicorn's parser reads a request's headers in as many reads as they take, holding
    what it read where the worker cannot see it: so each read of the connection's reader
    that returns bytes ends the wait, and a stop then lets the request be served, as
    gunicorn's gevent worker does. (The parser also reads off, before the next request, a
    body the app left unread: such a connection then waits for its next request as under
    ``-k gevent``, up to the keep-alive timeout.)"""

    __slots__ = ("http2", "reader", "served", "sock", "streams", "waiting")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.served = 0
        # Whether it speaks HTTP/2, and how many of its streams are being served.
        self.http2 = False
        self.streams = 0
        # The parser's reader (gunicorn's SocketUnreader), once a request names it.
        self.reader: Any = None
        # The keep-alive Timeout it waits for its next request under, until a byte of it.
        self.waiting: Timeout | None = None

    def watch(self, reader: Any) -> None:
        """Wrap the reads of the parser's reader (gunicorn's SocketUnreader, the same for
        every request of the connection)."""
        chunk = getattr(reader, "chunk", None)
        if chunk is None:
            return
        self.reader = reader

        def read(*args: Any, **kwargs: Any) -> Any:
            data = chunk(*args, **kwargs)
            if data:
                self.waiting = None  # a request has begun: no longer idle
            return data

        reader.chunk = read

    def unwatch(self) -> None:
        # The connection has ended: the wrapper goes, and the cycle it made with the reader.
        if self.reader is not None:
            vars(self.reader).pop("chunk", None)
            self.reader = None

    def buffered(self) -> bool:
        """Whether the parser holds bytes it read ahead: the next request has begun (a
        client pipelining its requests)."""
        buf = getattr(self.reader, "buf", None)
        if buf is None:
            return False
        with buf.getbuffer() as view:
            return bool(view.nbytes)

    def unread(self) -> bool:
        """Whether bytes wait to be read: buffered by the parser, decrypted by the TLS
        layer, or in the kernel (a request sent, its greenlet not yet scheduled)."""
        if self.buffered():
            return True
        try:
            pending = getattr(self.sock, "pending", None)
            if pending is not None and pending() > 0:
                return True
            count = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, bytes(4))
        except (OSError, ValueError):
            return False  # closed: nothing to serve
        return int.from_bytes(count, sys.byteorder) > 0


class _NextRequest:
    """What gunicorn's keep-alive loop waits for the next request under: its keep-alive
    timeout, marked as between two requests on a connection that has served one, until a
    byte of the next one arrives."""

    __slots__ = ("connection", "timeout", "worker")

    def __init__(self, worker: GeventWorker) -> None:
        self.worker = worker
        self.connection = worker._connections.get(getcurrent())
        # False: when it expires it ends the wait silently, as gunicorn's own does.
        self.timeout = Timeout(worker.cfg.keepalive, False)  # type: ignore[arg-type]

    def __enter__(self) -> Timeout:
        connection = self.connection
        if connection is None or not connection.served or connection.buffered():
            # Its first request, or a next one already begun: not idle.
            self.timeout.start()
            return self.timeout
        if not self.worker.alive and not connection.unread():
            raise StopIteration  # stopping, nothing sent: gunicorn's loop closes it
        self.timeout.start()
        connection.waiting = self.timeout
        return self.timeout

    def __exit__(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self.connection is not None:
            self.connection.waiting = None
        return self.timeout.__exit__(typ, value, tb)


_master_reported: int | None = None


def report_master_tasks() -> None:
    """Log, once per process, the pools that hold tasks in gunicorn's master: queued or
    running, and scheduled with ``spawn_later`` or ``start_later``."""
    global _master_reported
    pid = os.getpid()
    if _master_reported == pid:
        return
    pools = _shutdown._pools_of_this_thread()
    busy = _shutdown._busy()
    later: dict[str, int] = {}
    for task in _shutdown._waiting_later(pools, math.inf):
        name = task._pool.name
        later[name] = later.get(name, 0) + 1
    if not busy and not later:
        return
    _master_reported = pid
    for pool in busy:
        try:
            stats = pool.stats()
            log.warning(
                "ggopool: pool %r: %d tasks queued in gunicorn's master (pid %d), which "
                "serves no requests, so no worker runs them (they run when the master "
                "exits): queue start-up work in the post_fork hook",
                stats.name,
                stats.pending + stats.running,
                pid,
            )
        except Exception:  # noqa: BLE001 - a report must never raise
            pass
    for name, count in sorted(later.items()):
        log.warning(
            "ggopool: pool %r: %d spawn_later tasks scheduled in gunicorn's master (pid %d), "
            "which serves no requests, so no worker runs them (each worker cancels its copy "
            "at the fork): schedule them in the post_fork hook",
            name,
            count,
            pid,
        )
