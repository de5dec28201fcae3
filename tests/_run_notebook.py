"""Execute one notebook top to bottom with nbclient, in a process of its own (tests/test_notebooks.py runs this).

    python tests/_run_notebook.py NOTEBOOK OUT [--timeout SECONDS]

Runs NOTEBOOK in the `python3` kernel (this interpreter) with the notebook's folder as the working directory, and
writes the executed notebook to OUT. Exit status 0: every cell ran; 1: a cell raised or timed out (nbclient's
message, naming the cell, on stderr; OUT then holds the notebook as far as it ran). `--timeout`: per cell.

Why the slices: nbclient waits for a kernel's messages with zmq.asyncio sockets (pyzmq), and that wait can miss
its wake-up: the kernel had answered and gone idle, the execute_reply sat in the client's shell socket, and the
wait slept until the cell timeout (600 s), whose final synchronous zmq_poll found it (make test: 10 minutes of a
13-minute run; seen in the pytest worker and in a fresh process like this one; see pyzmq issue 2173 for the
same symptom elsewhere). Here every wait polls in slices of at most `SLICE_S`: a slice that ends does the same
synchronous check, so a missed wake-up costs at most one slice, while the cell timeout stays what it was.
Why a process of its own: nothing a pytest worker has run before (servers, event loops, Playwright's loop, which
marks the worker's main thread as running one) reaches the client.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from queue import Empty

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellControlSignal, CellExecutionError, CellTimeoutError, DeadKernelError

SLICE_S = 1.0


class SlicedWaitClient(NotebookClient):
    """NotebookClient whose shell and iopub waits poll in slices of at most SLICE_S (see the module docstring)."""

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        for channel in (kc.shell_channel, kc.iopub_channel):
            channel.get_msg = self._sliced(channel.get_msg)
        return kc

    def _sliced(self, get_msg):
        async def sliced_get_msg(timeout=None):
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                step = SLICE_S if left is None else max(0.0, min(SLICE_S, left))
                try:
                    return await get_msg(timeout=step)
                except Empty:
                    if left is not None and left <= SLICE_S:
                        raise  # the caller's own timeout
        return sliced_get_msg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    args = ap.parse_args(argv)
    nb = nbformat.read(args.notebook, as_version=4)
    client = SlicedWaitClient(nb, timeout=args.timeout, kernel_name="python3",
                              resources={"metadata": {"path": str(args.notebook.parent)}})
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError, CellControlSignal) as exc:
        print(f"{args.notebook.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        nbformat.write(nb, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
