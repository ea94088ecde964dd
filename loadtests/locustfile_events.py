"""A closed-loop Locust user for ``POST /events`` of the load-test app (``loadtests/app.py``).

Each `EventPoster` sends its next request as soon as the last one answered, so enough of
them keep the server saturated; each request queues two blocking background tasks on the
server (an audit write and a webhook call). ``python -m loadtests.gunicorn_compare
--background-tasks`` runs it; by hand, against an app already listening on 8000::

    locust -f loadtests/locustfile_events.py --headless -u 64 -r 64 -t 10s \\
        -H http://127.0.0.1:8000
"""

from __future__ import annotations

from locust import FastHttpUser, constant, task


class EventPoster(FastHttpUser):
    host = "http://127.0.0.1:8000"
    wait_time = constant(0)

    @task
    def event(self) -> None:
        with self.client.post(
            "/events", json={"kind": "signup", "user": 1}, catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(f"expected 202, got {response.status_code}")
