"""Chunk writes on a worker thread, so the model computes the next chunk while the last one is written.

At most one flush is in flight: `submit` first waits for the previous one, so chunks land in order
and each commit marker still follows its chunk's data (a crash leaves a committed prefix, as before).
An error raised by a flush (a full disk, a NaN found by the finite check) surfaces in the caller at the
next `submit`, `wait` or `close`.

The recorder uses the thread when the model runs on a GPU (the host is mostly idle between replays). On a CPU
the flush runs inline: there the model's small ops are Python-bound, and a writer thread competing for the
GIL made the demo's recording ~30 % slower.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

__all__ = ["BackgroundFlusher"]


class BackgroundFlusher:
    def __init__(self, background: bool = True):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="armt-record-writer") if background else None
        self._pending: Future | None = None

    def submit(self, fn: Callable, *args) -> None:
        self.wait()
        if self._pool is None:
            fn(*args)
            return
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        fut, self._pending = self._pending, None
        if fut is not None:
            fut.result()

    def close(self) -> None:
        """Finish the flush in flight. If the caller is already unwinding an error, that error wins."""
        try:
            if sys.exc_info()[0] is None:
                self.wait()
            elif self._pending is not None:
                self._pending.exception()  # let it finish; the caller's error is the one to report
                self._pending = None
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
