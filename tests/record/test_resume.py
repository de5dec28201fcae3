"""Crash safety: SIGKILL at random moments, the store opens, resume equals an uninterrupted run."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import armt_viz as av

WORKER = Path(__file__).with_name("kill_worker.py")
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}


def _run(store, resume):
    return subprocess.Popen([sys.executable, str(WORKER), str(store), "1" if resume else "0"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    """The workload recorded by the worker without interruption (the store; tests copy it, never change it)."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    p = _run(store, False)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    return store


@pytest.fixture(scope="module")
def reference(reference_store):
    return av.open_trace(reference_store).load()


def _assert_same(a, b):
    assert set(a.variables) == set(b.variables)
    for k in a.variables:
        np.testing.assert_array_equal(a[k].values, b[k].values, err_msg=k)


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_then_open_then_resume_equals_uninterrupted(reference, tmp_path, trial):
    store = tmp_path / "t.zarr"
    random.seed(trial)
    p = _run(store, False)
    # wait for the first commit, then kill at a random moment
    t0 = time.time()
    while not (store / "armt_commit.json").exists() and time.time() - t0 < 120:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))
    p.send_signal(signal.SIGKILL)
    p.wait()
    ds = av.open_trace(store)  # opens: a consistent committed prefix
    n = ds.sizes["segment"]
    assert 0 < n <= reference.sizes["segment"]
    np.testing.assert_array_equal(ds["assoc_norm"].values, reference["assoc_norm"].values[:, :n])
    p = _run(store, True)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    _assert_same(av.open_trace(store).load(), reference)


def test_open_trace_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        av.open_trace(tmp_path / "nope.zarr")
    import zarr
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    with pytest.raises(ValueError, match="not an armt_viz trace"):
        av.open_trace(tmp_path / "foreign.zarr")


def test_corrupted_metadata_is_a_clear_error(reference_store, tmp_path):
    store = tmp_path / "c.zarr"
    shutil.copytree(reference_store, store)  # a complete recording by the worker (the same workload)
    av.open_trace(store)  # opens before the damage
    (store / "assoc_norm" / "zarr.json").write_text("{ not json")
    with pytest.raises(ValueError, match="corrupted|unreadable"):
        av.open_trace(store)
    (store / "armt_commit.json").write_text("garbage")
    with pytest.raises(ValueError, match="corrupted"):
        av.open_trace(store)
