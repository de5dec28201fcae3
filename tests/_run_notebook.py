"""Execute one notebook top to bottom with nbclient, in a process of its own (tests/test_notebooks.py runs this).

    python tests/_run_notebook.py NOTEBOOK OUT [--timeout SECONDS]

Runs NOTEBOOK in the `python3` kernel (this interpreter) with the notebook's folder as the working directory, and
writes the executed notebook to OUT. Exit status 0: every cell ran; 1: a cell raised or timed out (nbclient's
message, naming the cell, on stderr; OUT then holds the notebook as far as it ran). `--timeout`: per cell.

Why a process of its own: nbclient's client waits for each cell's reply on asyncio zmq sockets in the calling
process. Inside a pytest worker that had run the dashboard tests first, that wait missed the reply of the last
cell and slept until the cell timeout (make test: 10 min of a 13 min run; tests/test_notebooks.py says more).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellControlSignal, CellExecutionError, CellTimeoutError, DeadKernelError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    args = ap.parse_args(argv)
    nb = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
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
