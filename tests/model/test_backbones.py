"""Backbone families, precision, streaming, checkpoints of later variants, errors."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import armt_viz as av
from armt_viz.testing import tiny_model

GOLDEN = Path(__file__).parent.parent / "golden"


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_family_streaming_equals_one_shot_and_memory_matters(family):
    m = tiny_model(family=family)
    ids = torch.randint(0, 32, (2, 70))
    with torch.no_grad():
        one = m(ids).logits
        streamed = torch.cat([o.logits for o in m.stream([ids[:, :33], ids[:, 33:]])], 1)
        with m.ablate_memory():
            ablated = m(ids).logits
    torch.testing.assert_close(streamed, one, rtol=1e-5, atol=1e-6)
    assert (one[:, 16:] - ablated[:, 16:]).abs().max() > 1e-3  # reads really happen
    torch.testing.assert_close(one[:, :16], ablated[:, :16])  # ... but not in the first segment


def test_fresh_armt_equals_its_backbone():
    """W_mv is zero-initialised (§1.12): a fresh ARMT computes its backbone's logits."""
    import transformers
    torch.manual_seed(0)
    bb = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=32,
                                                              n_positions=64, bos_token_id=0, eos_token_id=1)).eval()
    ids = torch.randint(0, 32, (1, 16))
    with torch.no_grad():
        plain = bb(ids).logits
    m = av.ARMTModel.from_backbone(bb, av.ARMTConfig()).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, plain, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_and_pure_bf16_close_to_fp32():
    m = tiny_model(std=0.05)
    ids = torch.randint(0, 32, (1, 64))
    with torch.no_grad():
        ref = m(ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = m(ids).logits.float()
        out = m.to(torch.bfloat16)(ids)
    assert out.state.assoc[0].dtype == torch.float32  # the state stays float32 (documented)
    scale = ref.abs().max()
    assert (auto - ref).abs().max() / scale < 5e-2
    assert (out.logits.float() - ref).abs().max() / scale < 5e-2


def test_armt_prefix_checkpoint_loads(tmp_path):
    """The 2025 HF wrapper (ARMTForCausalLM) prefixes every key with 'armt.'."""
    d = GOLDEN / "gpt2_wrap_false"
    sd = load_file(str(d / "model.safetensors"))
    save_file({"armt." + k: v for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    cfg = av.ARMTConfig(**json.loads((d / "armt_config.json").read_text()))
    bb = json.loads((d / "backbone_config.json").read_text())
    a = av.ARMTModel.from_official(tmp_path, backbone=bb, config=cfg).eval()
    b = av.ARMTModel.from_official(d / "model.safetensors", backbone=bb, config=cfg).eval()
    ids = torch.randint(0, 32, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=0, atol=0)


def test_mismatched_checkpoint_names_the_problem():
    d = GOLDEN / "gpt2_wrap_true"
    bb = json.loads((d / "backbone_config.json").read_text())
    with pytest.raises(ValueError, match="wrap_pos"):
        av.ARMTModel.from_official(d / "official.bin", backbone=bb, config=av.ARMTConfig(wrap_pos=False))
    with pytest.raises(ValueError, match="d_mem"):
        av.ARMTModel.from_official(d / "official.bin", backbone=bb, config=av.ARMTConfig(wrap_pos=True, d_mem=8))


def test_bad_input_errors():
    m = tiny_model()
    with pytest.raises(TypeError, match="integer"):
        m(torch.rand(1, 5))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        m(torch.tensor([[1, 40]]))
    with pytest.raises(ValueError, match="attention_mask shape"):
        m(torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="positive int"):
        av.ARMTConfig(num_mem_tokens=0)
    with pytest.raises(ValueError, match="segment_alignment"):
        av.ARMTConfig(segment_alignment="middle")


def test_config_json_round_trip():
    c = av.ARMTConfig(num_mem_tokens=3, wrap_pos=True, n_heads=2, d_mem=8, gating=True)
    assert av.ARMTConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="unknown field"):
        av.ARMTConfig.from_dict({"num_mem_tokens": 2, "bogus": 1})


def test_abandoned_stream_leaves_grad_mode_alone():
    m = tiny_model()
    gen = m.stream([torch.randint(0, 32, (1, 64))])
    next(gen)
    assert torch.is_grad_enabled()  # the caller's code between segments keeps its own grad mode
    del gen
    assert torch.is_grad_enabled()
