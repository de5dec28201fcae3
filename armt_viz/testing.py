"""Test helpers for users and our own tests (like `xarray.testing`): tiny random ARMTs."""

from __future__ import annotations

__all__ = ["tiny_model", "free_port", "stable_seed"]


def tiny_model(seed: int = 0, family: str = "gpt2", std: float = 0.1, vocab_size: int = 32, **armt_kw):
    """A tiny ARMT (2 layers, d 64, vocab 32 by default; 128 fits the task vocabularies) with EVERY weight random (W_mv included, so memory matters).

    family: "gpt2", "gpt_neox" or "llama". armt_kw go to ARMTConfig (defaults M=4, d_mem=16, S=16).
    """
    import torch
    import transformers
    from .config import ARMTConfig
    from .model.armt import ARMTModel

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1)
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=64, **common)
    elif family == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=128, max_position_embeddings=64, **common)
    elif family == "llama":
        cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=128, max_position_embeddings=64, **common)
    else:
        raise ValueError(f"family must be gpt2, gpt_neox or llama, got {family!r}")
    backbone = transformers.AutoModelForCausalLM.from_config(cfg)
    model = ARMTModel.from_backbone(backbone, ARMTConfig(**{"num_mem_tokens": 4, "d_mem": 16, "segment_size": 16, **armt_kw}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for test and benchmark servers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stable_seed(*parts, modulo: int = 2**31 - 1) -> int:
    """A seed derived from `parts` (their str()) that is the same in every process: CRC-32, not `hash()`, whose
    value for a string changes per process (PYTHONHASHSEED), so a failure seeded by it cannot be reproduced."""
    import zlib

    return zlib.crc32("\x1f".join(map(str, parts)).encode()) % modulo
