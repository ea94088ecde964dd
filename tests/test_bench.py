"""`python -m ggopool bench`: its output is well formed and it counts every task.

Nothing here asserts on a timing: the bench runs with tiny counts, and only the shape of
its output, its task counts and its rules (which targets get a verdict) are checked.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from gevent.event import Event

from ggopool.__main__ import main
from ggopool.bench.cli import parser, settings_from
from ggopool.bench.progress import Progress
from ggopool.bench.report import render
from ggopool.bench.results import Results, Target, machine
from ggopool.bench.rounds import ThroughputRow, throughput
from ggopool.bench.settings import FULL, HEADLINE, QUICK
from ggopool.bench.strategies import STRATEGIES, CappedPoolStrategy, FloorStrategy
from ggopool.bench.targets import targets
from ggopool.bench.trickle import timed_trickle

ROOT = Path(__file__).resolve().parent.parent
ALL = list(STRATEGIES)
UNCAPPED = {"ggopool.go", "ggopool.spawn", "gevent.spawn", "gevent.spawn_raw", "deque-floor"}

# Every workload, with counts small enough for a few seconds in all.
TINY = [
    "--quick",
    "-n", "300",
    "--rounds", "2",
    "--warmup", "50",
    "--trickle-tasks", "200",
    "--yield-caps", "50,10",
    "--tcp-tasks", "20",
    "--tcp-rounds", "2",
    "--memory-tasks", "300",
    "--memory-cap", "50",
    "--memory-after", "0.05",
    "--latency-tasks", "300",
    "--busy-tasks", "200",
    "--busy-greenlets", "50",
    "--scale-sizes", "100,1000",
    "--scale-per-point", "1000",
]  # fmt: skip


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ggopool", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def json_run() -> dict[str, Any]:
    proc = bench(*TINY, "--json")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_strategy_names_need_no_quoting_in_a_shell() -> None:
    assert ALL == [
        "ggopool.go",
        "ggopool.spawn",
        "ggopool.Pool",
        "gevent.spawn",
        "gevent.spawn_raw",
        "gevent.pool.Pool",
        "deque-floor",
    ]
    for name in ALL:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name


def test_json_has_every_section_and_the_machine(json_run: dict[str, Any]) -> None:
    assert set(json_run) == {
        "command",
        "machine",
        "settings",
        "throughput",
        "memory",
        "latency",
        "busy",
        "scale",
        "server",
        "targets",
        "complete",
    }
    assert json_run["command"].startswith("python -m ggopool bench --quick -n 300")
    assert set(json_run["machine"]) >= {"cpus", "cpu_model", "python", "gevent", "greenlet"}
    assert json_run["settings"]["rounds"] == 2
    assert json_run["settings"]["memory_after"] == 0.05
    assert json_run["complete"] is True


def test_json_throughput_has_ggopool_go_in_every_workload_and_counts_every_task(
    json_run: dict[str, Any],
) -> None:
    rows = json_run["throughput"]
    expected = [
        ("noop", 100, 300),
        ("yield", 50, 300),
        ("yield", 10, 300),
        ("gopool", json_run["settings"]["gopool_cap"], 300),
        ("trickle", 100, 200),
        ("tcp", 100, 20),
    ]
    assert [(r["workload"], r["cap"], r["n"]) for r in rows[:: len(ALL)]] == expected
    for workload, cap, n in expected:
        mine = [r for r in rows if (r["workload"], r["cap"]) == (workload, cap)]
        assert [r["strategy"] for r in mine] == ALL
        for row in mine:
            assert row["strategy_cap"] == (None if row["strategy"] in UNCAPPED else cap), row
            assert row["tasks_run"] == [n, n], row
            assert row["complete"] is True
            assert len(row["seconds"]) == 2
            assert all(s > 0 for s in row["seconds"])
            assert row["tasks_per_s"] > 0
            assert row["ratio_to_spawn"] > 0
            low, high = row["ratio_range"]
            assert 0 < low <= row["ratio_to_spawn"] <= high
            assert row["errors"] == 0
        spawn = next(r for r in mine if r["strategy"] == "gevent.spawn")
        assert spawn["ratio_to_spawn"] == 1.0
        assert spawn["ratio_range"] == [1.0, 1.0]


def test_json_memory_has_both_figures_for_every_strategy_and_kind(
    json_run: dict[str, Any],
) -> None:
    memory = json_run["memory"]
    assert [(r["kind"], r["strategy"]) for r in memory] == [
        (kind, name) for kind in ("noop", "yield", "event") for name in ALL
    ]
    for row in memory:
        assert row["n"] == 300
        assert row["tasks_run"] == 300
        assert row["complete"] is True
        assert row["strategy_cap"] == (None if row["strategy"] in UNCAPPED else 50)
        assert isinstance(row["peak_rss_growth_bytes"], int)
        assert isinstance(row["rss_growth_after_bytes"], int)  # Linux: VmRSS is readable
        assert row["peak_was_reset"] is True  # Linux: VmHWM is reset before the burst
        assert row["after_seconds"] == 0.05
        assert row["after_seconds_actual"] >= 0.05
        if row["strategy"] == "gevent.spawn":
            assert row["peak_ratio_to_spawn"] in (1.0, None)
    # For the event kind, the uncapped strategies hold every task blocked at once, the
    # capped ones their cap, the floor one (it runs them one after the other).
    blocked = {r["strategy"]: r["blocked_at_peak"] for r in memory if r["kind"] == "event"}
    assert blocked == {
        "ggopool.go": 300,
        "ggopool.spawn": 300,
        "ggopool.Pool": 50,
        "gevent.spawn": 300,
        "gevent.spawn_raw": 300,
        "gevent.pool.Pool": 50,
        "deque-floor": 1,
    }
    assert all(r["blocked_at_peak"] is None for r in memory if r["kind"] != "event")


def test_json_busy_loop_compares_its_four_strategies_and_counts_every_task(
    json_run: dict[str, Any],
) -> None:
    rows = json_run["busy"]
    assert [r["strategy"] for r in rows] == [
        "ggopool.go",
        "ggopool.Pool",
        "gevent.spawn",
        "gevent.pool.Pool",
    ]
    for row in rows:
        assert row["complete"] is True, row
        assert row["tasks_run"] == [200, 200]
        assert 0 < row["p50_us"] <= row["p99_us"]
        assert row["greenlets"] == 50
    assert [r["strategy_cap"] for r in rows] == [None, 200, None, 200]
    spawn = rows[2]
    assert spawn["p50_ratio_to_spawn"] == spawn["p99_ratio_to_spawn"] == 1.0


def test_json_latency_and_scale_count_every_task(json_run: dict[str, Any]) -> None:
    latency = json_run["latency"]
    assert [r["strategy"] for r in latency] == ALL
    for row in latency:
        assert row["tasks_run"] == [300, 300]
        assert row["complete"] is True
        assert 0 <= row["p50_us"] <= row["p99_us"]

    scale = json_run["scale"]
    assert [(r["strategy"], r["strategy_cap"], r["n"]) for r in scale] == [
        ("ggopool.Pool", 100, 100),
        ("ggopool.Pool", 100, 1000),
        ("deque-floor", None, 100),
        ("deque-floor", None, 1000),
    ]
    for row in scale:
        assert row["bursts"] == 1000 // row["n"]
        assert row["tasks_run"] == [1000, 1000]
        assert row["complete"] is True
        assert row["ratio_to_best"] >= 1.0
        assert 0 <= row["gc_us_per_task"] <= row["us_per_task"]


def test_json_targets_of_a_quick_run_have_no_verdict(json_run: dict[str, Any]) -> None:
    found = json_run["targets"]
    ids = [t["id"] for t in found]
    # No capped-pool yield target: those are set for caps 10,000 and 100, this run used 50
    # and 10. The memory ratios need gevent.spawn's growth above zero, which 300 tasks
    # may not give.
    always = [
        "go_noop_throughput",
        "go_yield_throughput",
        "go_trickle_throughput",
        "go_busy_p50_start_latency",
        "go_busy_p99_start_latency",
        "pool_busy_p50_start_latency",
        "pool_busy_p99_start_latency",
        "pool_noop_throughput",
        "pool_tcp_throughput",
        "pool_scale_spread",
    ]
    assert [i for i in ids if i in always] == always
    assert set(ids) - set(always) <= {
        "go_noop_peak_rss",
        "go_yield_peak_rss",
        "go_yield_rss_after",
        "pool_event_peak_rss",
    }
    for target in found:
        assert set(target) == {
            "id",
            "target",
            "measured",
            "range",
            "goal",
            "met",
            "why_no_verdict",
        }
        if target["id"].endswith(("_throughput", "_start_latency")):
            low, high = target["range"]
            assert low <= target["measured"] <= high
        else:
            assert target["range"] is None  # one measurement: a fresh process, or a spread
        assert target["met"] is None
        assert "(full run: " in target["why_no_verdict"]
    go_noop = found[ids.index("go_noop_throughput")]
    assert go_noop["why_no_verdict"] == (
        "--tasks 300 (full run: 100000); --rounds 2 (full run: 5); --warmup 50 (full run: 10000)"
    )


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables in ``text``, as rows of cells."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif current:
            found.append(current)
            current = []
    return found


def test_tables_are_well_formed_and_progress_goes_to_stderr() -> None:
    names = "ggopool.go,ggopool.Pool,gevent.spawn,deque-floor"  # as typed, no quoting
    proc = bench(
        *TINY,
        "--workloads",
        "noop,memory,latency,scale",
        "--memory-kinds",
        "yield",
        "--strategies",
        names,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("machine: ")
    assert "\ncommand: python -m ggopool bench --quick" in out
    assert out.rstrip().endswith("every task counted: yes")
    found = tables(out)
    assert [t[0] for t in found] == [
        ["workload", "n", "strategy", "cap", "tasks/s", "x gevent.spawn", "range", "tasks run"],
        [
            "kind",
            "n",
            "strategy",
            "cap",
            "peak RSS growth",
            "x gevent.spawn",
            "RSS growth 0.05 s after",
            "x gevent.spawn",
            "tasks run",
        ],
        ["burst", "strategy", "cap", "p50", "p99", "tasks run"],
        ["n", "bursts", "strategy", "cap", "per task", "of which GC", "x cheapest", "tasks run"],
        ["target", "measured", "range", "goal", "met"],
    ]
    for table in found:
        assert all(len(row) == len(table[0]) for row in table)
        assert all(re.fullmatch(r"-+:?", cell) for cell in table[1])
    throughput_rows, memory_rows = found[0][2:], found[1][2:]
    for row in throughput_rows:
        assert re.fullmatch(r"\d+\.\d+-\d+\.\d+x", row[6]), row
    assert [(r[0], r[2], r[3], r[7]) for r in throughput_rows] == [
        ("noop", "ggopool.go", "none", "600"),
        ("noop", "ggopool.Pool", "100", "600"),
        ("noop", "gevent.spawn", "none", "600"),
        ("noop", "deque-floor", "none", "600"),
    ]
    assert [(r[0], r[2], r[3], r[8]) for r in memory_rows] == [
        ("yield", "ggopool.go", "none", "300"),
        ("yield", "ggopool.Pool", "50", "300"),
        ("yield", "gevent.spawn", "none", "300"),
        ("yield", "deque-floor", "none", "300"),
    ]
    for row in memory_rows:
        assert re.fullmatch(r"-?[\d,]+\.\d MiB", row[4]), row
        assert re.fullmatch(r"-?[\d,]+\.\d MiB", row[6]), row
    assert [r[4] for r in found[4][2:]] == ["-"] * (len(found[4]) - 2)
    assert "No verdict for " in out
    assert "Run without --quick and without size options for verdicts." in " ".join(out.split())
    assert all("MISCOUNT" not in cell for table in found for row in table for cell in row)
    # The progress display: one line per step, ending at the total.
    steps = re.findall(r"^bench \[ *(\d+)/(\d+)\]", proc.stderr, re.MULTILINE)
    assert steps
    assert steps[-1][0] == steps[-1][1]
    assert [int(done) for done, _ in steps] == list(range(1, len(steps) + 1))


def test_help_is_plain_text_with_defaults_and_names_bench() -> None:
    proc = bench("--help")
    assert proc.returncode == 0
    text = proc.stdout
    assert text.startswith("usage: python -m ggopool bench ")
    assert "`" not in text
    for name in ALL:
        assert f"\n  {name} " in text
    # Every option but --help says its default.
    options = re.split(r"\n  (?=-)", text.split("\noptions:\n", 1)[1])
    assert len(options) > 15
    for option in options:
        if not option.lstrip().startswith("-h, --help"):
            assert "(default: " in " ".join(option.split()), option
    assert "(default: 100000; with --quick: 10000)" in " ".join(text.split())
    top = subprocess.run(
        [sys.executable, "-m", "ggopool", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert top.startswith("usage: python -m ggopool [demo] ")
    assert "\n       python -m ggopool bench " in top
    assert "`" not in top
    assert "(default: 100,000)" in top


def test_bad_option_is_refused_with_the_rule() -> None:
    proc = bench("--rounds", "0")
    assert proc.returncode == 2
    assert "--rounds: must be comma-separated ints >= 1, got '0'" in proc.stderr
    proc = bench("--workloads", "noop,nope")
    assert proc.returncode == 2
    assert "got 'noop,nope'" in proc.stderr
    proc = bench("--memory-after", "-1")
    assert proc.returncode == 2
    assert "--memory-after: must be a number of seconds >= 0, got '-1'" in proc.stderr


def _row(workload: str, strategy: str, cap: int, ratio: float) -> ThroughputRow:
    return ThroughputRow(
        workload=workload,
        cap=cap,
        n=0,
        strategy=strategy,
        strategy_cap=None,
        seconds=[1.0],
        tasks_run=[0],
        complete=True,
        tasks_per_s=1.0,
        ratio_to_spawn=ratio,
        ratio_range=[ratio * 0.9, ratio * 1.1],
        errors=0,
    )


def _results(settings: dict[str, Any], rows: list[ThroughputRow]) -> Results:
    return Results(
        command="python -m ggopool bench",
        machine=machine(),
        settings=settings,
        throughput=rows,
        memory=[],
        latency=[],
        busy=[],
        scale=[],
        server=[],
        targets=[],
        complete=True,
    )


def test_targets_get_verdicts_only_at_the_full_runs_sizes() -> None:
    rows = [
        _row("noop", "ggopool.go", 100, 5.0),
        _row("noop", "ggopool.Pool", 100, 19.9),
        _row("yield", "ggopool.go", 10_000, 1.6),
        _row("yield", "ggopool.go", 100, 1.4),
        _row("trickle", "ggopool.go", 100, 2.5),
    ]

    def verdicts(found: list[Target]) -> dict[str, tuple[float, bool | None]]:
        return {t["id"]: (t["measured"], t["met"]) for t in found}

    full = targets(_results(asdict(FULL), rows))
    assert verdicts(full) == {
        "go_noop_throughput": (5.0, True),  # the goal's bound is met
        "go_yield_throughput": (1.4, False),  # the lowest of the yield rows
        "go_trickle_throughput": (2.5, True),
        "pool_noop_throughput": (19.9, False),
    }
    assert all(t["why_no_verdict"] is None for t in full)
    quick = targets(_results(asdict(QUICK), rows))
    assert {t["id"]: t["met"] for t in quick} == dict.fromkeys(verdicts(full))
    # One size off the full run's is enough to withhold the verdicts that depend on it.
    other = targets(_results(asdict(replace(FULL, trickle_tasks=19_999)), rows))
    assert {t["id"]: t["met"] for t in other}["go_trickle_throughput"] is None
    assert {t["id"]: t["met"] for t in other}["go_noop_throughput"] is True
    results = _results(asdict(QUICK), rows)
    results["targets"] = quick
    assert "No verdict for 4 of 4 targets" in render(results)
    # The default run has the full run's sizes and more rounds: every verdict stands.
    headline = targets(_results(asdict(HEADLINE), rows))
    assert verdicts(headline) == verdicts(full)
    assert {t["id"]: t["range"] for t in headline}["go_noop_throughput"] == pytest.approx(
        [4.5, 5.5]
    )
    # Fewer rounds than the full run's withhold them.
    fewer = targets(_results(asdict(replace(FULL, rounds=4)), rows))
    assert {t["id"]: t["met"] for t in fewer} == dict.fromkeys(verdicts(full))


class LossyFloor(FloorStrategy):
    """A strategy that drops the last task of each burst."""

    name = "lossy"

    def burst(self, n: int, task: Callable[[], object], done: Event) -> None:
        super().burst(n - 1, task, done)


def test_a_strategy_that_loses_a_task_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STRATEGIES, "lossy", LossyFloor)
    stream = io.StringIO()
    rows = throughput(
        "noop",
        None,
        20,
        5,
        ["ggopool.Pool", "gevent.spawn", "lossy"],
        2,
        Progress(6, stream),
        warmup=0,
    )
    assert [(r["strategy"], r["tasks_run"], r["complete"]) for r in rows] == [
        ("ggopool.Pool", [20, 20], True),
        ("gevent.spawn", [20, 20], True),
        ("lossy", [19, 19], False),
    ]
    assert stream.getvalue().count("\n") == 6


def test_a_trickle_reuses_one_ggopool_worker_for_every_task() -> None:
    # Each task is submitted once the one before has run, so the one worker has parked
    # by then and is woken for the next: the pool never needs a second.
    strategy = CappedPoolStrategy(10)
    pool = strategy._pool
    workers: list[int] = []
    try:
        _, ran = timed_trickle(strategy, 50, lambda: workers.append(pool.stats().workers))
    finally:
        strategy.close()
    assert ran == 50
    assert workers == [1] * 50


def test_demo_is_still_the_default_and_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-n", "50", "--cap", "5"]) == 0
    assert main(["demo", "-n", "50", "--cap", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("ran 50 of 50 tasks") == 2


def test_json_server_has_every_spawn_and_mode_and_counts_every_request(
    json_run: dict[str, Any],
) -> None:
    rows = json_run["server"]
    assert [(r["mode"], r["spawn"]) for r in rows] == [
        (mode, spawn)
        for mode in ("close", "keep-alive")
        for spawn in ("default", "gevent.pool.Pool", "ggopool.Pool")
    ]
    for row in rows:
        # 5 x --tcp-tasks requests per run, --rounds rounds, every one answered.
        assert row["requests"] == 100
        assert row["served"] == [100, 100]
        assert row["complete"] is True
        assert row["requests_per_s"] > 0
        assert row["cpu_us_per_request"] > 0
        assert row["peak_rss"] > 1 << 20
        assert all(row[k] is not None and row[k] > 0 for k in ("ratio_cpu", "ratio_rss"))
        if row["spawn"] == "default":
            assert row["ratio_requests_per_s"] == 1.0
            assert row["ratio_rss"] == 1.0


def test_server_table_is_well_formed() -> None:
    proc = bench(*TINY, "--workloads", "server", "--rounds", "1")
    assert proc.returncode == 0, proc.stderr
    [(headers, rule, *rows)] = tables(proc.stdout)
    assert headers == [
        "mode",
        "spawn",
        "requests/s",
        "x",
        "server CPU/request",
        "x",
        "server peak RSS",
        "x",
        "served",
    ]
    assert all(re.fullmatch(r"-+:?", cell) for cell in rule)
    assert [(r[0], r[1], r[8]) for r in rows] == [
        ("close", "default", "100"),
        ("close", "gevent.pool.Pool", "100"),
        ("close", "ggopool.Pool", "100"),
        ("keep-alive", "default", "100"),
        ("keep-alive", "gevent.pool.Pool", "100"),
        ("keep-alive", "ggopool.Pool", "100"),
    ]
    assert [r[3] for r in rows if r[1] == "default"] == ["1.00x", "1.00x"]


def test_the_default_run_is_the_headline_and_full_is_todays_complete_run() -> None:
    assert settings_from(parser().parse_args([])) == HEADLINE
    assert settings_from(parser().parse_args(["--full"])) == FULL
    assert settings_from(parser().parse_args(["--quick"])) == QUICK
    # The headline measures every ggopool.go target at the full run's sizes.
    assert HEADLINE.strategies == ("ggopool.go", "gevent.spawn")
    assert HEADLINE.workloads == ("noop", "yield", "trickle", "memory", "busy")
    assert HEADLINE.rounds > FULL.rounds
    for field in (
        "tasks",
        "warmup",
        "trickle_tasks",
        "memory_tasks",
        "memory_after",
        "busy_tasks",
        "busy_greenlets",
    ):
        assert getattr(HEADLINE, field) == getattr(FULL, field), field
    proc = bench("--full", "--quick")
    assert proc.returncode == 2
    assert "argument --quick: not allowed with argument --full" in proc.stderr


def test_a_headline_run_shows_ggopool_go_against_gevent_spawn() -> None:
    sizes = TINY[1:]  # the tiny sizes, without --quick: the default run's shape
    proc = bench(*sizes, "--json")
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["command"].startswith("python -m ggopool bench -n 300")
    assert [(r["workload"], r["strategy"]) for r in run["throughput"]] == [
        (workload, name)
        for workload in ("noop", "yield", "yield", "trickle")
        for name in ("ggopool.go", "gevent.spawn")
    ]
    assert [(r["kind"], r["strategy"]) for r in run["memory"]] == [
        (kind, name) for kind in ("noop", "yield") for name in ("ggopool.go", "gevent.spawn")
    ]
    assert run["latency"] == run["scale"] == []
    # The busy loop's workload compares its four strategies whatever --strategies says.
    assert [r["strategy"] for r in run["busy"]] == [
        "ggopool.go",
        "ggopool.Pool",
        "gevent.spawn",
        "gevent.pool.Pool",
    ]
    ids = {t["id"] for t in run["targets"]}
    assert {"go_noop_throughput", "go_yield_throughput", "go_trickle_throughput"} <= ids
    assert {"go_busy_p50_start_latency", "pool_busy_p99_start_latency"} <= ids
    assert all(i.startswith(("go_", "pool_busy_")) for i in ids)
    assert run["complete"] is True
    text = bench(*sizes, "--workloads", "trickle").stdout
    assert "The headline run: ggopool.go against gevent.spawn." in text


@pytest.mark.parametrize(("suffix", "magic"), [(".svg", b"<?xml"), (".png", b"\x89PNG")])
def test_plot_draws_the_run_into_the_file_its_suffix_names(
    tmp_path: Path, suffix: str, magic: bytes
) -> None:
    chart = tmp_path / f"run{suffix}"
    proc = bench(
        *TINY, "--workloads", "noop,memory", "--memory-kinds", "noop", "--plot", str(chart)
    )
    assert proc.returncode == 0, proc.stderr
    assert f"chart: {chart}" in proc.stderr
    drawn = chart.read_bytes()
    assert drawn.startswith(magic)
    if suffix == ".svg":
        text = drawn.decode()
        # Every strategy is in the legend, and the chart carries the command and the machine.
        for name in ALL:
            assert name in text
        assert "python -m ggopool bench" in text  # "--" is written "- -" in an SVG comment
        assert f"{machine()['cpus']} cpus, {machine()['cpu_model']}" in text


def test_plot_is_refused_before_the_run_for_a_bad_file_or_without_matplotlib() -> None:
    proc = bench("--plot", "run.pdf")
    assert proc.returncode == 2
    assert "--plot: must be a file name ending in .svg or .png, got 'run.pdf'" in proc.stderr
    # matplotlib made unimportable, as if the plot extra were not installed.
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from ggopool.bench.cli import main\n"
        "sys.exit(main(['--plot', 'run.svg']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "--plot needs matplotlib, which is not installed: pip install 'ggopool[plot]'" in (
        proc.stderr
    )
    assert not re.search(r"^bench \[", proc.stderr, re.MULTILINE)  # before the first step
