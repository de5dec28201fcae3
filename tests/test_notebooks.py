"""The narrative notebooks: committed without outputs, and each one runs top to bottom in a real Jupyter kernel.

Every notebook in `notebooks/` is executed with nbclient (the `python3` kernel, i.e. this interpreter) on small
settings (`ARMT_VIZ_SMALL=1`), from a temporary copy of the folder, so the trace stores it writes (`runs/...`)
land in the test's tmp dir. A cell that raises fails the test, with the cell and its traceback in the message.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
OFFICIAL_CHECKPOINT = REPO_ROOT / "tests" / "golden" / "gpt2_wrap_false"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


class _WakingClient(nbclient.NotebookClient):
    """nbclient waits for each cell's shell reply on an asyncio zmq socket. In `make test` that wait sometimes
    misses its wake-up: in one stalled run the kernel had executed every cell (execution_count 12 after 11
    cells), was idle, and answered a second client's kernel_info at once, while nbclient slept until its 600 s
    poll timeout, at which point it found the reply and the test passed (make test: 11 min instead of 2). A
    new message on the same socket wakes the poll, so while a cell runs this client asks
    the kernel for kernel_info every few seconds; nbclient skips those replies (other msg ids), and they wait
    in the kernel's queue while a cell is busy. A cell that really hangs still times out."""

    POKE_EVERY_S = 5.0

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        import asyncio

        async def poke():
            while True:
                await asyncio.sleep(self.POKE_EVERY_S)
                self.kc.kernel_info()

        task = asyncio.ensure_future(poke())
        try:
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        finally:
            task.cancel()


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
def test_notebook_executes(path, tmp_path, monkeypatch):
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, work, ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints"))
    monkeypatch.setenv("ARMT_VIZ_SMALL", "1")  # the kernel inherits this process's environment
    monkeypatch.setenv("ARMT_VIZ_OFFICIAL_CHECKPOINT", str(OFFICIAL_CHECKPOINT))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # One intra-op thread: the demo model's matrices are tiny, and with the test workers already using both
    # cores, OpenMP threads contend (recording measured 7x slower with 2 threads than with 1 on a busy machine).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    nb = nbformat.read(work / path.name, as_version=4)
    client = _WakingClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError (naming the cell) on the first cell that fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(PLOTLY_MIME in o.get("data", {}) for o in outputs), f"{path.name} displayed no plotly figure"
