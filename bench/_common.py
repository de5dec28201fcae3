"""What the benchmarks share: model configurations, building a random-weight ARMT, best-of timing.

Numbers are measured side by side in one run and printed as ratios (DESIGN.md §2: bench/); a benchmark never
asserts correctness (that is tests/ and tests/gpu/).
"""

from __future__ import annotations

import time

import torch

__all__ = ["CONFIGS", "build", "timeit", "rel_err"]

CONFIGS = {
    # issue 7: tiny 4-layer d128 ARMT, segment 128, 16 memory tokens, d_mem 64 (CPU, one thread)
    "cpu-tiny": dict(family="gpt2", layers=4, d=128, heads=4, vocab=128, S=128, M=16, d_mem=64, tokens=64 * 128),
    # GPT-2 137M, segment 512, 10 memory tokens, d_mem 64
    "gpu-gpt2": dict(family="gpt2", layers=12, d=768, heads=12, vocab=50257, S=512, M=10, d_mem=64, tokens=64 * 512),
    "gpu-llama1b": dict(family="llama", layers=16, d=2048, heads=32, vocab=32000, S=1024, M=32, d_mem=64, tokens=16 * 1024),
}


def build(c, device, dtype):
    import transformers
    import armt_viz as av
    torch.manual_seed(0)
    if c["family"] == "gpt2":
        hf = transformers.GPT2Config(n_layer=c["layers"], n_embd=c["d"], n_head=c["heads"], vocab_size=c["vocab"],
                                     n_positions=max(1024, c["S"] + c["M"]), bos_token_id=0, eos_token_id=0)
    else:
        hf = transformers.LlamaConfig(num_hidden_layers=c["layers"], hidden_size=c["d"], num_attention_heads=c["heads"],
                                      intermediate_size=4 * c["d"], vocab_size=c["vocab"], bos_token_id=0, eos_token_id=0)
    bb = transformers.AutoModelForCausalLM.from_config(hf)
    m = av.ARMTModel.from_backbone(bb, av.ARMTConfig(num_mem_tokens=c["M"], d_mem=c["d_mem"], segment_size=c["S"]))
    with torch.no_grad():
        for b in m.blocks:
            # make the memory path non-trivial; smaller for the 1B Llama, whose random-weight stream otherwise
            # overflows to Inf within a few segments (the recorder's check_finite stops there)
            b.W_mv.weight.normal_(0, 0.02 if c["family"] == "gpt2" else 0.002)
    return m.to(device=device, dtype=dtype).eval()


def timeit(fn, sync, reps=3, warm=True):
    if warm:
        fn()
        sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def rel_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    """max |got - ref| / max |ref| (float32 arithmetic)."""
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
