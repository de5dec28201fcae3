"""Per-segment statistics of the recorder, computed on the model's device from the hooked tensors.

One function serves both recording paths: the eager recorder moves its result to the host after each
segment; the CUDA-graph recorder captures it inside the graph and copies it out asynchronously.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..model.fast import pack

__all__ = ["segment_statistics", "SUMMARY_STATS", "pack", "unpack", "to_host", "singular_values"]

SUMMARY_STATS = ("assoc_norm", "normalizer_norm", "read_out_norm_mean", "read_out_norm_max",
                 "read_denominator_mean", "write_gate_mean", "correction_mean", "correction_min",
                 "prev_value_norm_mean", "write_delta_norm")


def segment_statistics(hooked: dict, out, prev_assoc, ids: Tensor, *, mem: int, heads: int,
                       writes: bool) -> dict[str, Tensor]:
    """Schema variables of one segment as float32 tensors without the segment axis.

    hooked: {(hook point, layer): tensor} seen during the step; the read points are absent when the
    segment did not read (the first segment, or reads ablated), and the read statistics are then 0.
    Summary scalars are [sample, layer]; `segment_loss` is [sample] (NaN for a 1-token segment);
    with `writes`, the write events are [sample, layer, mem_token, ...].
    """
    n_layers = len(out.state.assoc)
    B, L = out.logits.shape[:2]
    stack = lambda xs: torch.stack(list(xs), 1)  # noqa: E731  (over layers)
    s = {
        "assoc_norm": stack(a.flatten(1).norm(dim=1) for a in out.state.assoc),
        "normalizer_norm": stack(z.flatten(1).norm(dim=1) for z in out.state.normalizer),
        "write_delta_norm": stack((a - p).flatten(1).norm(dim=1) for a, p in zip(out.state.assoc, prev_assoc)),
    }
    if ("hook_read_out", 0) in hooked:
        rn = [hooked[("hook_read_out", l)][:, :L].float().norm(dim=-1) for l in range(n_layers)]
        s["read_out_norm_mean"] = stack(r.mean(1) for r in rn)
        s["read_out_norm_max"] = stack(r.amax(1) for r in rn)
        s["read_denominator_mean"] = stack(hooked[("hook_read_denominator", l)][:, :L].float().mean((1, 2))
                                           for l in range(n_layers))
    else:
        for k in ("read_out_norm_mean", "read_out_norm_max", "read_denominator_mean"):
            s[k] = torch.zeros(B, n_layers, device=out.logits.device)
    gate = stack(hooked[("hook_write_gate", l)].float().mean(-1) for l in range(n_layers))  # [B, layer, mem]
    corr = stack(hooked[("hook_correction", l)].float().expand(B, mem, heads) for l in range(n_layers))
    prev = stack(hooked[("hook_write_prev_value", l)].float().norm(dim=-1).expand(B, mem) for l in range(n_layers))
    s.update(write_gate_mean=gate.mean(-1), correction_mean=corr.mean((2, 3)), correction_min=corr.amin((2, 3)),
             prev_value_norm_mean=prev.mean(-1))
    if L > 1:
        lg = out.logits[:, :-1].float()
        s["segment_loss"] = torch.nn.functional.cross_entropy(
            lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="none").reshape(B, L - 1).mean(1)
    else:
        s["segment_loss"] = torch.full((B,), float("nan"), device=out.logits.device)
    if writes:
        s["write_key"] = stack(hooked[("hook_write_key", l)].float() for l in range(n_layers))
        s["write_delta"] = stack(hooked[("hook_write_delta", l)].float().expand(B, mem, -1) for l in range(n_layers))
        s.update(write_gate=gate, write_correction=corr, write_prev_value_norm=prev)
    return s


def unpack(flat: np.ndarray, layout) -> dict[str, np.ndarray]:
    """Inverse of `pack` on a host copy (views of `flat`)."""
    return {k: flat[a:b].reshape(shape) for k, shape, a, b in layout}


def to_host(stats: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Move a segment's statistics to the host with one transfer (not one per tensor); CPU tensors as they are."""
    if all(t.device.type == "cpu" for t in stats.values()):
        return {k: t.float().numpy() for k, t in stats.items()}
    flat, layout = pack(stats)
    return unpack(flat.cpu().numpy(), layout)


def singular_values(A: Tensor) -> Tensor:
    """Singular values of a batch of matrices [..., F, D], descending, float64.

    Computed as the square roots of the eigenvalues of the smaller Gram matrix (A A^T or A^T A) in float64:
    one batched symmetric eigensolve instead of a batched SVD (which is ~0.3 s per GPT-2-sized keyframe
    on an H100). The Gram matrix squares the condition number, so values below ~1e-8 of the largest lose
    relative precision (they add nothing visible to a spectrum or to the effective rank).
    """
    a = A.double()
    g = a @ a.transpose(-1, -2) if a.shape[-2] <= a.shape[-1] else a.transpose(-1, -2) @ a
    ev = torch.linalg.eigvalsh(g).clamp_min(0).sqrt()
    return ev.flip(-1)
