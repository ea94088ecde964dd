"""What a kill may raise: gevent's ``kill`` takes an exception class or instance (or a
``(type, value, traceback)`` triple). A pool's ``kill`` and ``killone`` refuse anything else
at the call with TypeError, and nothing is killed, cancelled or marked; a task's own ``kill``
and ``gevent.killall`` read it as gevent does (gevent's tests pin that the greenlet dies)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event

import ggopool
from ggopool import Config
from tests.conftest import HubErrors

RULE = (
    r"^exception must be an exception class or instance, or a \(type, value, traceback\) "
    r"triple, got "
)

BAD = ["x", 3, None, object, (1, 2, 3), ("x", None, None)]


def bad_kills(pool: ggopool.Pool, running: Any, queued: Any) -> list[Callable[[Any], object]]:
    return [
        lambda bad: pool.killone(running, bad),
        lambda bad: pool.killone(queued, bad, block=False),
        lambda bad: pool.kill(exception=bad),
        lambda bad: pool.kill(5, exception=bad, block=False),
    ]


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_a_kill_with_what_is_not_an_exception_is_refused_and_changes_nothing(
    bad: object, hub_errors: HubErrors
) -> None:
    pool = ggopool.new_pool("bad-kill", 1, Config(spawn_waits_when_full=False))
    release = Event()
    running = pool.spawn(release.wait)
    queued = pool.spawn(abs, -1)
    gevent.idle()
    for kill in bad_kills(pool, running, queued):
        with pytest.raises(TypeError, match=RULE + r".+$"):
            kill(bad)
        gevent.idle()
        assert not running.ready()
        assert not queued.ready()
        stats = pool.stats()
        assert (stats.running, stats.pending, stats.cancelled) == (1, 1, 0)
    # killone refused: the task is not marked as dying, so a later killone still kills it.
    pool.killone(running, ValueError)
    assert isinstance(running.exception, ValueError)
    [(context, _, _)] = hub_errors.take()  # reported, as a spawned greenlet's failure
    assert context is running
    release.set()
    assert queued.get(timeout=5) == 1
    assert pool.join(5)


def test_the_message_names_the_bad_value() -> None:
    pool = ggopool.new_pool("bad-kill-message", 1)
    task = pool.spawn(abs, -1)
    with pytest.raises(TypeError, match=RULE + r"'x'$"):
        pool.killone(task, "x")
    assert task.get(timeout=5) == 1


@pytest.mark.parametrize("killall", [False, True])
def test_a_tasks_own_kill_with_what_is_no_exception_kills_it_as_gevents(
    killall: bool, hub_errors: HubErrors
) -> None:
    pool = ggopool.new_pool("gevent-kill", 1)
    task = pool.spawn(gevent.sleep, 10)
    linked: list[object] = []
    task.link(linked.append)
    gevent.idle()
    if killall:
        gevent.killall([task], exception=42)  # type: ignore[arg-type]  # as gevent's test
    else:
        task.kill(exception=42)
    assert task.dead
    assert not task.successful()
    gevent.idle()
    assert linked == [task]
    assert [context for context, _, _ in hub_errors.take()] == [task]


@pytest.mark.parametrize(
    "good",
    [KeyError, KeyError("k"), (KeyError, KeyError("k"), None), (KeyError, None, None)],
    ids=repr,
)
def test_an_exception_class_instance_or_triple_is_raised_in_the_task(good: object) -> None:
    pool = ggopool.new_pool("good-kill", 1)
    task = pool.submit(Event().wait)
    gevent.idle()
    task.kill(good, timeout=5)
    assert isinstance(task.exception, KeyError)
