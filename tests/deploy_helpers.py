"""What the deployment tests share: real subprocesses read without blocking the hub, a
loopback HTTP client, a webhook receiver, and waiting on a condition under a deadline.

Everything binds or connects to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import gevent
import gevent.socket
from gevent import subprocess
from gevent.pywsgi import WSGIServer
from geventhttpclient import HTTPClient

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

T = TypeVar("T")

#: The repository root: the subprocesses' working directory and import path.
REPO = Path(__file__).absolute().parents[1]
LOOPBACK = "127.0.0.1"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: ours, with the repository importable first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def imported_with_ggopool(prefix: str) -> list[str]:
    """The modules whose names start with ``prefix`` that ``import ggopool`` loads, in a
    fresh interpreter (an optional integration must not load its library unasked)."""
    check = (
        f"import sys, ggopool; print(*sorted(m for m in sys.modules if m.startswith({prefix!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", check],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return out.stdout.split()


def free_port() -> int:
    """A port free on 127.0.0.1 now (for programs that cannot be told to bind port 0)."""
    with gevent.socket.socket(gevent.socket.AF_INET, gevent.socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds saying ``what`` was awaited."""
    with gevent.Timeout(timeout, AssertionError(f"timed out after {timeout} s waiting for {what}")):
        while True:
            value = condition()
            if value:
                return value
            gevent.sleep(interval)


class Proc:
    """A subprocess whose merged stdout and stderr a greenlet reads into `lines`, so the
    test can wait for a line without blocking the hub and the pipe never fills."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            args,
            cwd=REPO,
            env=env if env is not None else subprocess_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = gevent.spawn(self._read)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _read(self) -> None:
        stdout = self.popen.stdout
        assert stdout is not None
        for raw in stdout:
            self.lines.append(raw.decode(errors="replace"))

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> list[re.Match[str]]:
        """Wait until ``count`` lines of output match ``pattern``; return their matches."""
        regex = re.compile(pattern)

        def matches() -> list[re.Match[str]] | None:
            found = [m for m in map(regex.search, self.lines) if m]
            if len(found) >= count:
                return found[:count]
            if self.popen.poll() is not None and self._reader.dead:
                raise AssertionError(
                    f"{self.args[:3]} exited with {self.popen.returncode} before printing "
                    f"{pattern!r}; output:\n{self.output}"
                )
            return None

        try:
            return wait_until(matches, timeout, f"{pattern!r} from {self.args[:3]}")
        except AssertionError as e:
            raise AssertionError(f"{e}; output:\n{self.output}") from None

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself, and its output to be read; its exit code."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.args[:3]} still running after {timeout} s; output:\n{self.output}"
            ) from None
        self._reader.join(5)
        return code

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate (then kill) the process if it runs, and close its pipe."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        self._reader.join(timeout)
        self._reader.kill()
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@contextmanager
def running(args: list[str], env: dict[str, str] | None = None) -> Iterator[Proc]:
    """`Proc` as a context manager: the process is stopped however the block ends."""
    proc = Proc(args, env)
    try:
        yield proc
    finally:
        proc.stop()


def start_app(*options: str, env: dict[str, str] | None = None) -> tuple[Proc, str]:
    """``python -m loadtests.app --port 0 ...``; the running process and its base URL."""
    proc = Proc([sys.executable, "-m", "loadtests.app", "--port", "0", *options], env)
    try:
        [match] = proc.wait_for(r"listening on (http://127\.0\.0\.1:\d+)", timeout=15)
    except BaseException:
        proc.stop()
        raise
    return proc, match.group(1)


#: ggopool's gunicorn worker class, as given to ``-k``.
WORKER_CLASS = "ggopool.gunicorn.GeventWorker"


def gunicorn_args(*options: str, worker_class: str = "gevent") -> list[str]:
    """``gunicorn -k gevent -w 2 --preload`` serving the load-test app with its config, on a
    free port of 127.0.0.1; ``options`` go before the app (a ``-k`` among them wins)."""
    args = [sys.executable, "-m", "gunicorn", "-k", worker_class, "-w", "2", "--preload"]
    args += ["-b", f"{LOOPBACK}:0", "-c", "python:loadtests.gunicorn_conf", *options]
    return [*args, "loadtests.app:app"]


def read_response(sock: gevent.socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return head


def start_flask_gunicorn(tmp_path: Path, *options: str) -> tuple[Proc, str, int]:
    """tests/flask_app.py under gunicorn with the worker class and one worker, once the
    worker has answered a request (so its signal handlers are in place): the process, its
    url and the master's pid."""
    args = [sys.executable, "-m", "gunicorn", "-k", WORKER_CLASS, "-w", "1", "-b", f"{LOOPBACK}:0"]
    proc = Proc(
        [*args, *options, "tests.flask_app:app"], subprocess_env(XDG_RUNTIME_DIR=str(tmp_path))
    )
    try:
        [listening] = proc.wait_for(r"Listening at: (http://127\.0\.0\.1:\d+) \((\d+)\)", 20)
        url = listening.group(1)
        proc.wait_for(r"Booting worker with pid", 20)

        def answered() -> bool:
            http = client(url)
            try:
                with http.get("/state?rid=ready") as response:
                    return bool(response.status_code == 200)
            except OSError:
                return False
            finally:
                http.close()

        wait_until(answered, 20, "the worker's first answer", interval=0.2)
    except BaseException:
        proc.stop()
        raise
    return proc, url, int(listening.group(2))


def fetch(url: str, path: str) -> int:
    http = client(url)
    try:
        with http.get(path) as response:
            response.read()
            return int(response.status_code)
    finally:
        http.close()


#: Locust, run by this interpreter.
LOCUST = [sys.executable, "-m", "locust"]


def headless(locustfile: str, url: str, run_time: str, *extra: str) -> list[str]:
    """``locust --headless`` with 10 users against ``url`` for ``run_time``, printing only
    the summary and exiting 3 on any error; ``extra`` options last."""
    return [
        *LOCUST,
        "-f",
        locustfile,
        "--headless",
        "-u",
        "10",
        "-r",
        "10",
        "-t",
        run_time,
        "-H",
        url,
        "--only-summary",
        "--exit-code-on-error",
        "3",
        *extra,
    ]


def gunicorn_booted(proc: Proc, workers: int = 2) -> tuple[str, int, set[int]]:
    """Wait until gunicorn's master listens and its ``workers`` have booted: its url, the
    master's pid and the workers' pids."""
    [listening] = proc.wait_for(r"Listening at: (http://127\.0\.0\.1:\d+) \((\d+)\)", 20)
    booted = proc.wait_for(r"Booting worker with pid: (\d+)", 20, count=workers)
    return listening.group(1), int(listening.group(2)), {int(m.group(1)) for m in booted}


def client(base_url: str, concurrency: int = 1) -> HTTPClient:
    return HTTPClient.from_url(
        base_url, concurrency=concurrency, connection_timeout=5.0, network_timeout=15.0
    )


def request_json(
    http: HTTPClient, method: str, path: str, body: object | None = None
) -> tuple[int, Any]:
    """Send a request; the status and the JSON body of the answer."""
    data = b"" if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    with http.request(method, path, body=data, headers=headers) as response:
        return response.status_code, json.loads(response.read())


def stats(http: HTTPClient) -> dict[str, Any]:
    status, payload = request_json(http, "GET", "/stats")
    assert status == 200, payload
    assert isinstance(payload, dict)
    return payload


def fresh(url: str, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
    """One request on a connection of its own (keep-alive would pin the client to one
    gunicorn worker): the status and the JSON body of the answer."""
    http = client(url)
    try:
        return request_json(http, method, path, body)
    finally:
        http.close()


def answer_from_each_worker(
    url: str,
    pids: set[int],
    method: str,
    path: str,
    body: object | None = None,
    timeout: float = 30.0,
) -> dict[int, Any]:
    """Send ``method path`` on fresh connections until every process in ``pids`` has
    answered, and return the last answer of each (a JSON object with its ``pid``).

    The kernel hands each new connection to whichever gunicorn worker accepts first, and a
    loaded machine can favour one worker for many connections in a row: each round sends
    several requests at once so that every worker's accept loop wakes, and rounds go on
    until the deadline, never for a fixed count."""
    found: dict[int, Any] = {}

    def ask() -> None:
        status, answer = fresh(url, method, path, body)
        assert status in (200, 202), answer
        found[answer["pid"]] = answer

    def everyone() -> bool:
        gevent.joinall([gevent.spawn(ask) for _ in range(ROUND)], raise_error=True)
        return pids <= set(found)

    try:
        wait_until(everyone, timeout, f"{method} {path} to reach every worker of {sorted(pids)}")
    except AssertionError as e:
        raise AssertionError(f"{e}: only {sorted(found)} answered") from None
    return {pid: found[pid] for pid in pids}


#: Requests sent at once in each round of answer_from_each_worker.
ROUND = 8


def settled(s: dict[str, Any]) -> bool:
    """True when every pool of one process's stats has run all it was given."""
    return all(
        p["task_count"] == 0
        and p["running"] == 0
        and p["submitted"] == p["completed"] + p["failed"]
        for p in s["pools"].values()
    )


def audit_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


class WebhookReceiver:
    """A webhook receiver on 127.0.0.1 in the test process: the outside observer that
    counts each order's notification, whichever process sent it."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.senders: Counter[int] = Counter()
        self.server = WSGIServer((LOOPBACK, 0), self._app, log=None)

    def __enter__(self) -> WebhookReceiver:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=2)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server.server_port}/hooks/orders"

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        order = json.loads(environ["wsgi.input"].read(length))
        self.received[order["order_id"]] += 1
        self.senders[order["pid"]] += 1
        start_response("204 No Content", [])
        return []
