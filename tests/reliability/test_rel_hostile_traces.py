"""Hostile files and concurrent writers (issue 16), below the page: confinement, budgets, missing data, one writer,
resume provenance, overwrite safety, checkpoint headers. The browser side is in test_rel_hostile_page.py.

Each case builds its hostile input from the recorded reliability workload (conftest ``reference``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import armt_viz as av
import record_worker as rw
from armt_viz.trace.confine import MissingChunkError, TraceBudgetError, TraceConfinementError
from armt_viz.trace.guard import ForeignStoreError, StoreLockedError, WriterLock, lock_path
from armt_viz.trace.store import COMMIT_FILE

SECRET = np.float32(424242.0)  # the value a file outside the trace holds; it must never be read


def _copy(reference, dst: Path) -> Path:
    shutil.copytree(reference.encoding["source"], dst)
    return dst


def _tree_digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` (and the lock beside it) by relative name -> SHA-256 of its bytes."""
    out = {}
    for folder, _, files in os.walk(path):
        for f in files:
            full = Path(folder) / f
            out[str(full.relative_to(path))] = hashlib.sha256(full.read_bytes()).hexdigest()
    return out


def _chunk(store: Path, name: str) -> Path:
    return next(p for p in sorted((store / name / "c").rglob("*")) if p.is_file())


def _outside_chunk(tmp_path, reference, name: str) -> Path:
    """A valid chunk file of ``name`` whose values are all SECRET, in a folder outside any trace."""
    import zarr
    other = _copy(reference, tmp_path / "outside" / "other.zarr")
    g = zarr.open_group(str(other), mode="r+", use_consolidated=False)
    g[name][...] = np.full(g[name].shape, SECRET, dtype=g[name].dtype)
    return _chunk(other, name)


# ---------------------------------------------------------------- confinement

def test_a_chunk_symlinked_outside_the_trace_is_refused(reference, tmp_path):
    store = _copy(reference, tmp_path / "root" / "t.zarr")
    secret = _outside_chunk(tmp_path, reference, "assoc_norm")
    target = _chunk(store, "assoc_norm")
    target.unlink()
    target.symlink_to(secret)
    with pytest.raises(TraceConfinementError) as ei:
        av.open_trace(store)
    msg = str(ei.value)
    assert "resolves outside the trace folder" in msg and "assoc_norm/c/" in msg, msg


def test_an_array_folder_symlinked_outside_is_refused(reference, tmp_path):
    store = _copy(reference, tmp_path / "root" / "t.zarr")
    secret = _outside_chunk(tmp_path, reference, "assoc_norm")
    shutil.rmtree(store / "assoc_norm")
    (store / "assoc_norm").symlink_to(secret.parents[len(secret.relative_to(secret.parents[2]).parts) - 2])
    with pytest.raises(TraceConfinementError, match="resolves outside"):
        av.open_trace(store)


def test_a_symlink_inside_the_trace_is_fine_and_a_loop_is_named(reference, tmp_path):
    store = _copy(reference, tmp_path / "t.zarr")
    (store / "_resume" / "alias").symlink_to(store / "zarr.json")  # stays inside: allowed
    av.open_trace(store).load()
    (store / "_resume" / "loop").symlink_to(store / "_resume" / "loop")
    with pytest.raises(TraceConfinementError, match="symlink loop"):
        av.open_trace(store)


def test_a_file_that_vanishes_while_the_trace_is_walked_is_skipped(reference, tmp_path, monkeypatch):
    """A live writer's temporary `.partial` file can be listed and then renamed away before it is stat'ed (seen
    once in `make test`: test_rel_faults' polling reader was refused). Gone is not hostile: it is skipped; the
    committed chunks are still all checked."""
    from armt_viz.trace import confine

    store = _copy(reference, tmp_path / "t.zarr")
    ghost = _chunk(store, "assoc_norm").parent / "0.0123abcd.partial"
    ghost.write_bytes(b"x")
    real_stat = os.stat

    def stat_after_rename(path, *a, **kw):
        if str(path).endswith(".partial"):
            os.unlink(path)  # renamed into place between the listing and the stat
        return real_stat(path, *a, **kw)
    monkeypatch.setattr(confine.os, "stat", stat_after_rename)
    av.open_trace(store).load()
    assert not ghost.exists()
    # a committed chunk that is missing is still an error
    monkeypatch.setattr(confine.os, "stat", real_stat)
    _chunk(store, "assoc_norm").unlink()
    with pytest.raises(MissingChunkError):
        av.open_trace(store)


def test_a_fifo_in_a_trace_is_refused_without_hanging(reference, tmp_path):
    store = _copy(reference, tmp_path / "t.zarr")
    chunk = _chunk(store, "segment_loss")
    chunk.unlink()
    os.mkfifo(chunk)
    result = []
    t = threading.Thread(target=lambda: result.append(_raises(av.open_trace, store)), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "opening a trace with a FIFO hung"
    assert isinstance(result[0], TraceConfinementError) and "FIFO" in str(result[0]), result


def _raises(fn, *a, **k):
    try:
        fn(*a, **k)
    except BaseException as exc:  # noqa: BLE001
        return exc
    return None


# ---------------------------------------------------------------- budgets before allocation

def _edit_meta(store: Path, name: str, **changes) -> None:
    p = store / name / "zarr.json"
    meta = json.loads(p.read_text())
    for k, v in changes.items():
        if k == "chunk_shape":
            meta["chunk_grid"]["configuration"]["chunk_shape"] = v
        else:
            meta[k] = v
    p.write_text(json.dumps(meta))


@pytest.mark.parametrize("case", ["a 10^9 hidden dimension", "10^8 chunks", "a 4 GB chunk", "10^12 committed segments",
                                  "a 5 MB zarr.json"])
def test_declared_sizes_are_checked_before_anything_is_allocated(reference, tmp_path, case):
    store = _copy(reference, tmp_path / "t.zarr")
    meta = json.loads((store / "keyframe_assoc" / "zarr.json").read_text())
    if case == "a 10^9 hidden dimension":
        shape = list(meta["shape"])
        shape[-1] = 10 ** 9
        _edit_meta(store, "keyframe_assoc", shape=shape)
        expect = ["'keyframe_assoc'", "'hidden' of 1,000,000,000", "max_width"]
    elif case == "10^8 chunks":
        _edit_meta(store, "segment_loss", shape=[2, 5 * 10 ** 7], chunk_shape=[1, 1])  # 10^8 chunks
        commit = json.loads((store / COMMIT_FILE).read_text())
        expect = ["'segment_loss'", "chunks", "max_chunks"]
    elif case == "a 4 GB chunk":
        _edit_meta(store, "segment_loss", chunk_shape=[1, 10 ** 9])
        expect = ["'segment_loss'", "4,000,000,000 bytes", "max_chunk_bytes"]
    elif case == "10^12 committed segments":
        commit = json.loads((store / COMMIT_FILE).read_text())
        commit["sizes"]["segment"] = 10 ** 12
        (store / COMMIT_FILE).write_text(json.dumps(commit))
        expect = ["1,000,000,000,000 segments", "max_segments"]
    else:
        meta["attributes"]["padding"] = "x" * 5_000_000
        (store / "keyframe_assoc" / "zarr.json").write_text(json.dumps(meta))
        expect = ["5,0", "bytes", "max_metadata_bytes"]
    t0 = time.perf_counter()
    with pytest.raises(TraceBudgetError) as ei:
        av.open_trace(store)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"refusing took {elapsed:.1f} s"
    for part in expect:
        assert part in str(ei.value), (part, str(ei.value))


def test_limits_are_configurable(reference, tmp_path, monkeypatch):
    store = _copy(reference, tmp_path / "t.zarr")
    monkeypatch.setenv("ARMT_VIZ_TRACE_LIMITS", json.dumps({"max_segments": 4}))
    with pytest.raises(TraceBudgetError, match="max_segments=4"):
        av.open_trace(store)
    monkeypatch.setenv("ARMT_VIZ_TRACE_LIMITS", '{"max_segmnts": 4}')
    with pytest.raises(ValueError, match="max_segments"):
        av.open_trace(store)


def test_int8_data_where_float_is_expected_is_refused(reference, tmp_path):
    import zarr
    store = _copy(reference, tmp_path / "t.zarr")
    g = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    shape, dims = g["assoc_norm"].shape, g["assoc_norm"].metadata.dimension_names
    del g["assoc_norm"]
    g.create_array("assoc_norm", shape=shape, dtype="int8", dimension_names=dims, fill_value=0,
                   config={"write_empty_chunks": True})[...] = 1
    with pytest.raises(ValueError) as ei:
        av.open_trace(store)
    assert "assoc_norm" in str(ei.value) and "int8" in str(ei.value) and "float" in str(ei.value), str(ei.value)


# ---------------------------------------------------------------- missing data

def test_a_missing_chunk_is_an_error_naming_the_array_and_segments(reference, tmp_path):
    store = _copy(reference, tmp_path / "t.zarr")
    ds = av.open_trace(store)
    chunk = store / "write_key" / "c" / "0" / "1" / "0" / "0" / "0"  # sample 0, segments 2-3 (2 per chunk)
    assert chunk.is_file()
    chunk.unlink()  # deleted while a reader has the trace open
    with pytest.raises(MissingChunkError) as ei:
        ds["write_key"].values
    assert "'write_key'" in str(ei.value) and "segments 2-3" in str(ei.value), str(ei.value)
    with pytest.raises(MissingChunkError, match="segments 2-3"):  # and at the next open
        av.open_trace(store)


def test_memory_and_export_refuse_missing_data(reference, tmp_path):
    from armt_viz.viz.export import export_zip, selection_subset
    store = _copy(reference, tmp_path / "t.zarr")
    ds = av.open_trace(store)
    for p in (store / "keyframe_assoc" / "c").rglob("*"):
        if p.is_file():
            p.unlink()
    with pytest.raises(MissingChunkError, match="keyframe_assoc"):
        av.memory_at(ds, segment=5, layer=0).values
    with pytest.raises(MissingChunkError, match="keyframe_assoc"):
        export_zip(selection_subset(ds, segment=5, layer=0))


# ---------------------------------------------------------------- one writer

def _worker(store, *extra, ready=None):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]) + os.pathsep
           + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(Path(rw.__file__)), str(store), *extra]
    if ready:
        args += ["--ready", str(ready)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_writers_the_second_is_refused_and_the_first_is_a_solo_run(reference, tmp_path):
    store = tmp_path / "shared.zarr"
    go = tmp_path / "go"
    second = _worker(store, "--wait-for", str(go), ready=tmp_path / "r2")  # imported, waiting for its turn
    first = _worker(store, "--pace", "1.5")
    deadline = time.time() + 120
    while not (lock_path(store).exists() and (tmp_path / "r2").exists()) and time.time() < deadline:
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.05)
    go.touch()  # the second starts while the first holds the store
    out2 = second.communicate(timeout=300)[0]
    assert second.returncode != 0
    owner = json.loads(lock_path(store).read_text())
    assert "StoreLockedError" in out2 and f"pid {first.pid}" in out2 and owner["pid"] == first.pid, out2[-800:]
    assert first.wait(timeout=300) == 0, first.stdout.read()
    rw.assert_same_trace(av.open_trace(store).load().drop_attrs(), reference.drop_attrs())
    assert not lock_path(store).exists()  # released at the end


def test_a_stale_lock_of_a_dead_writer_is_taken_over(reference, tmp_path, model):
    store = tmp_path / "s.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(store).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "earlier"}))
    rw.assert_same_trace(rw.run(store, model=model).load().drop_attrs(), reference.drop_attrs())
    held = WriterLock(store).acquire()  # and a live holder refuses the next one, naming it
    try:
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            rw.run(store, model=model)
    finally:
        held.release()


# ---------------------------------------------------------------- resume provenance

@pytest.mark.parametrize("change", ["other weights", "other input", "other d_mem", "other num_mem_tokens",
                                    "a shorter input"])
def test_resume_with_other_provenance_is_refused_and_the_store_is_unchanged(reference, tmp_path, model, change):
    import torch

    from armt_viz.testing import tiny_model
    store = tmp_path / "r.zarr"
    with pytest.raises(rw.Crash), rw.crash_points("committed", 2):
        rw.run(store, model=model)
    before = _tree_digest(store)
    kw = {"model": model}
    if change == "other weights":
        kw["model"] = tiny_model(seed=1)
        with torch.no_grad():
            next(kw["model"].parameters()).add_(1e-3)
    elif change == "other d_mem":
        kw["model"] = tiny_model(seed=1, d_mem=8)
    elif change == "other num_mem_tokens":
        kw["model"] = tiny_model(seed=1, num_mem_tokens=2)
    if change == "other input":
        x = rw.token_ids(160, seed=999)
        out = _raises(av.record, kw["model"], x, str(store), **{**rw.record_kwargs(160), "resume": True})
    elif change == "a shorter input":
        x = rw.token_ids(160)[:, :40]  # the same stream, cut before the committed 64 tokens
        out = _raises(av.record, model, x, str(store), **{**rw.record_kwargs(160), "resume": True})
    else:
        out = _raises(rw.run, store, resume=True, **kw)
    assert isinstance(out, ValueError), out
    msg = str(out)
    assert "refused" in msg and "nothing was written" in msg, msg
    key = {"other weights": "weights_sha256", "other input": "input_fingerprint", "other d_mem": "armt_config",
           "other num_mem_tokens": "armt_config", "a shorter input": "committed tokens"}[change]
    assert key in msg, msg
    assert _tree_digest(store) == before, "a refused resume changed the store"
    # and the same inputs still resume to the uninterrupted result
    rw.assert_same_trace(rw.run(store, resume=True, model=model).load(), reference, attrs=False)


# ---------------------------------------------------------------- never delete what we did not write

def test_record_into_a_foreign_zarr_folder_is_refused_and_it_is_intact(tmp_path, model):
    import zarr
    foreign = tmp_path / "theirs.zarr"
    g = zarr.open_group(str(foreign), mode="w", zarr_format=3)
    g.create_array("x", shape=(3,), dtype="f4")[...] = [1, 2, 3]
    (foreign / "notes.txt").write_text("do not lose me")
    before = _tree_digest(foreign)
    with pytest.raises(ForeignStoreError) as ei:
        rw.run(foreign, model=model)
    assert "not an armt_viz trace" in str(ei.value) and "Nothing was deleted" in str(ei.value)
    assert _tree_digest(foreign) == before


def test_our_store_with_unrelated_files_beside_it_is_refused(reference, tmp_path, model):
    store = _copy(reference, tmp_path / "ours.zarr")
    (store / "results.csv").write_text("precious")
    before = _tree_digest(store)
    with pytest.raises(ForeignStoreError, match="results.csv"):
        rw.run(store, model=model)
    assert _tree_digest(store) == before
    (store / "results.csv").unlink()  # our own store alone is replaced as before
    rw.assert_same_trace(rw.run(store, model=model).load().drop_attrs(), reference.drop_attrs())


# ---------------------------------------------------------------- checkpoints

def test_a_config_declaring_a_huge_model_is_refused_before_allocation(tmp_path, model):
    import resource
    d = tmp_path / "m"
    model.save_pretrained(d)
    meta = json.loads((d / "config.json").read_text())
    meta["backbone"].update(n_embd=4096, n_layer=96, n_head=32, vocab_size=50257)  # ~19B parameters
    (d / "config.json").write_text(json.dumps(meta))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as ei:
        av.ARMTModel.from_pretrained(d)
    assert time.perf_counter() - t0 < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 500_000  # KiB: nothing near 76 GB
    assert "does not match config.json" in str(ei.value) and "shape mismatches" in str(ei.value)


def test_checkpoint_files_that_are_not_regular_are_refused(tmp_path, model):
    d = tmp_path / "m"
    model.save_pretrained(d)
    (d / "model.safetensors").unlink()
    os.mkfifo(d / "model.safetensors")
    with pytest.raises(ValueError, match="not a regular file"):
        av.ARMTModel.from_pretrained(d)
    bin_ = tmp_path / "pytorch_model.bin"
    os.mkfifo(bin_)
    with pytest.raises(ValueError, match="not a regular file"):
        av.ARMTModel.from_official(bin_, model.backbone.config, model.config)
    loop = tmp_path / "loop.bin"
    loop.symlink_to(loop)
    with pytest.raises(ValueError, match="symlink loop"):
        av.ARMTModel.from_official(loop, model.backbone.config, model.config)


def test_checkpoint_config_errors_name_the_file(tmp_path, model):
    d = tmp_path / "m"
    model.save_pretrained(d)
    meta = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "backbone"}))
    with pytest.raises(ValueError, match="has no 'backbone' object"):
        av.ARMTModel.from_pretrained(d)
    (d / "config.json").write_text("{ broken")
    with pytest.raises(ValueError) as ei:
        av.ARMTModel.from_pretrained(d)
    assert str(d / "config.json") in str(ei.value) and "not valid JSON" in str(ei.value)


def test_hub_kernel_settings_in_a_checkpoint_are_ignored(tmp_path, model, monkeypatch):
    d = tmp_path / "m"
    model.save_pretrained(d)
    meta = json.loads((d / "config.json").read_text())
    meta["backbone"]["_attn_implementation"] = "kernels-community/flash-attn"
    meta["backbone"]["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
    (d / "config.json").write_text(json.dumps(meta))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning, match="ignoring attn_implementation"):
        loaded = av.ARMTModel.from_pretrained(d)
    assert loaded.backbone.config._attn_implementation in ("eager", "sdpa")
    x = rw.token_ids(32)
    import torch
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
