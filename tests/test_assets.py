"""The shipped demo model: present, small, loads into float32, and matches its recorded settings."""

from __future__ import annotations

import pytest
import torch

from armt_viz.assets import SPECIMENS, ASSETS_DIR, demo_model_path, demo_stream_config, load_demo_model


def test_assets_are_small():
    """Every shipped model is at most 5 MB (issue 13), the folder as a whole at most 15 MB."""
    def size(root):
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)

    models = [p.parent for p in ASSETS_DIR.glob("*/model.safetensors")]
    assert len(models) >= 6, f"expected the AR model and five stream specimens, found {sorted(m.name for m in models)}"
    for m in models:
        assert size(m) < 5 * 2**20, f"{m.name} takes {size(m) / 2**20:.2f} MB"
    assert size(ASSETS_DIR) < 15 * 2**20, f"assets take {size(ASSETS_DIR) / 2**20:.2f} MB"


def test_demo_model_loads_in_float32():
    model = load_demo_model("ar")
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.segment_size == 4 and model.config.num_mem_tokens == 4 and model.config.d_mem == 64
    assert model.n_layers == 4 and model.d_model == 128 and model.vocab_size == 128


def test_stream_demo_and_its_config():
    model = load_demo_model()  # "stream": the baseline stream specimen (issue 13)
    cfg = demo_stream_config(seed=3)
    assert cfg.segment_size == model.config.segment_size >= 16 and cfg.seed == 3
    assert cfg.n_keys >= 64 and cfg.p_delete > 0.0
    assert demo_model_path("stream") == demo_model_path("stream_baseline") != demo_model_path("ar")


@pytest.mark.parametrize("variant", SPECIMENS)
def test_every_specimen_ships_with_its_card_numbers(variant):
    import json
    path = demo_model_path(f"stream_{variant}")
    task = json.loads((path / "task.json").read_text())
    evals = json.loads((path / "evals.json").read_text())
    assert task["variant"].replace("-", "_") == variant and task["trained_range"]["carried_memory"]
    assert {"16", "64", "256"} <= set(evals["em"]) and {"16", "64", "256"} <= set(evals["em_ablated"])
    card = (ASSETS_DIR / "MODEL_CARD.md").read_text()
    assert f"stream_{variant}" in card


def test_unknown_demo_name():
    with pytest.raises(ValueError, match="unknown demo model"):
        load_demo_model("babi")


def test_model_card_has_the_acceptance_command():
    card = (ASSETS_DIR / "MODEL_CARD.md").read_text()
    assert "armt-viz eval --model demo --task ar-rewrite --pairs 50" in card
