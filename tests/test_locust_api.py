"""ggopool.locust's own rules, outside a Locust run: bad input, the tracked pool's API, and a
failing task reported through the hub when there is no run to count it in.

In a subprocess: importing Locust monkey-patches the process, which the rest of the suite must
not see."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import contextvars
    import gevent
    import ggopool
    from ggopool import locust as gl


    def refused(call, exc_type, message):
        try:
            call()
        except exc_type as exc:
            assert str(exc) == message, str(exc)
            return
        raise AssertionError(f"no {exc_type.__name__}: {message}")


    pool = ggopool.new_pool("api", 2)
    tracked = gl.track(pool)
    assert gl.track(pool) is tracked
    assert (tracked.name, tracked.pool) == ("api", pool)
    assert repr(tracked).startswith("<ggopool.locust.TrackedPool 'api' "), repr(tracked)
    refused(lambda: tracked.go(3), TypeError, "fn must be callable, got 3")
    refused(lambda: tracked.ctx_go(contextvars.Context(), 3), TypeError, "fn must be callable, got 3")
    refused(lambda: tracked.group().go(3), TypeError, "fn must be callable, got 3")
    refused(lambda: gl.track("p"), TypeError, "pool must be a ggopool.Pool, got 'p'")
    refused(lambda: gl.track(pool, drain_timeout=True), TypeError,
            "drain_timeout must be a number of seconds >= 0, got True")
    refused(lambda: gl.track(pool, drain_timeout=-1), ValueError,
            "drain_timeout must be a number of seconds >= 0, got -1")
    refused(lambda: gl.track(ggopool.new_pool("api", 1)), ValueError,
            "a pool named 'api' is already tracked")
    assert gl._counts_from("not a report") == {}

    seen = []
    hub = gevent.get_hub()
    hub.handle_error = lambda context, t, v, tb: seen.append((repr(context), t))
    out = []
    tracked.ctx_go(contextvars.Context(), out.append, 1)
    group = tracked.group()
    task = group.go(lambda: 7)
    tracked.go(lambda: 1 / 0)
    assert group.wait(5) and task.get() == 7
    assert pool.join(5)
    assert out == [1]
    # No Locust run to count it in: reported as ggopool reports it without a handler.
    assert seen == [("<task <lambda> of pool 'api'>", ZeroDivisionError)], seen
    counts = tracked.counts()
    assert (counts.submitted, counts.run, counts.failed) == (3, 3, 1), counts
    print("ok")
    """
)


def test_tracked_pool_rules_outside_a_locust_run() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
