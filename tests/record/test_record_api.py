"""`armt_viz.record` is the record function, with its real signature and docstring; the subpackage keeps its module
name (issue 14 bug 5: it was the subpackage made callable, `(*args, **kwargs)` and the package's docstring)."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import armt_viz as av

ROOT = Path(__file__).resolve().parents[2]


def test_av_record_is_the_function_with_its_signature_and_docstring():
    import armt_viz.record.replay  # noqa: F401  (the import system binds the subpackage as armt_viz.record)
    from armt_viz.record.recorder import record

    assert isinstance(av.record, types.FunctionType) and av.record is record
    params = list(inspect.signature(av.record).parameters)
    assert params[:4] == ["model", "inputs", "store", "level"] and "initial_state" in params
    assert av.record.__doc__.startswith("Record `model` over `inputs`")
    from armt_viz import record as imported
    assert imported is record


def test_the_subpackage_keeps_its_module_name():
    pkg = importlib.import_module("armt_viz.record")
    assert isinstance(pkg, types.ModuleType) and pkg.__name__ == "armt_viz.record"
    assert sys.modules["armt_viz.record"] is pkg and pkg.record is av.record
    from armt_viz.record import replay
    assert replay is pkg.replay


def test_the_function_survives_a_fresh_import_order():
    code = ("import armt_viz.record.replay, armt_viz as av, inspect, types; "
            "assert isinstance(av.record, types.FunctionType), type(av.record); "
            "print(list(inspect.signature(av.record).parameters)[:2])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "['model', 'inputs']"


def test_av_record_can_be_monkeypatched_and_restored(monkeypatch):
    from armt_viz.record.recorder import record

    def fake(*a, **k):
        return "fake"
    monkeypatch.setattr(av, "record", fake)
    assert av.record() == "fake"
    monkeypatch.undo()
    assert av.record is record


def test_probe_keys_is_the_function_with_its_signature_and_docstring():
    """It was a `(*args, **kwargs)` wrapper that imported the submodule on its first call, which bound the module
    `armt_viz.record.probe_keys` over the wrapper (and over `av.probe_keys` when first looked up after that)."""
    pkg = importlib.import_module("armt_viz.record")
    importlib.import_module("armt_viz.record.probe_keys")  # the submodule: must not shadow the function
    from armt_viz.record.probe_keys import probe_keys
    for fn in (pkg.probe_keys, av.probe_keys):
        assert fn is probe_keys, fn
    params = list(inspect.signature(probe_keys).parameters)
    assert params[:3] == ["model", "ds", "at_segments"] and "include_absent" in params
    assert probe_keys.__doc__.startswith("Replay `k GEN` for every live key")
    code = ("import armt_viz.record.probe_keys, armt_viz as av, types; "
            "assert isinstance(av.probe_keys, types.FunctionType), type(av.probe_keys); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("level", ["summary", "writes", "full"])
@pytest.mark.parametrize("batch", [1, 32, 4096, 10 ** 6])
def test_automatic_chunks_stay_within_what_the_reader_opens(level, batch):
    """32 GPT-2 streams at level writes once made 755 MB chunks, which open_trace refused (max_chunk_bytes)."""
    from armt_viz.record.recorder import _auto_chunk, _check_chunking, _largest_segment_bytes
    from armt_viz.testing import tiny_model
    from armt_viz.trace.confine import TraceLimits

    m = tiny_model(d_mem=16, num_mem_tokens=10)
    for storage in ("float32", "bfloat16"):
        if _largest_segment_bytes(m, level, storage, batch) > TraceLimits().max_chunk_bytes:
            with pytest.raises(ValueError, match="expected fewer samples per call"):
                _check_chunking(m, level, storage, batch, None)
            continue
        _check_chunking(m, level, storage, batch, None)
        n = _auto_chunk(m, level, storage, batch)
        assert 1 <= n <= 512
        assert n * _largest_segment_bytes(m, level, storage, batch) <= TraceLimits().max_chunk_bytes, (level, batch, n)
        if batch == 1:
            assert n >= 16


def test_chunk_segments_past_the_readers_limit_is_refused_before_anything_is_written(tmp_path):
    import armt_viz as av
    from armt_viz.testing import tiny_model

    m = tiny_model()
    with pytest.raises(ValueError, match=r"chunk_segments=100000000 .* expected at most \d+ segments per chunk"):
        av.record(m, torch.randint(0, 32, (2, 64)), store=tmp_path / "t.zarr", chunk_segments=10 ** 8,
                  progress=False)
    assert not (tmp_path / "t.zarr").exists()
