"""``armt-viz demo`` (armt_viz/demo.py): records once, reuses the cached store, serves; says what to do without a
model."""

from __future__ import annotations

import json

import pytest

import armt_viz.demo as demo


@pytest.fixture
def fakes(monkeypatch):
    import importlib

    import armt_viz.assets
    import armt_viz.viz.serve
    from armt_viz.tasks.stream import StreamConfig

    calls = {"record": [], "serve": []}

    def fake_record(model, inputs, store, **kw):
        calls["record"].append({"store": store, "shape": tuple(inputs.shape), **kw})
        from pathlib import Path
        Path(store).mkdir(parents=True)
        (Path(store) / "zarr.json").write_text("{}")
        (Path(store) / "armt_commit.json").write_text(json.dumps({"sizes": {"segment": 8}, "complete": True}))

    monkeypatch.setattr(armt_viz.assets, "load_demo_model", lambda name="stream": object())
    monkeypatch.setattr(armt_viz.assets, "demo_stream_config",
                        lambda **kw: StreamConfig(n_keys=8, segment_size=32, **kw))
    monkeypatch.setattr(importlib.import_module("armt_viz.record"), "record", fake_record)
    monkeypatch.setattr(armt_viz.viz.serve, "run_serve", lambda root, **kw: calls["serve"].append((root, kw)) or 0)
    return calls


def test_demo_records_once_then_reuses_and_serves(fakes, tmp_path):
    assert demo.run_demo(tokens=300, trace_root=str(tmp_path)) == 0
    (rec,) = fakes["record"]
    assert rec["level"] == "writes" and rec["shape"] == (1, 288) and rec["probes"] and rec["ledger"] is not None
    assert rec["store"].endswith("demo__stream__288tok__seed0.zarr")
    assert fakes["serve"] == [(str(tmp_path), {"port": 5006, "address": "127.0.0.1"})]
    assert demo.run_demo(tokens=300, trace_root=str(tmp_path), no_serve=True) == 0
    assert len(fakes["record"]) == 1 and len(fakes["serve"]) == 1  # cached, and --no-serve honoured


def test_demo_without_a_model_says_what_to_do(monkeypatch, tmp_path, capsys):
    import armt_viz.assets

    def missing(name="stream"):
        raise FileNotFoundError("the demo model 'stream' is not shipped")

    monkeypatch.setattr(armt_viz.assets, "load_demo_model", missing)
    assert demo.run_demo(tokens=64, trace_root=str(tmp_path), no_serve=True) == 1
    err = capsys.readouterr().err
    assert "not available" in err and "armt-viz train" in err


def test_default_demo_run_stays_in_the_shipped_models_range():
    from armt_viz.assets import demo_stream_config, load_demo_model
    from armt_viz.training_range import check_range, trained_range

    model = load_demo_model("stream")
    rng = trained_range(model)
    # MODEL_CARD.md: 16-segment windows with carried memory; recall never measured >= 0.9 in a position bin
    assert rng.max_segments_trained == 16 and rng.carried_memory and rng.recall_exact_up_to_segments == 0
    size = demo_stream_config().segment_size
    tokens = demo.default_tokens(model, size)
    assert tokens == demo.DEMO_TOKENS  # no measured range: the default length, flagged as beyond the range
    assert "recall was not measured good" in check_range(rng, tokens // size)
    ar = load_demo_model("ar")  # a model with a measured range runs within it by default
    assert demo.default_tokens(ar, 4) == 200 * 4 and check_range(trained_range(ar), 200) is None
