"""Per-segment statistics of the recorder, computed on the model's device from the hooked tensors.

One function serves both recording paths: the eager recorder moves its result to the host after each
segment; the CUDA-graph recorder captures it inside the graph and copies it out asynchronously.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..model.fast import pack

__all__ = ["segment_statistics", "SUMMARY_STATS", "Capture", "pack", "unpack", "to_host", "singular_values"]

from ..trace.schema import SUMMARY_STATS  # noqa: E402  (re-exported: the statistics are the schema's)


@dataclass
class Capture:
    """Hook observers for one segment: keeps references to the tensors `segment_statistics` reduces."""

    level_rank: int
    data: dict = field(default_factory=dict)

    def hooks(self, model):
        want = ["hook_read_query", "hook_read_out", "hook_read_denominator", "hook_write_gate", "hook_correction",
                "hook_write_prev_value"]
        if self.level_rank >= 1:
            want += ["hook_write_key", "hook_write_delta"]
        if self.level_rank >= 2:
            want += ["hook_mem_output"]
        names = {f"layers.{i}.memory.{p}" for i in range(model.n_layers) for p in want}

        def grab(x, *, hook):
            self.data[(hook.name.rsplit(".", 1)[1], hook.layer)] = x.detach()
        return [(lambda n: n in names, grab)]


def segment_statistics(hooked: dict, out, prev_assoc, ids: Tensor, *, mem: int, heads: int,
                       writes: bool) -> dict[str, Tensor]:
    """Schema variables of one segment as float32 tensors without the segment axis.

    hooked: {(hook point, layer): tensor} seen during the step; the read points are absent when the
    segment did not read (the first segment, or reads ablated), and the read statistics are then 0.
    Summary scalars are [sample, layer]; `segment_loss` is [sample] (NaN for a 1-token segment);
    `nonfinite_logits` [sample] is 1 where a logit is NaN/Inf (for the finite check, not stored);
    with `writes`, the write events are [sample, layer, mem_token, ...].
    """
    n_layers = len(out.state.assoc)
    B, L = out.logits.shape[:2]
    layers = range(n_layers)
    # the layers stacked first (one copy, contiguous: a norm over a strided view, e.g. A of the lean CPU step's
    # [A | z], takes ~5x longer on the CPU than the copy and a contiguous norm together), then one norm each
    assoc = _stack_layers(out.state.assoc)
    prev = _stack_layers(prev_assoc)
    s = {
        "assoc_norm": _norms(assoc),
        "normalizer_norm": _norms(_stack_layers(out.state.normalizer)),
        "write_delta_norm": _norms([a - p for a, p in zip(assoc, prev)] if isinstance(assoc, list)
                                   or isinstance(prev, list) else assoc - prev),
    }
    # one tensor per hook point with a layer axis, then one reduction each (not one per layer)
    per_layer = lambda name, sl=slice(None): torch.stack([hooked[(name, l)][:, sl] for l in layers], 1).float()  # noqa: E731
    if ("hook_read_out", 0) in hooked:
        rn = torch.linalg.vector_norm(per_layer("hook_read_out", slice(0, L)), dim=-1)  # [B, layer, tokens]
        s["read_out_norm_mean"] = rn.mean(-1)
        s["read_out_norm_max"] = rn.amax(-1)
        s["read_denominator_mean"] = per_layer("hook_read_denominator", slice(0, L)).mean((2, 3))
    else:
        for k in ("read_out_norm_mean", "read_out_norm_max", "read_denominator_mean"):
            s[k] = torch.zeros(B, n_layers, device=out.logits.device)
    gate = per_layer("hook_write_gate").mean(-1).expand(B, n_layers, mem)  # [B, layer, mem]
    corr = per_layer("hook_correction").expand(B, n_layers, mem, heads)
    prev = torch.linalg.vector_norm(per_layer("hook_write_prev_value"), dim=-1).expand(B, n_layers, mem)
    s.update(write_gate_mean=gate.mean(-1), correction_mean=corr.mean((2, 3)), correction_min=corr.amin((2, 3)),
             prev_value_norm_mean=prev.mean(-1))
    # not a schema variable: the recorder's finite check reads it (the loss misses a -inf logit off the target);
    # a logit is NaN or +-Inf exactly when the smallest or the largest is (NaN propagates): one pass over the
    # logits and no temporary (|logits| was a second copy of them: 51 MB a segment for GPT-2 in bf16)
    lo, hi = torch.aminmax(out.logits.flatten(1), dim=1)
    s["nonfinite_logits"] = (~(torch.isfinite(lo) & torch.isfinite(hi))).float()
    if L > 1:
        lg = out.logits[:, :-1].float()
        s["segment_loss"] = torch.nn.functional.cross_entropy(
            lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="none").reshape(B, L - 1).mean(1)
    else:
        s["segment_loss"] = torch.full((B,), float("nan"), device=out.logits.device)
    if writes:
        s["write_key"] = per_layer("hook_write_key")
        s["write_delta"] = per_layer("hook_write_delta").expand(B, n_layers, mem, -1)
        s.update(write_gate=gate, write_correction=corr, write_prev_value_norm=prev)
        if hooked[("hook_write_gate", 0)].shape[-1] > 1:  # per head or per channel: the origin view needs it all
            s["write_gate_channel"] = per_layer("hook_write_gate").expand(B, n_layers, mem, -1)
    return s


def _stack_layers(xs) -> Tensor | list[Tensor]:
    """Per-layer tensors [b, ...] as one contiguous [b, layer, ...] tensor; a list when their shapes differ."""
    xs = list(xs)
    if all(x.shape == xs[0].shape for x in xs):
        return torch.stack(xs, 1)
    return xs


def _norms(x: Tensor | list[Tensor]) -> Tensor:
    """L2 norm of each [sample, layer] over the remaining axes (of a `_stack_layers` result)."""
    if isinstance(x, list):
        return torch.stack([torch.linalg.vector_norm(t.contiguous(), dim=tuple(range(1, t.ndim))) for t in x], 1)
    return torch.linalg.vector_norm(x, dim=tuple(range(2, x.ndim)))


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
