"""A Flask app for the tests: each request reports what it found of its own state (Flask's
``g``, a request id in ``contextvars``, a ``threading.local``) before setting it and after
yielding to the others, and which greenlet served it.

Served by gevent's pywsgi on a ggopool pool::

    python -m tests.flask_app --cap 4     # prints "listening on http://127.0.0.1:<port> ..."

or by gunicorn with ggopool's worker class (which patches before it imports the app)::

    gunicorn -k ggopool.gunicorn.GeventWorker -b 127.0.0.1:0 tests.flask_app:app

Run as a script it monkey-patches first, as a gevent app must, so that ``threading.local``
is gevent's greenlet-local and ``threading.get_ident()`` names the greenlet.
"""

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

# The imports come after the patch, as in any gevent app.
import argparse
import contextvars
import os
import signal
import sys
import threading
from typing import Any

import gevent
from flask import Flask, Response, g, jsonify, request
from gevent.pywsgi import WSGIServer

import ggopool

app = Flask(__name__)

#: The request id, as logging and tracing keep it.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
#: Per-"thread" state, as SQLAlchemy's scoped_session keeps it (greenlet-local when patched).
local = threading.local()


def seen() -> dict[str, Any]:
    return {
        "g": g.get("rid"),
        "contextvar": request_id.get(),
        "local": getattr(local, "rid", None),
    }


@app.get("/state")
def state() -> Response:
    """Set this request's id in ``g``, a context variable and a thread-local; yield
    ``pause`` seconds so that concurrent requests interleave; report both readings."""
    rid = request.args["rid"]
    before = seen()
    g.rid = rid
    request_id.set(rid)
    local.rid = rid
    gevent.sleep(float(request.args.get("pause", "0.01")))
    return jsonify(
        rid=rid,
        before=before,
        after=seen(),
        pid=os.getpid(),
        ident=threading.get_ident(),
        thread=id(threading.current_thread()),
        connection=request.environ.get("REMOTE_PORT"),
    )


@app.get("/slow")
def slow() -> Response:
    """Answer after ``seconds``; say on stdout when it started."""
    print(f"slow request started in {os.getpid()}", flush=True)
    gevent.sleep(float(request.args["seconds"]))
    return jsonify(pid=os.getpid(), done=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.flask_app")
    parser.add_argument("--cap", type=int, default=4, help="the connection pool's cap")
    args = parser.parse_args(argv)
    # gevent's type stubs name only gevent.pool.Pool as spawn=.
    pool: Any = ggopool.new_pool("flask.connections", args.cap)
    server = WSGIServer(("127.0.0.1", 0), app, spawn=pool, log=None)
    server.start()
    gevent.signal_handler(signal.SIGTERM, server.stop)
    print(f"listening on http://127.0.0.1:{server.server_port} pid {os.getpid()}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
