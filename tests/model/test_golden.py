"""Parity with the official implementation (tensors made by running it; see tests/golden/NOTE.md).

Tolerance: every element within 1e-5 relative to the tensor's scale (max |want|):
|got - want| <= RTOL * max|want|. The official float32 forward itself differs from
float64 by < 1e-6 relative at these weights, so 1e-5 leaves room only for float32
summation order, not for a wrong rule (a dropped eps alone moves A by ~1e-4).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import armt_viz as av
from armt_viz.model.armt import MemoryState

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = ["gpt2_wrap_false", "gpt2_wrap_true", "neox", "gpt2_nocorr_center"]
RTOL = 1e-5


def _load(case, fmt):
    d = GOLDEN / case
    cfg = json.loads((d / "armt_config.json").read_text())
    bb = json.loads((d / "backbone_config.json").read_text())
    model = av.ARMTModel.from_official(d / fmt, backbone=bb, config=av.ARMTConfig(**cfg), attn_implementation="eager")
    return model.eval(), load_file(str(d / "tensors.safetensors"))


def _close(got, want, what):
    got, want = got.double(), want.double()
    rel = ((got - want).abs().max() / want.abs().max()).item()
    assert rel <= RTOL, f"{what}: max |diff| / max |want| = {rel:.3g} > {RTOL}"


@pytest.mark.parametrize("fmt", ["official.bin", "model.safetensors"])
@pytest.mark.parametrize("case", CASES)
def test_logits_loss_and_memory_match_official(case, fmt):
    model, t = _load(case, fmt)
    ids, mask = t["input_ids"], t["attention_mask"]
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=t["labels"], labels_mask=t["labels_mask"].bool())
    _close(out.logits, t["logits"], f"{case}/{fmt} logits")
    _close(out.loss.reshape(1), t["loss"].reshape(1), f"{case}/{fmt} loss")
    # every layer's A and z after every segment, through the one segment loop
    with torch.no_grad():
        outs = list(model.run_segments(model._split(ids, mask)))
    for s, o in enumerate(outs):
        for l in range(model.n_layers):
            _close(o.state.flat_assoc(l), t["assoc_matrix"][:, s, l], f"{case} A seg {s} layer {l}")
            _close(o.state.flat_normalizer(l), t["normalizer"][:, s, l], f"{case} z seg {s} layer {l}")


@pytest.mark.parametrize("case", CASES)
def test_generate_matches_official(case):
    model, t = _load(case, "official.bin")
    gen = model.generate(t["prompt_ids"], max_new_tokens=t["generated_ids"].shape[-1], do_sample=False,
                         pad_token_id=0)
    assert torch.equal(gen.reshape(-1), t["generated_ids"].reshape(-1)), (gen, t["generated_ids"])


def test_memory_path_is_not_silent():
    """Guard against a vacuous parity test: the memory must change the logits."""
    model, t = _load("gpt2_wrap_false", "official.bin")
    with torch.no_grad():
        full = model(t["input_ids"]).logits
        with model.ablate_memory():
            ablated = model(t["input_ids"]).logits
    S = model.config.segment_size
    assert torch.allclose(full[:, :S], ablated[:, :S])
    assert (full[:, S:] - ablated[:, S:]).abs().max() > 0.1


def test_streaming_equals_one_shot():
    model, t = _load("gpt2_wrap_false", "model.safetensors")
    ids = t["input_ids"]
    with torch.no_grad():
        one = model(ids).logits
    chunks = [ids[:, :5], ids[:, 5:40], ids[:, 40:41], ids[:, 41:]]
    streamed = torch.cat([o.logits for o in model.stream(chunks)], dim=1)
    torch.testing.assert_close(streamed, one, rtol=0, atol=0)


def test_save_load_round_trip(tmp_path):
    model, t = _load("gpt2_wrap_true", "official.bin")
    model.save_pretrained(tmp_path / "m")
    again = av.ARMTModel.from_pretrained(tmp_path / "m")
    assert again.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(again(t["input_ids"]).logits, model(t["input_ids"]).logits, rtol=0, atol=1e-6)


def test_state_flat_round_trip():
    model, t = _load("neox", "official.bin")
    with torch.no_grad():
        st = model(t["input_ids"]).state
    back = MemoryState.from_flat([st.flat_assoc(l) for l in range(2)], [st.flat_normalizer(l) for l in range(2)], st.segments)
    for a, b in zip(st.assoc, back.assoc):
        assert torch.equal(a, b)
