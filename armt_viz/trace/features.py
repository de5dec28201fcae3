"""The ARMT feature map and write outer products in numpy (float64), for everything that reads traces without torch.

The one numpy DPFP of the package: trace reconstruction (`memory_at`), replay edits (record/replay.py) and every
analysis (armt_viz.analysis) use it. `armt_viz.model.memory` holds the torch version the model runs; the tests
tie the two together.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dpfp", "feature_map", "block_outer", "NORMALIZE_EPS"]

NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default eps (memory.feature_map uses it)


def dpfp(x: np.ndarray, nu: int = 3) -> np.ndarray:
    """DPFP-nu feature map over the last axis, d -> 2*nu*d (Schlag et al. 2021; ARMT_SPEC.md §1.2).

    x' = [relu(x), relu(-x)];  phi(x) = concat_{j=1..nu} x' * roll(x', j).
    """
    xp = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=-1)
    return np.concatenate([xp * np.roll(xp, j, axis=-1) for j in range(1, nu + 1)], axis=-1)


def feature_map(x: np.ndarray, heads: int = 1, nu: int = 3, normalize: bool = False, *,
                per_head: bool = False) -> np.ndarray:
    """Pre-feature keys/queries [..., d_mem] -> features (float64) of all heads, block layout.

    Head h owns input columns h*d_mem/heads:(h+1)*d_mem/heads and output features h*Fh:(h+1)*Fh with
    Fh = 2*nu*d_mem/heads (MemoryState.flat_assoc). `normalize` L2-normalises each head's features (the
    later-code variant, ARMT_SPEC.md §1.13), as torch's F.normalize does. Returns [..., heads*Fh], or
    [..., heads, Fh] with per_head=True.
    """
    x = np.asarray(x, dtype=np.float64)
    split = x.reshape(x.shape[:-1] + (heads, x.shape[-1] // heads))
    phi = dpfp(split, nu)  # [..., heads, Fh]
    if normalize:
        phi = phi / np.maximum(np.linalg.norm(phi, axis=-1, keepdims=True), NORMALIZE_EPS)
    return phi if per_head else phi.reshape(x.shape[:-1] + (heads * phi.shape[-1],))


def block_outer(phi: np.ndarray, delta: np.ndarray, heads: int) -> np.ndarray:
    """Sum over the leading event axis of phi (x) delta, block-diagonal over heads.

    phi [n, sample, heads, Fh], delta [n, sample, hidden] -> [sample, heads*Fh, hidden]."""
    n, B, H, Fh = phi.shape
    D = delta.shape[-1]
    Dh = D // H
    d = delta.reshape(n, B, H, Dh)
    blocks = np.einsum("nbhf,nbhd->bhfd", phi, d)
    out = np.zeros((B, H * Fh, D))
    for h in range(H):
        out[:, h * Fh:(h + 1) * Fh, h * Dh:(h + 1) * Dh] = blocks[:, h]
    return out
