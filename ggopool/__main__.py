"""python -m ggopool: the demo, or the benchmark.

python -m ggopool [demo] runs a burst of tasks through a capped pool and prints what
happened (the default). python -m ggopool bench runs the benchmark: see
python -m ggopool bench --help for its options.
"""

from __future__ import annotations

import argparse
import sys
import time

import gevent

import ggopool


def demo(tasks: int, cap: int) -> int:
    pool = ggopool.new_pool("demo", cap)
    runners: set[int] = set()
    peak_running = 0
    running = 0
    done = 0
    finished = gevent.event.Event()

    def task() -> None:
        nonlocal running, peak_running, done
        running += 1
        peak_running = max(peak_running, running)
        runners.add(id(gevent.getcurrent()))
        gevent.sleep(0)  # yield once, as a task doing I/O would
        running -= 1
        done += 1
        if done == tasks:
            finished.set()

    start = time.perf_counter()
    for _ in range(tasks):
        pool.go(task)
    queued = pool.task_count()
    workers = pool.worker_count()
    finished.wait()
    elapsed = time.perf_counter() - start
    print(f"pool {pool.name!r} cap={pool.cap}")
    print(f"queued {queued} tasks with go() in a burst; {workers} workers started")
    print(f"ran {done} of {tasks} tasks in {elapsed:.3f} s ({done / elapsed:,.0f} tasks/s)")
    print(f"at most {peak_running} ran at once; {len(runners)} worker greenlets ran them all")
    print(f"after the burst: {pool.worker_count()} workers parked, {pool.task_count()} queued")
    return 0 if done == tasks and peak_running <= cap else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Imported only when asked for: the demo should not pay for the bench's imports.
        from ggopool.bench.cli import main as bench

        return bench(argv[1:])
    if argv[:1] == ["demo"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="python -m ggopool",
        usage=(
            "python -m ggopool [demo] [-h] [-n TASKS] [--cap CAP]\n"
            "       python -m ggopool bench [-h] [--full | --quick] [--plot FILE] [options]"
        ),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-n", "--tasks", type=int, default=100_000, help="tasks to run (default: 100,000)"
    )
    parser.add_argument("--cap", type=int, default=100, help="the pool's cap (default: 100)")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.cap < 1:
        parser.error(f"--tasks and --cap must be >= 1, got {args.tasks} and {args.cap}")
    return demo(args.tasks, args.cap)


if __name__ == "__main__":
    sys.exit(main())
