"""Worker processes that end with their parent.

A `ProcessPoolExecutor` worker waits on its task queue forever when its parent is killed (SIGKILL, the OOM
killer, a container stopped without a clean shutdown): `atexit` never runs, and the queue's pipe stays open in
the worker. `exit_with_parent` is a pool initializer that ends the worker when the parent process goes away.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from multiprocessing.connection import wait

__all__ = ["exit_with_parent"]


def exit_with_parent() -> None:
    """Pool initializer: a daemon thread waits on the parent's sentinel (readable once the parent has exited) and
    ends this process then. Does nothing in a process without a multiprocessing parent."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        wait([parent.sentinel])
        os._exit(0)
    threading.Thread(target=watch, name="armt-exit-with-parent", daemon=True).start()
