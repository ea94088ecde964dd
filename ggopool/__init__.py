"""ggopool: a port of ByteDance's gopool to gevent.

Reuse worker greenlets instead of spawning one per task: ``ggopool.go(fn)`` where an
application now writes ``gevent.spawn(fn)``.
"""

from ggopool import _fork  # noqa: F401 - registers the after-fork reset of every pool
from ggopool._config import Config
from ggopool._default import (
    ctx_go,
    default_pool,
    get_pool,
    go,
    new_pool,
    register_pool,
    set_cap,
    set_panic_handler,
    spawn,
    spawn_later,
    worker_count,
)
from ggopool._errors import PoolClosed, PoolFull, TaskCancelled
from ggopool._group import TaskGroup
from ggopool._instrument import Instrument, TaskInfo
from ggopool._panic import FailedTask, PanicHandler, failed_task
from ggopool._pool import Pool
from ggopool._shutdown import drain, set_exit_drain  # importing it registers the exit drain
from ggopool._stats import PoolStats
from ggopool._task import Task
from ggopool._version import __version__ as __version__

__all__ = [
    "Config",
    "FailedTask",
    "Instrument",
    "PanicHandler",
    "Pool",
    "PoolClosed",
    "PoolFull",
    "PoolStats",
    "Task",
    "TaskCancelled",
    "TaskGroup",
    "TaskInfo",
    "ctx_go",
    "default_pool",
    "drain",
    "failed_task",
    "get_pool",
    "go",
    "new_pool",
    "register_pool",
    "set_cap",
    "set_exit_drain",
    "set_panic_handler",
    "spawn",
    "spawn_later",
    "worker_count",
]
