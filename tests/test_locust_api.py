"""ggopool.locust's own rules, outside a Locust run: bad input, the tracked pool's API, and a
failing task reported through the hub when there is no run to count it in.

In a subprocess: importing Locust monkey-patches the process, which the rest of the suite must
not see."""

from __future__ import annotations

import textwrap

from tests.subprocess_helpers import run_python

SCRIPT = textwrap.dedent(
    """
    import contextvars
    import gevent
    import ggopool
    from ggopool import locust as gl
    from tests.pool_surface import exercise


    def refused(call, exc_type, message):
        try:
            call()
        except exc_type as exc:
            assert str(exc) == message, str(exc)
            return
        raise AssertionError(f"no {exc_type.__name__}: {message}")


    pool = ggopool.new_pool("api", 2)
    assert gl.track(pool) is pool
    assert gl.track(pool) is pool
    [tracker] = pool.instruments
    assert repr(tracker).startswith("<ggopool.locust tracker of pool 'api': "), repr(tracker)
    refused(lambda: gl.track("p"), TypeError, "pool must be a ggopool.Pool, got 'p'")
    rule = "drain_timeout must be None or a number of seconds >= 0"
    refused(lambda: gl.track(pool, drain_timeout=True), TypeError, f"{rule}, got True")
    refused(lambda: gl.track(pool, drain_timeout=-1), ValueError, f"{rule}, got -1")
    refused(lambda: gl.track(ggopool.new_pool("api", 1)), ValueError,
            "a pool named 'api' is already tracked")
    assert gl._counts_from("not a report") == {}
    assert pool.instruments == (tracker,)  # nothing refused was attached

    seen = []
    hub = gevent.get_hub()
    hub.handle_error = lambda context, t, v, tb: seen.append((repr(context), t))
    out = []
    pool.ctx_go(contextvars.Context(), out.append, 1)
    group = pool.group()
    task = group.go(lambda: 7)
    pool.go(lambda x: 1 / x, 0)
    assert group.wait(5) and task.get() == 7
    assert pool.join(5)
    assert out == [1]
    # No Locust run to count it in: reported as ggopool reports it without a handler.
    assert seen == [("<task <lambda>(0) of pool 'api'>", ZeroDivisionError)], seen
    # One worker ran all three (none yields): the second start the rule asked for found
    # the queue empty and was never made, so the peak of live workers is 1.
    assert gl.counts()["api"] == gl.PoolCounts(3, 3, 1, 0, 1), gl.counts()

    # Every public method works on a tracked pool, and each task is counted once.
    surface = gl.track(ggopool.new_pool("surface", 4))
    found = exercise(surface)
    counted = gl.counts()["surface"]
    assert counted.submitted == found.queued, counted
    assert counted.run == found.started, counted
    assert counted.cancelled == found.cancelled, counted
    assert counted.failed == 0, counted
    print("ok")
    """
)


def test_tracked_pool_rules_outside_a_locust_run() -> None:
    out = run_python(SCRIPT)
    assert out.stdout.strip() == "ok"
