"""Locust users that drive the load-test app (``loadtests/app.py``).

* `Shopper` places orders and opens the dashboard (which fans out on the server).
* `Browser` loads the page, then all its assets at once through a ggopool pool, as a
  browser does; Locust's docs do the same with ``gevent.pool.Pool``. The pool is tracked
  by `ggopool.locust.track`, so an exception in an asset task fails the run under
  ``--exit-code-on-error`` and the pool's counts are logged when the test stops.

Against a fresh app, headless, printing the summary (see loadtests/README.md)::

    python -m loadtests.app --port 8000 &
    locust -f loadtests/locustfile.py --headless -u 20 -r 20 -t 10s \\
        -H http://127.0.0.1:8000 --exit-code-on-error 1
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from gevent.event import Event
from locust import FastHttpUser, between, task

import ggopool
from ggopool.locust import TrackedPool, track

T = TypeVar("T")

#: Seconds a page waits for its assets (each request has its own timeouts too).
ASSETS_TIMEOUT = 30.0

# One pool for the whole process: its cap bounds the asset downloads of all Browser users
# together, and its workers are reused from page to page.
assets = track(ggopool.new_pool("assets", 32))

_ASSET_LINK = re.compile(r'href="(/assets/[^"]+)"')


def gather(pool: TrackedPool, fn: Callable[[T], object], items: Sequence[T]) -> None:
    """Run ``fn(item)`` for every item on ``pool`` at once, and return when all are done.

    A task that raises still counts as done here; its exception goes to the pool's panic
    handler, which `track` set to make it a Locust error.
    """
    pending = len(items)
    done = Event()
    if not pending:
        return

    def one(item: T) -> None:
        nonlocal pending
        try:
            fn(item)
        finally:
            pending -= 1
            if pending == 0:
                done.set()

    for item in items:
        pool.go(one, item)
    done.wait(ASSETS_TIMEOUT)


class Shopper(FastHttpUser):
    # Not 1: with equal weights Locust hands users out B, S, B, S... round the workers, so
    # with two workers one would run every Browser and the other none.
    weight = 2
    host = "http://127.0.0.1:8000"
    wait_time = between(0.05, 0.2)

    @task(3)
    def order(self) -> None:
        with self.client.post(
            "/orders", json={"sku": "A1", "qty": 2}, catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(f"expected 202, got {response.status_code}")

    @task(1)
    def dashboard(self) -> None:
        self.client.get("/dashboard?widgets=4", name="/dashboard")


class Browser(FastHttpUser):
    host = "http://127.0.0.1:8000"
    wait_time = between(0.05, 0.2)

    @task
    def page(self) -> None:
        response = self.client.get("/")
        paths = _ASSET_LINK.findall(response.text or "")

        def fetch(path: str) -> None:
            self.client.get(path, name="/assets/[name]")

        gather(assets, fetch, paths)
