"""The narrative notebooks: committed without outputs, and each one runs top to bottom in a real Jupyter kernel.

Every notebook in `notebooks/` is executed with nbclient (the `python3` kernel, i.e. this interpreter) on small
settings (`ARMT_VIZ_SMALL=1`), from a temporary copy of the folder, so the trace stores it writes (`runs/...`)
land in the test's tmp dir. A cell that raises fails the test, with the cell and its traceback in the message.

nbclient's client runs in a fresh process (tests/_run_notebook.py), and waits for the kernel's messages in
slices of at most a second. Its zmq.asyncio wait for a cell's execute_reply could miss the wake-up: the kernel
had replied and gone idle, the reply sat in the client's shell socket, and the wait slept until the cell timeout
(600 s), whose final check found the reply, so the test passed (make test: 13 minutes instead of 3). Seen on the
last cell of 01_quickstart (many widget messages) in full runs on a loaded machine, in the pytest worker and in a
fresh process alike (diagnosed in a stalled run: the shell socket's zmq eventfd was registered with the event loop
and held no signal, while the reply was queued). A slice's end does the same check as the timeout, so such a miss
now costs at most a second.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
OFFICIAL_CHECKPOINT = REPO_ROOT / "tests" / "golden" / "gpt2_wrap_false"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
RUNNER = Path(__file__).resolve().parent / "_run_notebook.py"
CELL_TIMEOUT_S = 600
NOTEBOOK_TIMEOUT_S = 1800  # the whole run, a guard behind the per-cell limit


def _tail(text: str, n: int = 6000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


def test_the_five_narratives_are_there():
    names = [p.stem for p in NOTEBOOKS]
    for prefix in ("01_", "02_", "03_", "04_", "05_"):
        assert any(n.startswith(prefix) for n in names), f"no notebook {prefix}* in {NOTEBOOK_DIR} (found {names})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before "
                       "committing (Jupyter: Edit > Clear Outputs of All Cells, then save)")
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in the notebook metadata; clear it"


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, work, ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints"))
    env = {**os.environ,  # the runner, and the kernel it starts, inherit this environment
           "ARMT_VIZ_SMALL": "1", "ARMT_VIZ_OFFICIAL_CHECKPOINT": str(OFFICIAL_CHECKPOINT),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           # One intra-op thread: the demo model's matrices are tiny, and with the test workers already using both
           # cores, OpenMP threads contend (recording measured 7x slower with 2 threads than with 1 on a busy machine).
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    executed = tmp_path / f"{path.stem}.executed.ipynb"
    # a session of its own: a run over the guard is killed with its kernel (a grandchild)
    proc = subprocess.Popen([sys.executable, str(RUNNER), str(work / path.name), str(executed),
                             "--timeout", str(CELL_TIMEOUT_S)], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=NOTEBOOK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{path.name} did not finish within {NOTEBOOK_TIMEOUT_S} s\n{_tail(out)}\n{_tail(err)}")
    # a cell that raised (CellExecutionError, naming the cell) or timed out: the runner's message
    assert proc.returncode == 0, f"{path.name}: the runner exited {proc.returncode}\n{_tail(out)}\n{_tail(err)}"
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(PLOTLY_MIME in o.get("data", {}) for o in outputs), f"{path.name} displayed no plotly figure"
