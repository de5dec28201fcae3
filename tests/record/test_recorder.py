"""Recorder: exactness of the event-sourced memory, levels, probes, hooks leave no trace."""

import numpy as np
import pytest
import torch

import armt_viz as av
from armt_viz.model.steps import hf_step
from armt_viz.trace.schema import SCHEMA

from armt_viz.testing import tiny_model

REL = 1e-5  # float32 storage: reconstruction vs dense A/z, relative to scale


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("cfg", [{}, {"n_heads": 2, "normalize_features": True, "gamma_eps": False},
                                 {"gating": True, "correction": False}, {"use_denom": False}])
def test_memory_at_equals_full_trace_every_segment_and_layer(cfg, tmp_path):
    m = tiny_model(**cfg)
    ids = torch.randint(0, 32, (2, 150))
    full = av.record(m, ids, level="full", keyframe_every=4, progress=False)
    wr = av.record(m, ids, store=tmp_path / "w.zarr", level="writes", keyframe_every=4, progress=False)
    for s in range(full.sizes["segment"]):
        for l in range(2):
            A, z = av.memory_at(wr, segment=s, layer=l)
            assert _rel(A, full["assoc_matrix"][:, s, l]) <= REL, (s, l)
            if cfg.get("use_denom", True):
                assert _rel(z, full["normalizer"][:, s, l]) <= REL, (s, l)


@pytest.mark.parametrize("fast", [False, True])
def test_full_trace_equals_model_state(model, fast):
    """fast=False records the HF-wrapped step itself (bit-equal); fast=True (the CPU default) the lean step,
    equal to rounding."""
    ids = torch.randint(0, 32, (1, 70))
    ds = av.record(model, ids, level="full", progress=False, fast=fast)
    with torch.no_grad():
        outs = list(model.run_segments(model._split(ids, None)))
    for s, o in enumerate(outs):
        for l in range(2):
            got, want = ds["assoc_matrix"][:, s, l].values, o.state.flat_assoc(l).numpy()
            if fast:
                assert _rel(got, want) <= REL, (s, l)
            else:
                np.testing.assert_array_equal(got, want)


def test_default_16bit_storage_stays_within_1e3(model):
    ids = torch.randint(0, 32, (1, 400))
    full = av.record(model, ids, level="full", progress=False)
    wr = av.record(model, ids, level="writes", storage_dtype="float16", keyframe_every=1000, progress=False)
    worst = max(_rel(av.memory_at(wr, s, l)[0], full["assoc_matrix"][:, s, l])
                for s in range(full.sizes["segment"]) for l in range(2))
    assert 0 < worst <= 1e-3, worst  # >0: the 16-bit path really is lossy, so this test can fail


def test_recording_does_not_change_logits_and_removes_hooks(model):
    ids = torch.randint(0, 32, (2, 90))
    with torch.no_grad():
        before = model(ids).logits
    av.record(model, ids, level="full", probes=[(0, 3), (1, 40)], progress=False)
    assert all(not p.fns for p in model.hook_points().values())
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_probe_read_out_equals_hooked_value(model):
    ids = torch.randint(0, 32, (2, 64))
    ds = av.record(model, ids, level="summary", probes=[(1, 37)], progress=False, fast=False)  # the HF step
    seen = {}

    def grab(x, *, hook):
        seen.setdefault(hook.layer, []).append(x.clone())
    with model.hooks([(lambda n: n.endswith("hook_read_out"), grab)]), torch.no_grad(), hf_step(model):
        model(ids)  # the same (HF) step as the recording
    for l in range(2):
        np.testing.assert_allclose(ds["read_out"][0, l].values, seen[l][37 // 16 - 1][1, 37 % 16].numpy(), rtol=1e-6)


def test_schema_dims_and_attrs(model, tmp_path):
    ds = av.record(model, torch.randint(0, 32, (1, 40)), store=tmp_path / "t.zarr", level="full", probes=[(0, 20)],
                   progress=False)
    for name, v in ds.variables.items():
        if name in SCHEMA:
            assert tuple(v.dims) == SCHEMA[name].dims, name
            assert v.attrs.get("long_name") == SCHEMA[name].long_name, name
    assert av.ARMTConfig.from_json(ds.attrs["armt_config"]) == model.config
    assert ds.attrs["complete"] == 1


def test_streamed_input_equals_tensor_input(model):
    ids = torch.randint(0, 32, (1, 100))
    a = av.record(model, ids, level="writes", progress=False)
    b = av.record(model, (ids[:, i:i + 7] for i in range(0, 100, 7)), level="writes", progress=False)
    for k in ("write_key", "write_delta", "assoc_norm", "tokens"):
        np.testing.assert_array_equal(a[k].values, b[k].values)


def test_replay_without_edits_reproduces_the_run(model):
    ids = torch.randint(0, 32, (1, 128))
    ds = av.record(model, ids, level="writes", keyframe_every=3, progress=False)
    rp = av.replay(model, ds, from_segment=5)
    np.testing.assert_allclose(rp["assoc_norm"].values, ds["assoc_norm"].values[:, 5:], rtol=1e-5)


def test_replay_delete_edit_removes_the_write(model):
    ids = torch.randint(0, 32, (1, 96))
    ds = av.record(model, ids, level="writes", progress=False)
    from armt_viz.record.replay import restore_state
    st = restore_state(model, ds, 3, edits=[{"op": "delete", "segment": 3, "layer": 0}])
    A2, _ = av.memory_at(ds, 2, 0)
    np.testing.assert_allclose(st.flat_assoc(0).numpy(), A2.values, rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(TypeError, match="integer dtype"):
        av.record(model, torch.rand(1, 20), progress=False)
    with pytest.raises(ValueError, match="lie in"):
        av.record(model, torch.tensor([[1, 2, 99]]), progress=False)
    with pytest.raises(ValueError, match="lie in"):
        av.record(model, torch.tensor([[1, -2, 3]]), progress=False)
    with pytest.raises(ValueError, match="empty"):
        av.record(model, torch.zeros(1, 0, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="level"):
        av.record(model, torch.tensor([[1, 2]]), level="everything", progress=False)


@pytest.mark.parametrize("dtype,bound", [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_16bit_storage_is_really_16bit_and_decodes(model, tmp_path, dtype, bound):
    ids = torch.randint(0, 32, (1, 64))
    ref = av.record(model, ids, level="writes", progress=False)
    ds = av.record(model, ids, store=tmp_path / "t.zarr", level="writes", storage_dtype=dtype, progress=False)
    import zarr
    raw = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")["write_delta"]
    assert raw.dtype.itemsize == 2
    got, want = ds["write_delta"].values.astype(np.float64), ref["write_delta"].values
    assert 0 < np.abs(got - want).max() / np.abs(want).max() <= bound


def test_keyframe_spectrum_and_effective_rank_match_numpy_svd(model):
    """Spectra come from the Gram matrix's eigenvalues (fast on a GPU); they must equal a float64 SVD."""
    ids = torch.randint(0, model.vocab_size, (2, 9 * model.config.segment_size))
    ds = av.record(model, ids, level="summary", keyframe_every=3, progress=False, spectrum_rank=5)
    A = ds["keyframe_assoc"].values.astype(np.float64)  # [sample, keyframe, layer, F, D]
    sv = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(ds["spectrum"].values, sv[..., :5], rtol=1e-5, atol=1e-6 * sv.max())
    p = sv / sv.sum(-1, keepdims=True)
    er = np.exp(-(p * np.log(np.where(p > 0, p, 1))).sum(-1))
    np.testing.assert_allclose(ds["effective_rank"].values, er, rtol=1e-4)
    assert ds.sizes["keyframe"] == 3 and (ds["effective_rank"].values > 1).all()


def test_big_chunks_split_along_layers_and_read_back_the_same(tmp_path, monkeypatch):
    """Chunks over store._SPLIT_CHUNK_BYTES are cut along the layer axis (compressed on several threads); lowered
    here so a tiny model's write events and keyframes split: the reconstruction and the dense trace still agree."""
    import zarr
    from armt_viz.trace import store

    m = tiny_model()
    ids = torch.randint(0, 32, (2, 150))
    full = av.record(m, ids, level="full", keyframe_every=4, progress=False)
    monkeypatch.setattr(store, "_SPLIT_CHUNK_BYTES", 4096)
    wr = av.record(m, ids, store=tmp_path / "w.zarr", level="writes", keyframe_every=4, progress=False)
    g = zarr.open_group(str(tmp_path / "w.zarr"), mode="r")
    for name in ("write_delta", "keyframe_assoc"):
        dims = g[name].metadata.dimension_names
        assert g[name].chunks[dims.index("layer")] == 1, (name, g[name].chunks)
    for s in range(full.sizes["segment"]):
        for l in range(2):
            A, _ = av.memory_at(wr, segment=s, layer=l)
            assert _rel(A, full["assoc_matrix"][:, s, l]) <= REL, (s, l)
