"""Short descriptions of user objects for reports: they never raise.

A failure report is the last thing standing between an exception and silence, so it must
not fail itself because a callable's or an argument's ``repr()`` raises (a ``partial`` over
an object with a broken ``__repr__``, a bound method of a detached ORM row). Each helper
here falls back to a plain ``<type object at 0x...>`` description instead.
"""

from __future__ import annotations

import functools
import reprlib
from collections.abc import Mapping
from typing import Any

# Arguments are shown the way gevent shows a greenlet's (``fetch('bad')``), but bounded:
# a report must stay one readable line whatever the task was given.
_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 5
_MAX_ARGS = 6


def plain(obj: object) -> str:
    """``<type object at 0x...>``, from the type alone: what a report falls back to."""
    try:
        name = type(obj).__qualname__
    except BaseException:  # noqa: BLE001 - a type whose name cannot be read
        name = "object"
    return f"<{name} object at {id(obj):#x}>"


def short_repr(obj: object) -> str:
    """A bounded ``repr(obj)``; `plain` if that raises."""
    try:
        text = _short.repr(obj)
    except BaseException:  # noqa: BLE001 - whatever a user's __repr__ raises
        return plain(obj)
    return text if isinstance(text, str) else plain(obj)


def callable_name(fn: object) -> str:
    """The callable's qualified name (``Order.save``), or a bounded repr of it."""
    try:
        if isinstance(fn, functools.partial):
            return f"partial({callable_name(fn.func)}, ...)"
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    except BaseException:  # noqa: BLE001 - a __getattr__ that raises
        return plain(fn)
    return name if isinstance(name, str) else short_repr(fn)


def describe_call(
    fn: object, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None
) -> str:
    """``name(arg, key=value)`` with bounded reprs, as gevent's greenlet repr shows a call
    (just ``name`` for a call without arguments)."""
    if not args and not kwargs:
        return callable_name(fn)
    try:
        parts = [short_repr(arg) for arg in args[:_MAX_ARGS]]
        if len(args) > _MAX_ARGS:
            parts.append("...")
        if kwargs:
            items = list(kwargs.items())
            parts.extend(f"{key}={short_repr(value)}" for key, value in items[:_MAX_ARGS])
            if len(items) > _MAX_ARGS:
                parts.append("...")
    except BaseException:  # noqa: BLE001 - arguments that cannot even be iterated
        parts = ["..."]
    return f"{callable_name(fn)}({', '.join(parts)})"
