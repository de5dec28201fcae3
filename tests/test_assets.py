"""The shipped demo model: present, small, loads into float32, and matches its recorded settings."""

from __future__ import annotations

import pytest
import torch

from armt_viz.assets import ASSETS_DIR, demo_model_path, demo_stream_config, load_demo_model


def test_assets_are_small():
    size = sum(p.stat().st_size for p in ASSETS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert size < 5 * 2**20, f"assets take {size / 2**20:.2f} MB"


def test_demo_model_loads_in_float32():
    model = load_demo_model("ar")
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.segment_size == 4 and model.config.num_mem_tokens == 4 and model.config.d_mem == 64
    assert model.n_layers == 4 and model.d_model == 128 and model.vocab_size == 128


def test_stream_demo_and_its_config():
    model = load_demo_model()  # "stream": the AR model until a stream model ships (MODEL_CARD.md)
    cfg = demo_stream_config(seed=3)
    assert cfg.segment_size == model.config.segment_size and cfg.seed == 3 and cfg.p_delete == 0.0
    assert demo_model_path("stream") == demo_model_path("ar")


def test_unknown_demo_name():
    with pytest.raises(ValueError, match="unknown demo model"):
        load_demo_model("babi")


def test_model_card_has_the_acceptance_command():
    card = (ASSETS_DIR / "MODEL_CARD.md").read_text()
    assert "armt-viz eval --model demo --task ar-rewrite --pairs 50" in card
