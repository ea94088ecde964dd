"""The descriptions failure reports use: bounded, gevent-like, and they never raise."""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest

from ggopool._describe import callable_name, describe_call, plain, short_repr
from tests.faulty import BrokenRepr


class BrokenName:
    """A callable whose attribute lookup itself raises."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name}")

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken too")

    def __call__(self) -> None:
        """Callable."""


def fetch(url: str, retries: int = 0) -> None:
    """A task."""


def test_a_call_reads_as_gevent_shows_a_greenlet() -> None:
    assert describe_call(fetch) == "fetch"
    assert describe_call(fetch, ("bad",)) == "fetch('bad')"
    assert describe_call(fetch, ("bad",), {"retries": 3}) == "fetch('bad', retries=3)"
    assert describe_call(BrokenRepr.method) == "BrokenRepr.method"


def test_long_arguments_are_bounded() -> None:
    text = describe_call(fetch, ("x" * 10_000, list(range(1000))), {"k": "y" * 10_000})
    assert len(text) < 300
    many = describe_call(fetch, tuple(range(20)))
    assert many.endswith(", ...)")


def test_nothing_a_user_object_does_makes_a_description_raise() -> None:
    obj = BrokenRepr()
    assert re.fullmatch(r"<BrokenRepr (object|instance) at 0x[0-9a-f]+>", short_repr(obj))
    assert re.fullmatch(
        r"fetch\(<BrokenRepr (object|instance) at 0x[0-9a-f]+>\)", describe_call(fetch, (obj,))
    )
    assert describe_call(obj.method, (obj,), {"o": obj}).startswith("BrokenRepr.method(<BrokenRepr")
    assert (
        callable_name(functools.partial(BrokenRepr.method, obj))
        == "partial(BrokenRepr.method, ...)"
    )
    assert re.fullmatch(r"<BrokenName object at 0x[0-9a-f]+>", callable_name(BrokenName()))
    assert plain(BrokenName()).startswith("<BrokenName object at 0x")


@pytest.mark.parametrize("bad_args", [3, object()])
def test_arguments_that_are_not_a_tuple_still_give_a_line(bad_args: Any) -> None:
    assert describe_call(fetch, bad_args, None).startswith("fetch(")
