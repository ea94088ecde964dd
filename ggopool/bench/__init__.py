"""The benchmark behind ``python -m ggopool bench``: ggopool against gevent, in one run.

It imports the library and is never imported by it. One module per part:

* `cli`: the command line and the order the workloads run in;
* `settings`: what a run measures: the headline (the default), ``--full`` and ``--quick``;
* `strategies`: the ways to run a task that are compared (``ggopool.go``, ``ggopool.Pool``,
  ``gevent.spawn``, ``gevent.spawn_raw``, ``gevent.pool.Pool``, ``deque-floor``);
* `workloads`: what the tasks do, and the counting that proves each one ran;
* `rounds`: interleaved rounds and the burst-throughput workloads (noop, yield, gopool);
* `trickle`, `tcp`, `latency`, `scale`: the other timed workloads;
* `memory` (with `rss`): RSS growth of a burst, each strategy in a fresh process;
* `fresh_process`: running a part of the bench in a child and reading its JSON;
* `results`, `targets`, `report`: the run as a document, the targets, the tables;
* `plot`: the run as a chart (``--plot FILE``, with matplotlib);
* `progress`: the progress line on stderr.
"""
