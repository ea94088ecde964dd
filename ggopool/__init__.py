"""ggopool: ByteDance's gopool for gevent.

Reuse worker greenlets instead of spawning one per task: ``ggopool.go(fn)`` where an
application now writes ``gevent.spawn(fn)``.
"""

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
    worker_count,
)
from ggopool._panic import FailedTask, PanicHandler
from ggopool._pool import Pool

__all__ = [
    "Config",
    "FailedTask",
    "PanicHandler",
    "Pool",
    "ctx_go",
    "default_pool",
    "get_pool",
    "go",
    "new_pool",
    "register_pool",
    "set_cap",
    "set_panic_handler",
    "worker_count",
]
