"""Bad input (issue 8.2): each refused with an error that says what was expected, what came and how to fix it.

Every case names the words its message must contain: `expect` (what was expected), `got` (what came) and `fix`
(how to fix it). INPUTS_TRIED counts the cases (reported by the closing note).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import armt_viz as av
import record_worker as rw
from armt_viz.config import ARMTConfig
from armt_viz.trace.store import COMMIT_FILE


def _says(exc_info, *patterns):
    msg = str(exc_info.value)
    for p in patterns:
        assert re.search(p, msg, re.I | re.S), f"message lacks {p!r}: {msg}"


# ---------------------------------------------------------------- token ids and masks

V = 32  # tiny_model's vocabulary
IDS = {
    # name: (input_ids, exception, [expected, got, fix])
    "id == vocab": (torch.tensor([[1, 2, V]]), ValueError, [r"\[0, 32\)", r"max 32", r"tokenizer"]),
    "id far out of range": (torch.tensor([[1, 10**6]]), ValueError, [r"\[0, 32\)", r"max 1000000", r"tokenizer"]),
    "negative id": (torch.tensor([[-1, 2]]), ValueError, [r"\[0, 32\)", r"min -1", r"not -100/-1"]),
    "-100 padding": (torch.tensor([[5, -100]]), ValueError, [r"\[0, 32\)", r"min -100", r"padding"]),
    "float32 ids": (torch.tensor([[1.0, 2.0]]), TypeError, [r"integer dtype", r"float32", r"\.long\(\)"]),
    "float64 whole numbers": (torch.tensor([[1.0, 2.0]], dtype=torch.float64), TypeError, [r"integer", r"float64", r"\.long\(\)"]),
    "float with fraction": (torch.tensor([[1.5]]), TypeError, [r"integer", r"float32", r"convert"]),
    "bool ids": (torch.tensor([[True, False]]), TypeError, [r"integer", r"bool", r"convert"]),
    "complex ids": (torch.tensor([[1 + 0j]]), TypeError, [r"integer", r"complex", r"convert"]),
    "empty [1, 0]": (torch.zeros(1, 0, dtype=torch.long), ValueError, [r"at least one token", r"\(1, 0\)", r"pass"]),
    "empty [0, 5]": (torch.zeros(0, 5, dtype=torch.long), ValueError, [r"at least one token", r"\(0, 5\)", r"pass"]),
    "3-d ids": (torch.zeros(1, 2, 3, dtype=torch.long), ValueError, [r"\[batch, seq\]", r"\(1, 2, 3\)", r"reshape"]),
    "python list": ([[1, 2, 3]], TypeError, [r"torch\.Tensor", r"list", r"torch\.as_tensor"]),
    "numpy array": (np.array([[1, 2]]), TypeError, [r"torch\.Tensor", r"ndarray", r"torch\.as_tensor"]),
}


@pytest.mark.parametrize("case", list(IDS))
def test_bad_token_ids_are_refused_by_forward(model, case):
    ids, exc, words = IDS[case]
    with pytest.raises(exc) as ei:
        model(ids)
    _says(ei, *words)


RECORD_IDS = {  # through av.record (tensor, array or stream input)
    "float array": (np.array([[1.0, 2.0] * 20]), TypeError, [r"integer", r"float64", r"\.long\(\)"]),
    "out of range in the 3rd stream chunk": ((torch.full((2, 20), i * 20) for i in range(3)), ValueError,
                                              [r"\[0, 32\)", r"max 40", r"tokenizer"]),
    "empty stream": (iter([]), ValueError, [r"at least one token", r"no tokens", r"expected"]),
    "chunks of different batch": (iter([torch.ones(2, 20, dtype=torch.long), torch.ones(3, 20, dtype=torch.long)]),
                                  ValueError, [r"same batch|same samples", r"batch 3", r"earlier chunks 2"]),
    "bool tensor": (torch.ones(1, 40, dtype=torch.bool), TypeError, [r"integer", r"bool", r"convert"]),
    "string": ("some text", TypeError, [r"token ids", r"str", r"tensor"]),
}


@pytest.mark.parametrize("case", list(RECORD_IDS))
def test_bad_token_input_is_refused_by_record(model, case, tmp_path):
    inp, exc, words = RECORD_IDS[case]
    with pytest.raises(exc) as ei:
        av.record(model, inp, store=tmp_path / "t.zarr", progress=False)
    _says(ei, *words)


MASKS = {
    "batch mismatch": (torch.ones(2, 8, dtype=torch.long), ValueError, [r"one 0/1 entry per token", r"\(2, 8\)", r"\(1, 8\)"]),
    "length mismatch": (torch.ones(1, 7, dtype=torch.long), ValueError, [r"does not match", r"\(1, 7\)", r"one 0/1 entry"]),
    "values not 0/1": (torch.full((1, 8), 2), ValueError, [r"only 0 .* and 1", r"max 2", r"\(ids != pad_id\)"]),
    "NaN mask": (torch.full((1, 8), float("nan")), ValueError, [r"only 0 .* and 1", r"nan", r"pass one 0/1"]),
    "list mask": ([[1] * 8], TypeError, [r"torch\.Tensor", r"list", r"torch\.as_tensor"]),
}


@pytest.mark.parametrize("case", list(MASKS))
def test_bad_attention_masks_are_refused(model, case):
    mask, exc, words = MASKS[case]
    with pytest.raises(exc) as ei:
        model(torch.ones(1, 8, dtype=torch.long), attention_mask=mask)
    _says(ei, *words)


# ---------------------------------------------------------------- NaN / Inf in activations or memory

def _poisoned(edit):
    m = rw.make_model()
    with torch.no_grad():
        edit(m)
    return m


def _nan_input_embedding_31(m):
    """Untie the output head (so only the *input* row is poisoned), then make token 31's embedding NaN."""
    m.backbone.lm_head.weight = torch.nn.Parameter(m.backbone.lm_head.weight.detach().clone())
    m.backbone.get_input_embeddings().weight[31] = float("nan")


NONFINITE = {
    # name: (weight edit, tokens, expected segment, expected layer, words)
    "inf in layer 1's MLP": (lambda m: m.blocks[1].layer.mlp.c_proj.weight.__setitem__((0, 0), float("inf")),
                             None, 0, 1, [r"activations"]),
    "nan in layer 0's write key projection": (lambda m: m.blocks[0].W_mk.weight.__setitem__((0, 0), float("nan")),
                                              None, 0, 0, [r"memory matrix A"]),
    "nan input embedding of a token first seen in segment 3": (_nan_input_embedding_31, "token31@3", 3, 0, []),
    "inf write value in layer 1": (lambda m: m.blocks[1].W_mv.weight.__setitem__((0, 0), float("inf")),
                                   None, 0, 1, [r"memory"]),
}


@pytest.mark.parametrize("case", list(NONFINITE))
def test_nan_or_inf_names_segment_and_layer_and_keeps_the_store(case, tmp_path):
    edit, tokens, seg, layer, words = NONFINITE[case]
    m = _poisoned(edit)
    ids = rw.token_ids(160) % 31  # never token 31
    if tokens == "token31@3":
        ids[1, 3 * 16 + 5] = 31
    store = tmp_path / "t.zarr"
    with pytest.raises(FloatingPointError) as ei:
        av.record(m, ids, store=store, chunk_segments=2, progress=False)
    _says(ei, rf"segment {seg}\b", rf"layer {layer}\b", r"NaN/Inf", r"non-finite weights", r"check_finite=False",
          re.escape(str(store)), *words)
    if seg < 2:  # the first chunk (2 segments) never committed: no store, and the message says so
        assert "Nothing was committed" in str(ei.value)
        with pytest.raises(FileNotFoundError):
            av.open_trace(store)
    else:
        ds = av.open_trace(store)  # the committed prefix is intact
        assert ds.sizes["segment"] == seg // 2 * 2 and f"keeps the {seg // 2 * 2} segments" in str(ei.value)
        for k, v in ds.data_vars.items():
            if "segment" in v.dims and v.dtype.kind == "f":
                assert np.isfinite(v.values).all(), k
    # the plain forward is not checked (kept fast) and check_finite=False records the values anyway
    t = av.record(m, ids[:, :64], check_finite=False, progress=False)
    assert not np.isfinite(t["assoc_norm"].values).all()


# ---------------------------------------------------------------- checkpoints that do not match the config

@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory, model):
    """`model` saved with the official code's key names (memory_cell.*), as a torch .bin."""
    sd = {("memory_cell.memory" if k == "memory" else "memory_cell.model." + k[len("backbone."):]): v.clone()
          for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "pytorch_model.bin"
    torch.save(sd, path)
    return path


CKPT = {
    "wrong d_mem": (dict(d_mem=8), [r"W_mq\.weight: checkpoint \(16, 64\) vs model \(8, 64\)", r"d_mem"]),
    "wrong num_mem_tokens": (dict(num_mem_tokens=2), [r"memory: checkpoint \(4, 64\) vs model \(2, 64\)", r"num_mem_tokens"]),
    "wrap_pos mismatch": (dict(wrap_pos=True), [r"wpe\.weight: checkpoint \(64, 64\) vs model \(68, 64\)", r"wrap_pos=True"]),
    "n_heads mismatch": (dict(n_heads=2), [r"W_mb\.weight: checkpoint \(1, 64\) vs model \(2, 64\)", r"n_heads rows"]),
    "gating mismatch": (dict(gating=True), [r"W_mb\.weight: checkpoint \(1, 64\) vs model \(64, 64\)", r"gating=True"]),
}


@pytest.mark.parametrize("case", list(CKPT))
def test_checkpoint_not_matching_the_config_is_refused(model, official_ckpt, case):
    kw, words = CKPT[case]
    cfg = ARMTConfig(**{**model.config.to_dict(), **kw})
    with pytest.raises(ValueError) as ei:
        av.ARMTModel.from_official(official_ckpt, model.backbone.config, cfg)
    _says(ei, r"does not match the model built from the given config", r"Fix: pass", *words)


def test_checkpoint_of_another_backbone_is_refused(model, official_ckpt):
    bb = model.backbone.config.to_dict()
    bb["n_layer"] = 3
    with pytest.raises(ValueError) as ei:
        av.ARMTModel.from_official(official_ckpt, bb, model.config)
    _says(ei, r"missing keys \(\d+\): \['backbone\.transformer\.h\.2", r"backbone= the HF config")
    # and the matching config loads, bit for bit
    m = av.ARMTModel.from_official(official_ckpt, model.backbone.config, model.config)
    for (k, a), b in zip(m.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_path_problems(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        av.ARMTModel.from_official(tmp_path / "nope.bin", {"model_type": "gpt2"})
    _says(ei, r"does not exist", r"nope\.bin", r"\.safetensors/\.bin/\.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as ei:
        av.ARMTModel.from_official(tmp_path / "empty", {"model_type": "gpt2"})
    _says(ei, r"no weights in directory", r"expected one of", r"found \[\]")
    (tmp_path / "trunc.bin").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError) as ei:
        av.ARMTModel.from_official(tmp_path / "trunc.bin", {"model_type": "gpt2"})
    _says(ei, r"refused to load", r"trunc\.bin", r"re-save it as safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError) as ei:
        av.ARMTModel.from_official(tmp_path / "bad.safetensors", {"model_type": "gpt2"})
    _says(ei, r"not a readable safetensors file", r"bad\.safetensors")


# ---------------------------------------------------------------- stores that are not (readable) traces

def _copy(reference, tmp_path):
    dst = tmp_path / "c.zarr"
    shutil.copytree(reference.encoding["source"], dst)
    return dst


def _edit_json(path: Path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _foreign_v3(p):
    import zarr
    g = zarr.open_group(str(p), mode="w")
    g.create_array("x", shape=(3,), dtype="f4")


def _foreign_v3_with_commit(p):
    _foreign_v3(p)
    (p / COMMIT_FILE).write_text(json.dumps({"sizes": {"segment": 3, "keyframe": 0}}))


def _foreign_v2(p):
    import zarr
    zarr.open_group(str(p), mode="w", zarr_format=2).create_array("x", shape=(3,), dtype="f4")


STORES = {
    # name: (make(path) or edit(copy of the reference), exception, words)
    "missing store": (None, FileNotFoundError, [r"does not exist", r"record one with av\.record"]),
    "a plain file": (lambda p: p.write_text("hello"), ValueError, [r"not an armt_viz trace", r"no armt_commit\.json"]),
    "empty folder": (lambda p: p.mkdir(), ValueError, [r"not an armt_viz trace", r"record it again"]),
    "foreign zarr v3 store": (_foreign_v3, ValueError, [r"not an armt_viz trace", r"foreign zarr store"]),
    "foreign zarr v2 store": (_foreign_v2, ValueError, [r"not an armt_viz trace"]),
    "foreign store with a commit file": (_foreign_v3_with_commit, ValueError, [r"schema_version", r"not written by armt_viz"]),
}
DAMAGED = {
    "commit file is not JSON": (lambda p: (p / COMMIT_FILE).write_text("garbage"), [r"corrupted", r"expected JSON like"]),
    "commit file is empty": (lambda p: (p / COMMIT_FILE).write_text(""), [r"corrupted", r"expected JSON like"]),
    "commit sizes negative": (lambda p: _edit_json(p / COMMIT_FILE, lambda d: d["sizes"].update(segment=-2)),
                              [r"corrupted", r"non-negative", r"-2"]),
    "commit sizes a string": (lambda p: _edit_json(p / COMMIT_FILE, lambda d: d["sizes"].update(segment="10")),
                              [r"corrupted", r"non-negative ints"]),
    "commit sizes beyond the arrays": (lambda p: _edit_json(p / COMMIT_FILE, lambda d: d["sizes"].update(segment=99)),
                                       [r"holds 10 rows along 'segment'", r"says\s+99", r"damaged", r"Record it again"]),
    "commit state_file escapes the store": (
        lambda p: _edit_json(p / COMMIT_FILE, lambda d: d.update(state_file="../../etc/passwd")),
        [r"state_file must be '_resume/state_<n>\.npz'", r"\.\./\.\./etc/passwd"]),
    "array metadata not JSON": (lambda p: (p / "assoc_norm" / "zarr.json").write_text("{ not json"),
                                [r"unreadable", r"corrupted"]),
    "root metadata not JSON": (lambda p: (p / "zarr.json").write_text("]"), [r"unreadable", r"corrupted"]),
    "newer schema version": (lambda p: _edit_json(p / "zarr.json", lambda d: d["attributes"].update(schema_version=99)),
                             [r"schema version 99", r"newer than this armt_viz supports \(1\)", r"upgrade armt_viz"]),
    "schema version not an int": (lambda p: _edit_json(p / "zarr.json", lambda d: d["attributes"].update(schema_version="1; rm -rf /")),
                                  [r"schema_version must be an int", r"rm -rf"]),
    "attrs not JSON": (lambda p: _edit_json(p / "zarr.json", lambda d: d["attributes"].update(armt_config="{")),
                       [r"armt_config", r"not JSON"]),
    "array with the wrong dims": (lambda p: _edit_json(p / "assoc_norm" / "zarr.json",
                                                       lambda d: d.update(dimension_names=["sample", "segment", "head"])),
                                  [r"assoc_norm: dims \('sample', 'segment', 'head'\)", r"schema says"]),
}


@pytest.mark.parametrize("case", list(STORES))
def test_what_is_not_a_trace_is_refused_clearly(case, tmp_path):
    make, exc, words = STORES[case]
    path = tmp_path / "s.zarr"
    if make:
        make(path)
    with pytest.raises(exc) as ei:
        av.open_trace(path)
    _says(ei, re.escape(str(path)) if case != "array with the wrong dims" else "", *words)


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_trace_is_refused_clearly(case, reference, tmp_path):
    edit, words = DAMAGED[case]
    path = _copy(reference, tmp_path)
    edit(path)
    with pytest.raises(ValueError) as ei:
        av.open_trace(path)
    _says(ei, *words)


INPUTS_TRIED = len(IDS) + len(RECORD_IDS) + len(MASKS) + len(NONFINITE) + len(CKPT) + 1 + 4 + len(STORES) + len(DAMAGED)
