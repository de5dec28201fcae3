"""Test helpers for users and our own tests (like `xarray.testing`): tiny random ARMTs."""

from __future__ import annotations

__all__ = ["tiny_model", "hard_floats", "free_port", "stable_seed", "assert_close", "TOLERANCES", "official_order_reference",
           "plain_weights_digest"]


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


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    """Block until a server accepts connections on 127.0.0.1:`port`; TimeoutError after `timeout` seconds."""
    import socket
    import time

    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"server on {port} did not start")


def stable_seed(*parts, modulo: int = 2**31 - 1) -> int:
    """A seed derived from `parts` (their str()) that is the same in every process: CRC-32, not `hash()`, whose
    value for a string changes per process (PYTHONHASHSEED), so a failure seeded by it cannot be reproduced."""
    import zlib

    return zlib.crc32("\x1f".join(map(str, parts)).encode()) % modulo


# Named tolerances for comparing an executor against its reference: (relative to max|ref|, absolute floor).
TOLERANCES = {
    "exact": (0.0, 0.0),  # the same kernels on the same inputs (an emulated graph vs the eager step)
    "fp32_reorder": (1e-5, 1e-6),  # the same math in another summation order, float32 (lean, diagonal, compiled)
    "fp32_chain": (1e-4, 1e-6),  # float32 reorderings compounded over many segments of a chaotic recurrence
    "bf16": (3e-2, 1e-3),  # bfloat16 weights/autocast against float32
    # values stored in 16 bits (bfloat16: 8 significant bits) from float32 inputs that differ by a reordering: the
    # rounding may land one unit in the last stored place apart, at most 2**-7 of the largest value
    "half_storage": (2.0 ** -6, 1e-6),
}


def assert_close(name: str, ref, got, tol="fp32_reorder") -> float:
    """Assert max|got - ref| <= rel * max|ref| + abs, where (rel, abs) = TOLERANCES[tol] (or a float rel, abs 0).

    Scaled by the largest reference magnitude, not per element: near-zero entries of a float32 result carry
    the rounding of its large ones. Shapes must match exactly (no broadcasting). Returns the relative error.
    The message names the comparison, the tolerance, the error and where it is largest."""
    import torch

    if isinstance(tol, str):
        if tol not in TOLERANCES:
            raise KeyError(f"unknown tolerance {tol!r}; expected one of {sorted(TOLERANCES)} or a float")
        rel, floor = TOLERANCES[tol]
    else:
        rel, floor = float(tol), 0.0
    ref_t, got_t = torch.as_tensor(ref), torch.as_tensor(got)
    if tuple(ref_t.shape) != tuple(got_t.shape):
        raise AssertionError(f"{name}: shape {tuple(got_t.shape)} differs from the reference {tuple(ref_t.shape)}")
    ref_t, got_t = ref_t.detach().double().cpu(), got_t.detach().double().cpu()
    if ref_t.numel() == 0:
        return 0.0
    if not bool(torch.isfinite(got_t).all()) and not bool(torch.equal(torch.isfinite(got_t), torch.isfinite(ref_t))):
        raise AssertionError(f"{name}: non-finite values where the reference is finite")
    scale = float(ref_t.abs().max())
    err = (got_t - ref_t).abs()
    worst = float(err.max())
    if worst > rel * scale + floor:
        where = tuple(int(i) for i in torch.nonzero(err == worst)[0])
        raise AssertionError(f"{name}: max |got - ref| = {worst:.3g} at {where} exceeds tolerance {tol!r} "
                             f"({rel:g} x max|ref| {scale:.3g} + {floor:g})")
    return worst / scale if scale else worst


def official_order_reference(model):
    """The official implementation's execution order over `model`'s weights (armt_viz/model/official_order.py):
    `official_order_reference(model)(ids)` gives the logits [batch, seq, vocab]; it leaves `model` untouched.
    The benchmarks' baseline, and a test oracle for the segment loop."""
    from .model.official_order import OfficialOrderARMT

    return OfficialOrderARMT(model)


def plain_weights_digest(model) -> str:
    """The naive reference of `record.guard.weights_sha256`: SHA-256 of `name|dtype|shape|` and the raw bytes of
    every parameter and buffer, in name order, each tensor copied to the host and hashed anew."""
    import hashlib

    import torch

    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def hard_floats(n_random: int = 4096) -> "torch.Tensor":
    """float32 values where rounding to 16 bits is easy to get wrong: ties (even and odd), the largest values that
    round up to infinity, subnormals of both formats, signed zeros, infinities, plus random bit patterns. NaN is
    left out (its payload is free, so a test checks it apart)."""
    import torch

    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (n_random,), generator=g, dtype=torch.int64)
    special = [0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x00000001,
               0x00008000, 0x00018000, 0x807FFFFF, 0x00000000, 0x80000000, 0x7F800000, 0xFF800000,
               0x477FF000, 0x477FEFFF, 0x33800000, 0x33800001, 0x387FE000]  # 0x477FF000: float16 max+half ulp
    allbits = torch.cat([bits, torch.tensor(special, dtype=torch.int64)])
    allbits = torch.where(allbits >= 2 ** 31, allbits - 2 ** 32, allbits).to(torch.int32)
    x = allbits.view(torch.float32)
    return x[~torch.isnan(x)]  # NaN: checked apart (its payload is free)
