"""gunicorn's stops as an operator meets them, in real gunicorn on 127.0.0.1 with real
signals, with ggopool's worker class and with ``-k gevent`` plus ggopool's hooks: a second
stop signal at any phase of a stop, the time requests take off the drain's deadline,
``ggopool.drain()`` from a request, HTTP/2 connections, ``--preload``'s scheduled tasks,
and the drain's lines in gunicorn's error log.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import gevent
import gevent.socket
import gevent.ssl
import h2.config
import h2.connection
import h2.events
import pytest

from tests.deploy_helpers import (
    LOOPBACK,
    WORKER_CLASS,
    Proc,
    client,
    fetch,
    free_port,
    gunicorn_booted,
    start_flask_gunicorn,
    subprocess_env,
    wait_until,
)
from tests.shutdown_scenarios import abandoned

KILLED = "was sent SIGKILL"

#: The worker class, and gunicorn's own gevent worker with ggopool's hooks.
WORKERS = pytest.mark.parametrize("worker", [WORKER_CLASS, "gevent"], ids=["class", "hooks"])

#: /queue queues 10 tasks that each take a minute on a pool of cap 1; /slow?SECONDS takes
#: that long (a minute by default), saying when it starts and when it ends; /drain queues
#: a short task and answers what ggopool.drain() returned (called from a greenlet the
#: request spawned, with ?spawned); anything else answers the pid.
STOP_APP = """
    import logging
    import os

    import gevent
    import ggopool

    if os.environ.get("APP_LOGGING"):
        logging.basicConfig(format="app's own log: %(message)s")

    background = ggopool.new_pool("background", 1)
    tasks = ggopool.new_pool("tasks", 2)


    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/queue":
            for _ in range(10):
                background.go(gevent.sleep, 60)
            body = "queued"
        elif path == "/slow":
            print("slow request started", flush=True)
            try:
                gevent.sleep(float(environ.get("QUERY_STRING") or 60))
            finally:
                print("slow request ended", flush=True)
            body = "slow"
        elif path == "/drain":
            done = []
            tasks.go(gevent.sleep, 0.2)
            tasks.go(done.append, "ran")
            if environ.get("QUERY_STRING") == "spawned":  # from a greenlet the request made
                body = f"{gevent.spawn(ggopool.drain, 10).get()} {done}"
            else:
                body = f"{ggopool.drain(10)} {done}"
        else:
            body = str(os.getpid())
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body.encode()]
"""

#: ggopool's hooks, for -k gevent.
HOOKS = "from ggopool.gunicorn import post_worker_init, worker_exit, worker_int  # noqa: F401\n"


def start(tmp_path: Path, worker: str, *options: str, **env: str) -> tuple[Proc, str, int, int]:
    """The app above under ``gunicorn -k worker -w 1`` (with the hooks for ``-k gevent``),
    once its worker has answered (so its signal handlers are in place): the process, its
    url, the master's pid and the worker's (0 if gunicorn's log level hides it)."""
    (tmp_path / "stop_app.py").write_text(textwrap.dedent(STOP_APP))
    (tmp_path / "hooks_conf.py").write_text(HOOKS)
    environ = subprocess_env(XDG_RUNTIME_DIR=str(tmp_path), **env)
    environ["PYTHONPATH"] = os.pathsep.join([str(tmp_path), environ["PYTHONPATH"]])
    url = f"http://{LOOPBACK}:{free_port()}"
    args = [sys.executable, "-m", "gunicorn", "-k", worker, "-w", "1", "-b", url[7:]]
    if worker == "gevent":
        args += ["-c", "python:hooks_conf"]
    proc = Proc([*args, *options, "stop_app:app"], environ)
    try:
        status, pid = wait_until(lambda: answer(url), 30, "the worker's first answer", 0.2)
        assert status == 200
    except BaseException:
        proc.stop()
        raise
    return proc, url, proc.pid, int(pid)


def answer(url: str) -> tuple[int, str] | None:
    try:
        return get(url, "/")
    except OSError:
        return None


def port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def get(url: str, path: str) -> tuple[int, str]:
    http = client(url)
    try:
        with http.get(path) as response:
            return int(response.status_code), response.read().decode()
    finally:
        http.close()


def send(url: str, path: str) -> gevent.socket.socket:
    """A request sent on a raw socket (an HTTP client would retry it elsewhere)."""
    sock = gevent.socket.create_connection((LOOPBACK, port(url)))
    sock.settimeout(20)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


def wait_listener_closed(url: str) -> None:
    """Wait until nothing accepts on the port: the worker has seen the stop."""

    def closed() -> bool:
        try:
            sock = gevent.socket.create_connection((LOOPBACK, port(url)), timeout=2)
        except ConnectionRefusedError:
            return True
        sock.close()
        return False

    wait_until(closed, 15, "the worker's listener to close", interval=0.1)


# -- a second stop signal, whatever the stop is waiting for ----------------------------------


@WORKERS
def test_a_second_stop_signal_ends_the_wait_for_requests_and_logs_what_is_abandoned(
    tmp_path: Path, worker: str
) -> None:
    proc, url, master, pid = start(tmp_path, worker)
    try:
        assert fetch(url, "/queue") == 200
        slow = send(url, "/slow")
        proc.wait_for(r"slow request started", 10)
        os.kill(master, signal.SIGTERM)
        wait_listener_closed(url)  # the worker is waiting for its request
        # Ctrl-C: the master says "Quick shutdown requested", sends SIGQUIT, and SIGKILLs
        # 2 s later.
        os.kill(master, signal.SIGINT)
        assert proc.wait(15) == 0, proc.output
        slow.close()
    finally:
        proc.stop()
    output = proc.output
    assert "Quick shutdown requested" in output, output
    assert KILLED not in output, output
    assert abandoned(output) == [10], output  # 1 running, 9 queued
    assert "ggopool: a second stop signal ended" in output, output
    assert f"Worker exiting (pid: {pid})" in output, output
    if worker == WORKER_CLASS:
        assert "slow request ended" in output, output  # ended, not left running


@WORKERS
def test_ctrl_c_reaching_the_worker_and_the_master_together_is_one_stop(
    tmp_path: Path, worker: str
) -> None:
    # A terminal's Ctrl-C reaches the worker as SIGINT and, through the master, as SIGQUIT:
    # one graceful stop, not a first and a second.
    proc, url, master, _pid = start(tmp_path, worker)
    try:
        slow = gevent.spawn(fetch, url, "/slow?2")
        proc.wait_for(r"slow request started", 10)
        os.kill(_pid, signal.SIGINT)
        os.kill(master, signal.SIGINT)
        assert slow.get(timeout=20) == 200
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    output = proc.output
    assert "second stop signal" not in output, output
    assert "abandoned" not in output, output
    assert KILLED not in output, output


# -- the stop's budget ------------------------------------------------------------------------


@WORKERS
def test_the_time_requests_take_comes_off_the_drains_deadline(tmp_path: Path, worker: str) -> None:
    # graceful_timeout 8 s from the SIGTERM; the request in flight takes some 4 s of them,
    # the margin 1 s: the drain's deadline is at most 3 s (8 s if counted from its start).
    proc, url, master, _pid = start(tmp_path, worker, "--graceful-timeout", "8")
    try:
        assert fetch(url, "/queue") == 200
        slow = gevent.spawn(fetch, url, "/slow?4")
        proc.wait_for(r"slow request started", 10)
        os.kill(master, signal.SIGTERM)
        assert slow.get(timeout=20) == 200
        assert proc.wait(20) == 0, proc.output
    finally:
        proc.stop()
    output = proc.output
    deadlines = [float(d) for d in re.findall(r"after the ([\d.]+) s deadline", output)]
    assert len(deadlines) == 1, output
    assert 0.5 <= deadlines[0] <= 3.5, output
    assert abandoned(output) == [10], output
    assert KILLED not in output, output


# -- ggopool.drain() from a request -----------------------------------------------------------


@WORKERS
def test_drain_from_a_request_waits_for_the_background_pools(tmp_path: Path, worker: str) -> None:
    proc, url, master, _pid = start(tmp_path, worker)
    try:
        assert get(url, "/drain") == (200, "True ['ran']")
        assert get(url, "/drain?spawned") == (200, "True ['ran']")
        os.kill(master, signal.SIGTERM)
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    assert "Traceback" not in proc.output, proc.output


# -- the drain's lines in gunicorn's error log ------------------------------------------------

#: gunicorn's error log line: time, pid, level.
GUNICORN_LINE = r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[%d\] \[WARNING\] %s"


def stopped_with_a_backlog(
    tmp_path: Path, worker: str, *options: str, **env: str
) -> tuple[str, int]:
    """The app stopped with 10 tasks it cannot finish: gunicorn's output, the worker's pid."""
    proc, url, master, pid = start(tmp_path, worker, "--graceful-timeout", "5", *options, **env)
    try:
        assert fetch(url, "/queue") == 200
        os.kill(master, signal.SIGTERM)
        assert proc.wait(20) == 0, proc.output
    finally:
        proc.stop()
    assert KILLED not in proc.output
    return proc.output, pid


@WORKERS
def test_the_drains_lines_go_to_gunicorns_error_log(tmp_path: Path, worker: str) -> None:
    output, pid = stopped_with_a_backlog(tmp_path, worker)
    line = GUNICORN_LINE % (pid, re.escape("ggopool: pool 'background': 10 tasks abandoned"))
    assert re.search(line, output, re.MULTILINE), output
    note = GUNICORN_LINE % (pid, re.escape("ggopool: draining: waiting"))
    assert re.search(note, output, re.MULTILINE), output


@WORKERS
def test_the_drains_lines_follow_gunicorns_log_level(tmp_path: Path, worker: str) -> None:
    output, _pid = stopped_with_a_backlog(tmp_path, worker, "--log-level", "error")
    assert "ggopool:" not in output, output


@WORKERS
def test_an_application_that_configured_logging_gets_the_drains_lines(
    tmp_path: Path, worker: str
) -> None:
    output, _pid = stopped_with_a_backlog(tmp_path, worker, APP_LOGGING="1")
    lines = [line for line in output.splitlines() if "tasks abandoned" in line]
    assert lines == [
        "app's own log: ggopool: pool 'background': 10 tasks abandoned at exit "
        f"(9 queued, 1 running) after the {lines[0].split()[-3]} s deadline"
    ], output


# -- --preload: what the master scheduled at import ------------------------------------------

PRELOADED_LATER_APP = """
    import os
    import ggopool

    startup = ggopool.new_pool("startup", 1)
    startup.task(print, "never").start_later(30)
    startup.task(print, "never").start_later(60)
    ggopool.spawn_later(60, print, "never")


    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
"""


def test_preload_spawn_later_and_start_later_in_the_master_are_reported(tmp_path: Path) -> None:
    (tmp_path / "later_app.py").write_text(textwrap.dedent(PRELOADED_LATER_APP))
    env = subprocess_env(XDG_RUNTIME_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    args = [sys.executable, "-m", "gunicorn", "-k", WORKER_CLASS, "-w", "1", "--preload"]
    proc = Proc([*args, "-b", f"{LOOPBACK}:0", "--graceful-timeout", "3", "later_app:app"], env)
    try:
        url, master, _workers = gunicorn_booted(proc, workers=1)
        assert fetch(url, "/") == 200
        os.kill(master, signal.SIGTERM)
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    output = proc.output
    reports = re.findall(
        r"ggopool: pool '([\w.]+)': (\d+) spawn_later tasks scheduled in gunicorn's master "
        r"\(pid (\d+)\)",
        output,
    )
    assert reports == [
        ("ggopool.DefaultPool", "1", str(master)),
        ("startup", "2", str(master)),
    ], output
    assert "schedule them in the post_fork hook" in output
    assert "never" not in output.replace("spawn_later", ""), output


# -- HTTP/2 -----------------------------------------------------------------------------------

#: HTTP/2 over cleartext from 127.0.0.1 (gunicorn trusts it), and HTTP/1.1 beside it.
H2 = ("--http-protocols", "h2,h1", "--http2-cleartext", "both")

#: gunicorn speaks HTTP/2 from version 27 on.
HTTP2 = pytest.mark.skipif(
    importlib.util.find_spec("gunicorn.http2") is None, reason="this gunicorn has no HTTP/2"
)


class H2Client:
    """An HTTP/2 client connection on a raw socket: with prior knowledge, or over TLS
    (ALPN ``h2``) with ``tls``."""

    def __init__(self, url: str, tls: bool = False) -> None:
        self.sock = gevent.socket.create_connection((LOOPBACK, port(url)))
        self.sock.settimeout(20)
        if tls:
            # gevent's own context (create_default_context would make the stdlib's, whose
            # sockets block the hub).
            context = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = gevent.ssl.CERT_NONE  # the test's own certificate
            context.set_alpn_protocols(["h2"])
            self.sock = context.wrap_socket(self.sock, server_hostname=LOOPBACK)
            assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def get(self, path: str) -> tuple[int, bytes]:
        """One request on a new stream: its status and body."""
        stream = self.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "t")]
        self.conn.send_headers(stream, headers, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        status, body = 0, b""
        while True:
            data = self.sock.recv(65536)
            assert data, "connection closed mid-response"
            for event in self.conn.receive_data(data):
                if getattr(event, "stream_id", None) != stream:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded):
                    self.sock.sendall(self.conn.data_to_send())
                    return status, body
            self.sock.sendall(self.conn.data_to_send())

    def until_closed(self) -> list[h2.events.Event]:
        """What the server sends until it closes the connection."""
        events: list[h2.events.Event] = []
        while data := self.sock.recv(65536):
            events += self.conn.receive_data(data)
        return events

    def close(self) -> None:
        self.sock.close()


@HTTP2
def test_http2_each_stream_of_a_connection_starts_fresh(tmp_path: Path) -> None:
    proc, url, master = start_flask_gunicorn(tmp_path, *H2)
    try:
        h2c = H2Client(url)
        answers = []
        for rid in ("one", "two", "three"):
            status, body = h2c.get(f"/state?rid={rid}")
            assert status == 200, body
            answers.append(json.loads(body))
        h2c.close()
        os.kill(master, signal.SIGTERM)
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    # One connection, one greenlet: what keeps them apart is the worker class.
    assert len({(a["connection"], a["ident"]) for a in answers}) == 1, answers
    for answer in answers:
        assert answer["before"] == {"g": None, "contextvar": None, "local": None}, answers


def start_flask_tls(tmp_path: Path, *options: str) -> tuple[Proc, str, int]:
    """tests/flask_app.py under the worker class over TLS with HTTP/2 (a self-signed
    certificate made by ``openssl``), once it has answered: the process, its url and the
    master's pid."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", f"/CN={LOOPBACK}", "-keyout", str(key), "-out", str(cert)),
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    url = f"https://{LOOPBACK}:{free_port()}"
    args = [sys.executable, "-m", "gunicorn", "-k", WORKER_CLASS, "-w", "1", "-b", url[8:]]
    args += ["--certfile", str(cert), "--keyfile", str(key), "--http-protocols", "h2,h1"]
    proc = Proc(
        [*args, *options, "tests.flask_app:app"], subprocess_env(XDG_RUNTIME_DIR=str(tmp_path))
    )

    def answered() -> bool:
        try:
            h2c = H2Client(url, tls=True)
        except OSError:
            return False
        try:
            return h2c.get("/state?rid=ready")[0] == 200
        finally:
            h2c.close()

    try:
        wait_until(answered, 30, "the worker's first answer over TLS", interval=0.2)
    except BaseException:
        proc.stop()
        raise
    return proc, url, proc.pid


@HTTP2
@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_http2_a_stop_closes_an_idle_connection_and_finishes_requests_in_flight(
    tmp_path: Path, tls: bool
) -> None:
    if tls and shutil.which("openssl") is None:
        pytest.skip("no openssl to make the test's certificate")
    options = ("--keep-alive", "30", "--graceful-timeout", "10")
    if tls:
        proc, url, master = start_flask_tls(tmp_path, *options)
    else:
        proc, url, master = start_flask_gunicorn(tmp_path, *H2, *options)
    try:
        idle = H2Client(url, tls)
        assert idle.get("/state?rid=idle")[0] == 200  # served; now idle, kept for 30 s
        other = H2Client(url, tls)
        slow = gevent.spawn(other.get, "/slow?seconds=5")
        proc.wait_for(r"slow request started", 10)
        os.kill(master, signal.SIGTERM)
        events = idle.until_closed()  # closed by the server, long before 30 s
        assert not slow.ready(), (
            slow.value,
            slow.exception,
            proc.output,
        )  # while the request in flight still runs
        assert [type(e) for e in events] == [h2.events.ConnectionTerminated], events
        idle.close()
        assert slow.get(timeout=20)[0] == 200
        other.close()
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    assert KILLED not in proc.output
    assert "[ERROR]" not in proc.output, proc.output


@HTTP2
def test_http2_a_stream_past_graceful_timeout_is_ended_quietly(tmp_path: Path) -> None:
    # Ended as an HTTP/1.1 request is (gunicorn's gevent worker takes the kill quietly):
    # reset, with no error logged, and the drain still runs before the kill.
    proc, url, master = start_flask_gunicorn(tmp_path, *H2, "--graceful-timeout", "3")
    try:
        slow = H2Client(url)
        stream = slow.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":path", "/slow?seconds=30"), (":scheme", "http")]
        slow.conn.send_headers(stream, [*headers, (":authority", "t")], end_stream=True)
        slow.sock.sendall(slow.conn.data_to_send())
        proc.wait_for(r"slow request started", 10)
        os.kill(master, signal.SIGTERM)
        events = slow.until_closed()  # the stream reset, then the connection closed
        slow.close()
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.stop()
    [reset] = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert reset.stream_id == stream, events
    assert "Worker graceful timeout" in proc.output, proc.output
    assert KILLED not in proc.output
    assert "[ERROR]" not in proc.output, proc.output
