"""Objects that break what formats or runs them, shared by the tests of reports
(test_describe), of the hardening (test_hardening) and of the random model (test_model)."""

from __future__ import annotations


class BrokenRepr:
    """An object whose repr raises, as a detached ORM row's does: a callable that holds it
    (a functools.partial, a bound method) has a repr that raises too."""

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")

    def method(self) -> None:
        """A bound method of an object whose repr raises."""


class BrokenReprError(Exception):
    """A task's exception whose repr and str raise."""

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")

    def __str__(self) -> str:
        raise RuntimeError("str is broken")


def recurse(n: int) -> int:
    """Recurse until RecursionError: an exception with a traceback about 1,000 frames deep."""
    return recurse(n + 1) + 1
