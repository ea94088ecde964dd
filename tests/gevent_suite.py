"""gevent's own tests, run against ggopool: the acceptance measure of the gevent drop-in.

The test files are imported from the installed gevent package (``gevent/tests``), never
copied. Each is read, its *construction lines* are rewritten as it is imported, and it is
run with unittest in a subprocess of its own (gevent runs every file in a process of its
own too: some set class attributes of gevent's test base at import time)::

    python -m tests.gevent_suite            # counts per file and in total
    python -m tests.gevent_suite --diff     # also show every line the shim changed
    python -m tests.gevent_suite --gevent   # the same files, unchanged, against gevent
    python -m tests.gevent_suite --min-passed 230   # exit 1 below that many passes
    python -m tests.gevent_suite --require test__event:TestEventCrossThread
        # exit 1 unless every test of that file (or file:Class) ran and passed
    python -m tests.gevent_suite --servers  # gevent's server tests, servers given a pool

The rewrites, and nothing else (a line that matches none of them is run as gevent wrote it):

* ``gevent.spawn(`` and ``gevent.Greenlet.spawn(`` -> ``ggopool.spawn(``
* ``gevent.spawn_later(`` -> ``ggopool.spawn_later(``
* ``gevent.Greenlet(f, ...)`` and ``greenlet.Greenlet(f, ...)`` (an unstarted greenlet
  with something to run) -> ``ggopool.default_pool().task(f, ...)``, an unstarted task,
  queued by its ``start()`` or ``start_later()``. ``Greenlet()`` with nothing to run, and
  subclasses of ``Greenlet``, stay gevent's.
* ``gevent.pool.Pool`` -> a ggopool pool of cap ``size`` (``None``: unlimited) whose
  ``spawn`` waits while the pool is full, as gevent's does
  (``Config(spawn_waits_when_full=True)``).

``pool.spawn``, ``gevent.joinall``, ``gevent.killall``, ``gevent.kill``, ``gevent.wait``
and every other call are left as they are: they must work with ggopool's tasks and pools.

``--servers`` runs gevent's server tests instead (``test__server.py``,
``test__server_pywsgi.py``, ``test__pywsgi.py``), with only the lines that choose a
server's ``spawn=`` rewritten, so that every server that would spawn its handlers through
gevent is given a ggopool pool (see `SERVER_REWRITES`); their other lines, ``gevent.spawn``
included, stay gevent's.

A test "touched ggopool" if it made at least one ggopool task or pool; a pass that did not
(a test of gevent's raw greenlets, say) is counted apart, so the pass count is not padded
with tests that never ran ggopool code.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import itertools
import json
import os
import re
import subprocess
import sys
import time
import types
import unittest
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: The files, and for each the test classes that belong to the measure (None: all).
#: test__event.py tests Event and AsyncResult; the measure takes its AsyncResult tests,
#: including an AsyncResult as the target of a task's link, and its cross-thread tests of
#: both, whose native threads spawn tasks that run on their own hubs.
#: test__issue2013.py wakes tasks waiting on a semaphore from a thread with no hub.
FILES: dict[str, frozenset[str] | None] = {
    "test__pool": None,
    "test__greenlet": None,
    "test__joinall": None,
    "test__event": frozenset(
        {
            "TestAsyncResult",
            "TestAsyncResultAsLinkTarget",
            "TestWaitAsyncResult",
            "TestAsyncResultCrossThread",
            "TestEventCrossThread",
        }
    ),
    "test__issue2013": None,
}

#: gevent's server tests (``--servers``); test__server_pywsgi.py imports test__server.py,
#: which is loaded shimmed first (`DEPENDS`).
SERVER_FILES: dict[str, frozenset[str] | None] = {
    "test__server": None,
    "test__server_pywsgi": None,
    "test__pywsgi": None,
}

#: The shimmed files a file imports, loaded before it under their own module names.
DEPENDS: dict[str, tuple[str, ...]] = {"test__server_pywsgi": ("test__server",)}

#: (pattern, replacement) for the server files: the lines that choose a server's spawn.
#: test__server.py's ``get_spawn`` gives each server its ``spawn=``: ``gevent.spawn``
#: becomes a ggopool pool with no cap (what ``gevent.spawn`` bounds), and ``2`` (which
#: gevent turns into ``gevent.pool.Pool(2)``) a ggopool pool of cap 2. ``None`` (handle in
#: the hub) and ``gevent.spawn_raw`` stay: no pool is involved. test__pywsgi.py builds its
#: servers with ``pywsgi.WSGIServer(...)`` and no ``spawn=``; they get a pool of 1000.
SERVER_REWRITES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(\s+)return gevent\.spawn$", re.M), r"\1return _ggopool_gevent_pool()"),
    (re.compile(r"^(\s+)return 2$", re.M), r"\1return _ggopool_gevent_pool(2)"),
    (re.compile(r"\bpywsgi\.WSGIServer\("), "_ggopool_with_pool(pywsgi.WSGIServer)("),
]

#: (pattern, replacement): the construction lines the shim changes.
REWRITES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bgevent\.Greenlet\.spawn\("), "ggopool.spawn("),
    (re.compile(r"\bgevent\.spawn\("), "ggopool.spawn("),
    (re.compile(r"\bgevent\.spawn_later\("), "ggopool.spawn_later("),
    (re.compile(r"\b(?:gevent|greenlet)\.Greenlet\((?!\))"), "ggopool.default_pool().task("),
    (re.compile(r"\bgevent\.pool\.Pool\b"), "_ggopool_gevent_pool"),
]

TIMEOUT_PER_FILE = 300.0


def gevent_tests_dir() -> Path:
    import gevent

    return Path(gevent.__file__).parent / "tests"


def rewrites_for(name: str) -> list[tuple[re.Pattern[str], str]]:
    return SERVER_REWRITES if name in SERVER_FILES else REWRITES


def rewrite(source: str, rewrites: list[tuple[re.Pattern[str], str]] = REWRITES) -> str:
    out = []
    for line in source.splitlines(keepends=True):
        body = line.rstrip("\n")
        for pattern, replacement in rewrites:
            body = pattern.sub(replacement, body)
        out.append(body + line[len(line.rstrip("\n")) :])
    return "".join(out)


def show_diff(name: str) -> str:
    path = gevent_tests_dir() / f"{name}.py"
    source = path.read_text()
    return "".join(
        difflib.unified_diff(
            source.splitlines(keepends=True),
            rewrite(source, rewrites_for(name)).splitlines(keepends=True),
            f"gevent/tests/{name}.py",
            f"gevent/tests/{name}.py (shimmed)",
            n=0,
        )
    )


# -- in the subprocess --------------------------------------------------------------------


class _Touches:
    """Counts the ggopool tasks and pools made, to tell which tests ran ggopool code."""

    count = 0

    @classmethod
    def install(cls) -> None:
        from ggopool._pool import Pool
        from ggopool._task import Task

        for klass in (Task, Pool):
            original: Callable[..., None] = klass.__init__

            def counting_init(self: Any, *args: Any, _original: Any = original, **kw: Any) -> None:
                cls.count += 1
                _original(self, *args, **kw)

            klass.__init__ = counting_init  # type: ignore[method-assign]


_pool_names = itertools.count(1)


def gevent_pool(size: int | None = None) -> Any:
    """``gevent.pool.Pool(size)`` as a ggopool pool: cap ``size`` (None: unlimited), and a
    ``spawn`` that waits while the pool is full."""
    import ggopool

    cap = sys.maxsize if size is None else size
    config = ggopool.Config(spawn_waits_when_full=True)
    return ggopool.new_pool(f"gevent-suite-{next(_pool_names)}", cap, config)


def with_pool(server_class: type[Any]) -> Callable[..., Any]:
    """``server_class`` whose servers get ``spawn=`` a ggopool pool of cap 1000 (as
    ``gevent.pool.Pool(1000)``) unless the caller gives one."""

    def make(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("spawn", gevent_pool(1000))
        return server_class(*args, **kwargs)

    return make


def _load(name: str, shimmed: bool) -> types.ModuleType:
    for dependency in DEPENDS.get(name, ()):
        if f"gevent.tests.{dependency}" not in sys.modules:
            _load(dependency, shimmed)
    path = gevent_tests_dir() / f"{name}.py"
    source = path.read_text()
    module = types.ModuleType(f"gevent.tests.{name}")
    module.__file__ = str(path)
    if shimmed:
        import ggopool

        source = rewrite(source, rewrites_for(name))
        module.__dict__["ggopool"] = ggopool
        # A partial, not a function: the tests also use it as a class attribute
        # (``klass = gevent.pool.Pool``), where a function would become a method.
        module.__dict__["_ggopool_gevent_pool"] = functools.partial(gevent_pool)
        module.__dict__["_ggopool_with_pool"] = with_pool
    sys.modules[module.__name__] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def _tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from _tests(test)
        else:
            yield test


class _Result(unittest.TestResult):
    def __init__(self) -> None:
        super().__init__()
        self.outcomes: dict[str, dict[str, Any]] = {}
        self._touched_before = 0

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self._touched_before = _Touches.count

    def _record(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        self.outcomes[test.id()] = {
            "outcome": outcome,
            "touched": _Touches.count > self._touched_before,
            "detail": detail,
        }

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._record(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "failed", self.failures[-1][1])

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "failed", self.errors[-1][1])

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skipped", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "failed", "expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "passed")


def run_file(name: str, shimmed: bool) -> dict[str, dict[str, Any]]:
    if shimmed:
        _Touches.install()
    module = _load(name, shimmed)
    classes = {**FILES, **SERVER_FILES}[name]
    suite = unittest.TestSuite(
        test
        for test in _tests(unittest.defaultTestLoader.loadTestsFromModule(module))
        if classes is None or type(test).__name__ in classes
    )
    result = _Result()
    # gevent's tests print tracebacks of the errors they provoke; keep stdout for the JSON.
    stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        suite.run(result)
    finally:
        sys.stdout = stdout
    return result.outcomes


# -- in the parent ------------------------------------------------------------------------


def run_all(
    shimmed: bool, verbose: bool, files: dict[str, frozenset[str] | None] = FILES
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    outcomes: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name in files:
        started = time.monotonic()
        cmd = [sys.executable, "-m", "tests.gevent_suite", "--child", name]
        if not shimmed:
            cmd.append("--gevent")
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_PER_FILE,
                env=env,
                cwd=Path(__file__).resolve().parent.parent,
                check=False,
            )
        except subprocess.TimeoutExpired:
            outcomes[f"{name} (whole file)"] = {
                "outcome": "failed",
                "touched": True,
                "detail": f"timed out after {TIMEOUT_PER_FILE} s",
            }
            seconds[name] = time.monotonic() - started
            continue
        seconds[name] = time.monotonic() - started
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            outcomes[f"{name} (whole file)"] = {
                "outcome": "failed",
                "touched": True,
                "detail": f"exit {proc.returncode}\n{proc.stderr[-3000:]}",
            }
            continue
        if verbose:
            sys.stderr.write(proc.stderr)
        for test_id, outcome in json.loads(lines[-1]).items():
            outcomes[f"{name}:{test_id.split('.', 3)[-1]}"] = outcome
    return outcomes, seconds


def report(
    outcomes: dict[str, dict[str, Any]],
    seconds: dict[str, float],
    details: bool,
    files: dict[str, frozenset[str] | None] = FILES,
) -> int:
    rows = []
    total = {"passed": 0, "untouched": 0, "failed": 0, "skipped": 0}
    for name in files:
        mine = [o for key, o in outcomes.items() if key.split(":")[0].split(" ")[0] == name]
        counts = {k: sum(o["outcome"] == k for o in mine) for k in ("passed", "failed", "skipped")}
        counts["untouched"] = sum(o["outcome"] == "passed" and not o["touched"] for o in mine)
        for key in total:
            total[key] += counts[key]
        rows.append((name, counts, seconds.get(name, 0.0)))
    print(
        f"{'file':<20} {'passed':>7} {'(no ggopool)':>13} {'failed':>7} {'skipped':>8} {'time':>7}"
    )
    for name, counts, secs in rows:
        print(
            f"{name:<20} {counts['passed']:>7} {counts['untouched']:>13} "
            f"{counts['failed']:>7} {counts['skipped']:>8} {secs:>6.1f}s"
        )
    n = total["passed"] + total["failed"] + total["skipped"]
    print(
        f"{'total':<20} {total['passed']:>7} {total['untouched']:>13} {total['failed']:>7} "
        f"{total['skipped']:>8} {sum(seconds.values()):>6.1f}s   ({total['passed']} of {n} passed)"
    )
    for key, o in sorted(outcomes.items()):
        if o["outcome"] != "passed":
            print(f"  {o['outcome']}: {key}")
            if details:
                print("    " + o["detail"].strip().replace("\n", "\n    "))
    return total["passed"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gevent", action="store_true", help="run the files unchanged")
    parser.add_argument("--diff", action="store_true", help="print the lines the shim changes")
    parser.add_argument("--details", action="store_true", help="print each failure's traceback")
    parser.add_argument("--verbose", action="store_true", help="pass the tests' stderr through")
    parser.add_argument("--min-passed", type=int, default=0, help="exit 1 below this many")
    parser.add_argument(
        "--servers", action="store_true", help="run gevent's server tests, servers given a pool"
    )
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="FILE[:CLASS]",
        help="exit 1 unless every test of FILE (or of its CLASS) ran and passed",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_file(args.child, shimmed=not args.gevent)))
        return 0
    files = SERVER_FILES if args.servers else FILES
    if args.diff:
        for name in files:
            print(show_diff(name))
    outcomes, seconds = run_all(shimmed=not args.gevent, verbose=args.verbose, files=files)
    passed = report(outcomes, seconds, args.details, files)
    failed = False
    if passed < args.min_passed:
        print(f"FAIL: {passed} passed, fewer than the floor of {args.min_passed}")
        failed = True
    for required in args.require:
        problem = missing_passes(outcomes, required)
        if problem:
            print(f"FAIL: {required}: {problem}")
            failed = True
    return 1 if failed else 0


def missing_passes(outcomes: dict[str, dict[str, Any]], required: str) -> str:
    """What keeps every test of ``required`` (``file`` or ``file:Class``) from having
    passed, or "" if nothing does."""
    name = required.split(":")[0]
    if f"{name} (whole file)" in outcomes:
        return "the file did not run to the end"
    prefix = required + ("." if ":" in required else ":")
    mine = {key: o for key, o in outcomes.items() if key.startswith(prefix)}
    if not mine:
        return "no such test ran"
    not_passed = sorted(key for key, o in mine.items() if o["outcome"] != "passed")
    if not_passed:
        return f"{len(not_passed)} of {len(mine)} did not pass: {', '.join(not_passed)}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
