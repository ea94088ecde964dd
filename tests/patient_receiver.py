"""A webhook receiver whose held notifications never time out in the app's HTTP client.

`tests.shutdown_scenarios.Receiver` holds a notification by not answering it at all; the
load-test app's client gives up on a read after 10 s (its ``network_timeout``), and the
notification task then fails, counted neither as run nor as abandoned, while the worker
takes the next queued one. A test whose stop comes more than 10 s after the first held
notification (placing the orders, gunicorn seeing the stop, the drain's one-second note,
all slower on a loaded machine) would miscount. `PatientReceiver` answers a held
notification's headers at once and a byte of its body every second until `release`, so
a held task stays held however long the test takes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from tests.shutdown_scenarios import Receiver

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: Seconds between two bytes of a held notification's answer (the app's client reads
#: with a 10 s timeout).
TRICKLE = 1.0


class PatientReceiver(Receiver):
    """`Receiver` (its `hold`, `release`, `held` and `answered`), holding notifications
    with an answer that trickles instead of no answer; ``hold_after`` is not supported."""

    #: Seconds between two bytes of a held notification's answer.
    trickle = TRICKLE

    def __enter__(self) -> PatientReceiver:
        super().__enter__()
        return self

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        order = json.loads(environ["wsgi.input"].read(length))
        if self._open.is_set():
            self.answered[order["order_id"]] += 1
            start_response("204 No Content", [])
            return []
        # No Content-Length: the answer is chunked, one chunk a second.
        start_response("200 OK", [("Content-Type", "text/plain")])
        return self._trickle(order["order_id"])

    def _trickle(self, order_id: str) -> Iterator[bytes]:
        self.held += 1
        try:
            yield b" "  # the headers go out with the first chunk
            while not self._open.wait(self.trickle):
                yield b" "
        finally:
            self.held -= 1
        self.answered[order_id] += 1
        yield b"ok"
