"""Property-based tests (issue 8.2): the config classes and the trace loader under random input.

The task generators have their own hypothesis tests (tests/tasks). Each property here is bounded to a few
seconds (max_examples, no deadline: the machine is shared).
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import armt_viz as av
from armt_viz.config import ARMTConfig, RecordConfig
from armt_viz.trace.store import COMMIT_FILE, TraceStoreError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

# ---------------------------------------------------------------- config classes

POS_INT = ("num_mem_tokens", "d_mem", "segment_size", "nu", "n_heads")
BOOLS = ("wrap_pos", "correction", "normalize_features", "gating", "use_denom", "gamma_eps", "delta_rule")
junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 0), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=5), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


def _valid_armt(d):
    ok = all(isinstance(d[k], int) and not isinstance(d[k], bool) and d[k] >= 1 for k in POS_INT)
    ok &= all(isinstance(d[k], bool) for k in BOOLS)
    ok &= isinstance(d["segment_alignment"], str) and d["segment_alignment"] in ("left", "right", "center")
    ok &= (isinstance(d["eps"], (int, float)) and not isinstance(d["eps"], bool) and math.isfinite(d["eps"])
           and d["eps"] >= 0)
    ok &= d["layers_attr"] is None or (isinstance(d["layers_attr"], str) and d["layers_attr"].strip() != "")
    return bool(ok and d["d_mem"] % d["n_heads"] == 0)


armt_fields = st.fixed_dictionaries({
    **{k: st.one_of(st.integers(1, 64), junk) for k in POS_INT},
    **{k: st.one_of(st.booleans(), junk) for k in BOOLS},
    "segment_alignment": st.one_of(st.sampled_from(["left", "right", "center"]), junk),
    "eps": st.one_of(st.floats(0, 1), junk),
    "layers_attr": st.one_of(st.none(), st.sampled_from(["transformer.h", "gpt_neox.layers"]), junk),
})


@FAST
@given(armt_fields)
def test_armt_config_accepts_exactly_the_valid_fields_and_round_trips(d):
    if _valid_armt(d):
        cfg = ARMTConfig(**d)
        assert ARMTConfig.from_json(cfg.to_json()) == cfg
        assert ARMTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        assert hash(ARMTConfig.from_json(cfg.to_json())) == hash(cfg)
        assert cfg.d_key == 2 * cfg.nu * cfg.d_mem
    else:
        with pytest.raises(ValueError) as ei:
            ARMTConfig(**d)
        msg = str(ei.value)
        assert "ARMTConfig." in msg and "got" in msg, msg  # names the field and the value that came


record_fields = st.fixed_dictionaries({
    "level": st.one_of(st.sampled_from(["summary", "writes", "full"]), junk),
    "keyframe_every": st.one_of(st.integers(1, 512), junk),
    "chunk_segments": st.one_of(st.integers(1, 512), junk),
    "storage_dtype": st.one_of(st.sampled_from(["float32", "float16", "bfloat16"]), junk),
    "spectrum_rank": st.one_of(st.integers(1, 64), junk),
})


def _valid_record(d):
    ints = ("keyframe_every", "chunk_segments", "spectrum_rank")
    return (isinstance(d["level"], str) and d["level"] in ("summary", "writes", "full")
            and isinstance(d["storage_dtype"], str) and d["storage_dtype"] in ("float32", "float16", "bfloat16")
            and all(isinstance(d[k], int) and not isinstance(d[k], bool) and d[k] >= 1 for k in ints))


@FAST
@given(record_fields)
def test_record_config_accepts_exactly_the_valid_fields_and_round_trips(d):
    if _valid_record(d):
        cfg = RecordConfig(**d)
        assert RecordConfig.from_json(cfg.to_json()) == cfg
    else:
        with pytest.raises(ValueError, match=r"RecordConfig\.\w+ must"):
            RecordConfig(**d)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
                           lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c, max_size=3)),
                           max_leaves=8)


@FAST
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(["d_mem", "eps", "nu", "bogus", "wrap_pos"]), json_values)))
def test_from_json_of_anything_is_a_config_or_a_value_error(value):
    for cls in (ARMTConfig, RecordConfig):
        try:
            cfg = cls.from_json(json.dumps(value))
        except ValueError as exc:  # never TypeError / KeyError / AttributeError
            assert cls.__name__ in str(exc), str(exc)
        else:
            assert cls.from_json(cfg.to_json()) == cfg


# ---------------------------------------------------------------- the trace loader vs a damaged commit file

@pytest.fixture(scope="module")
def store_copy(reference, tmp_path_factory):
    dst = tmp_path_factory.mktemp("prop") / "p.zarr"
    shutil.copytree(reference.encoding["source"], dst)
    return dst


def _truncations(real: bytes):
    return st.integers(0, len(real) - 1).map(lambda n: real[:n])


def _flips(real: bytes):
    return st.lists(st.tuples(st.integers(0, len(real) - 1), st.integers(0, 255)), min_size=1, max_size=4).map(
        lambda fl: bytes(_apply(real, fl)))


def _apply(real, flips):
    b = bytearray(real)
    for i, v in flips:
        b[i] = v
    return b


def _commits():
    sizes = st.dictionaries(st.sampled_from(["segment", "keyframe", "sample", ""]),
                            st.one_of(st.integers(-3, 30), st.text(max_size=3), st.none(), st.floats(), st.booleans()),
                            max_size=3)
    state = st.one_of(st.none(), st.just("_resume/state_10.npz"), st.sampled_from(
        ["../../etc/passwd", "/etc/passwd", "_resume/../../x.npz", "_resume/state_1.npz\x00"]), st.integers())
    return st.builds(lambda s, f, extra: json.dumps({"sizes": s, "state_file": f, **extra}).encode(),
                     sizes, state, st.dictionaries(st.text(max_size=4), json_values, max_size=2))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_open_trace_on_any_commit_file_opens_a_true_prefix_or_refuses_clearly(store_copy, reference, data):
    real = (store_copy / COMMIT_FILE).read_bytes()
    content = data.draw(st.one_of(_truncations(real), _flips(real), _commits(), st.binary(max_size=64)))
    (store_copy / COMMIT_FILE).write_bytes(content)
    try:
        try:
            ds = av.open_trace(store_copy)
        except TraceStoreError as exc:  # a ValueError naming the file, what was expected and what to do
            assert str(store_copy) in str(exc)
            return
        n, k = ds.sizes.get("segment", 0), ds.sizes.get("keyframe", 0)
        commit = json.loads(content)
        assert (n, k) == (commit["sizes"]["segment"], commit["sizes"]["keyframe"])
        assert n <= reference.sizes["segment"] and k <= reference.sizes["keyframe"]
        for name in ("assoc_norm", "tokens", "keyframe_assoc"):
            v = ds[name]
            dim = "segment" if "segment" in v.dims else "keyframe"
            np.testing.assert_array_equal(v.values, reference[name].isel({dim: slice(0, ds.sizes[dim])}).values)
    finally:
        (store_copy / COMMIT_FILE).write_bytes(real)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_open_trace_on_truncated_zarr_metadata_refuses_clearly(store_copy, data):
    name = data.draw(st.sampled_from(["zarr.json", "assoc_norm/zarr.json", "tokens/zarr.json", "keyframe/zarr.json"]))
    path = store_copy / name
    real = path.read_bytes()
    path.write_bytes(data.draw(_truncations(real)))
    try:
        with pytest.raises(TraceStoreError) as ei:
            av.open_trace(store_copy)
        assert str(store_copy) in str(ei.value)
    finally:
        path.write_bytes(real)
    av.open_trace(store_copy)  # restored
