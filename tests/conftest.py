"""Shared pytest fixtures.

Keep this small and cheap: nothing heavy is imported here, so trace-only tests run without loading torch or
transformers (every layer above ``armt_viz.trace`` must import without torch).
"""

from __future__ import annotations

import os
import random
import sys
import threading
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 0

# No tqdm bars from transformers / huggingface_hub ("Loading weights", ...; ENV.md T8). transformers reads this
# at import time, and the variable also reaches subprocesses (notebook kernels, CLI runs).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _disable_transformers_progress_bars() -> None:
    if "transformers" in sys.modules:  # imported before this conftest: switch it off explicitly
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except Exception:  # a broken transformers install must not break collection
            pass


_disable_transformers_progress_bars()


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed python's and numpy's global RNGs, and torch's if torch is importable, before every test.

    torch is never imported just to be seeded: it is seeded whenever it is already loaded (test modules
    import it at collection time). A torch first imported inside a test body starts from its fixed default seed.
    """
    random.seed(SEED)
    np = sys.modules.get("numpy")
    if np is None:
        try:
            import numpy as np
        except ImportError:
            np = None
    if np is not None:
        np.random.seed(SEED)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "manual_seed"):
        torch.manual_seed(SEED)
        # tiny models run fastest on one intra-op thread; two threads per xdist worker on a 2-core box
        # oversubscribe (5-14x slower). `make test` also sets OMP_NUM_THREADS=1.
        torch.set_num_threads(1)
    yield


@pytest.fixture
def tmp_store(tmp_path: Path) -> Path:
    """Path of a fresh zarr trace store under the test's tmp dir (the store itself is not created)."""
    return tmp_path / "trace.zarr"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``test-artifacts/`` under the repo root (git-ignored; created): screenshots, logs, exported figures."""
    path = REPO_ROOT / "test-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


class _PerThreadCurdocs(threading.local):
    """bokeh.io.doc._PATCHED_CURDOCS, one stack per thread (see `_no_leftover_panel_session`)."""

    def __init__(self):
        self.stack = []

    def append(self, ref):
        self.stack.append(ref)

    def pop(self, *index):
        return self.stack.pop(*index)

    def __len__(self):
        return len(self.stack)

    def __getitem__(self, index):
        return self.stack[index]


@pytest.fixture(autouse=True)
def _no_leftover_panel_session():
    """A test that builds dashboard objects outside a server must not inherit the current document of a session
    that an earlier test in the same worker served (its event loop is closed by then, and code that schedules on
    the session's document, such as opening a trace in the background, would fail with 'Event loop is closed').

    Two ways such a document reaches `pn.state.curdoc` here: Panel's own context variable (reset below), and its
    fallback, bokeh's `curdoc()`, whose `_PATCHED_CURDOCS` stack is one list for the whole process. A server
    served from a thread of this process (`run_serve(threaded=True)`) pushes each session callback's document
    there, so this thread saw it while a callback ran, and `patch_curdoc` pops it without try/finally, so a
    callback that raised left its document there for good (seen: tests/viz/test_links_compare_share.py failing with
    'Event loop is closed' after tests/reliability/test_rel_hostile_page.py in the same worker). Here the stack is
    made per thread, as it is in effect for `armt-viz serve`, whose sessions all run on its one event loop thread."""
    panel = sys.modules.get("panel")
    if panel is not None:
        panel.state.curdoc = None
    _per_thread_curdocs()  # normally done already, by `_per_thread_bokeh_curdocs`
    yield


def _per_thread_curdocs() -> None:
    bokeh_doc = sys.modules.get("bokeh.io.doc")
    if bokeh_doc is not None and not isinstance(bokeh_doc._PATCHED_CURDOCS, _PerThreadCurdocs):
        stack = _PerThreadCurdocs()
        for ref in list(bokeh_doc._PATCHED_CURDOCS):  # this thread's, if any (no server runs yet)
            stack.append(ref)
        bokeh_doc._PATCHED_CURDOCS = stack


@pytest.fixture(scope="session", autouse=True)
def _per_thread_bokeh_curdocs():
    """Before any module- or session-scoped server starts: the per-thread stack of `_no_leftover_panel_session`
    (bokeh is loaded by then if any collected test module imports Panel)."""
    _per_thread_curdocs()
    yield


# The slowest test files, started first. `make test` runs two xdist workers with --dist loadfile, which hands out
# whole files in collection order: collected last (tests/ui, tests/viz sort late), the long files left one
# worker running alone at the end (5m19s wall for 7m40s of CPU on 2 cores). Longest first balances the two.
_SLOW_FIRST = ("tests/test_notebooks.py", "tests/ui/test_links_live_ui.py", "tests/ui/test_live_ui.py",
               "tests/record/test_resume.py", "tests/reliability/test_rel_hostile_page.py", "tests/test_study.py",
               "tests/ui/test_dashboard_ui.py", "tests/reliability/test_rel_hostile_traces.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        rel = Path(str(item.fspath)).resolve().relative_to(REPO_ROOT).as_posix()
        return _SLOW_FIRST.index(rel) if rel in _SLOW_FIRST else len(_SLOW_FIRST)
    items.sort(key=rank)  # stable: the order within a file, and of the other files, is kept
