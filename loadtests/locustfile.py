"""Locust users that drive the load-test app (``loadtests/app.py``).

* `Shopper` places orders and opens the dashboard (which fans out on the server).
* `Browser` loads the page, then all its assets at once through a group on a ggopool
  pool, as a browser does; Locust's docs do the same with ``gevent.pool.Pool``. The pool is tracked
  by `ggopool.locust.track`, so an exception in an asset task fails the run under
  ``--exit-code-on-error`` and the pool's counts are logged when the test stops.

Against a fresh app, headless, printing the summary (see loadtests/README.md)::

    python -m loadtests.app --port 8000 &
    locust -f loadtests/locustfile.py --headless -u 20 -r 20 -t 10s \\
        -H http://127.0.0.1:8000 --exit-code-on-error 1
"""

from __future__ import annotations

import re

from locust import FastHttpUser, between, task

import ggopool
from ggopool.locust import track

#: Seconds a page waits for its assets (each request has its own timeouts too).
ASSETS_TIMEOUT = 30.0

# One pool for the whole process: its cap bounds the asset downloads of all Browser users
# together, and its workers are reused from page to page.
assets = track(ggopool.new_pool("assets", 32))

_ASSET_LINK = re.compile(r'href="(/assets/[^"]+)"')


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

        # All the assets at once, as a browser fetches them; the page is done when all are.
        group = assets.group()
        for path in paths:
            group.go(fetch, path)
        if not group.wait(ASSETS_TIMEOUT):
            raise TimeoutError(f"assets of / not loaded in {ASSETS_TIMEOUT} s")
