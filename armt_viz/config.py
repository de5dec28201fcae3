"""Configuration objects: `ARMTConfig` (the memory wrapper) and `RecordConfig` (the recorder).

Both are frozen dataclasses, validated on construction, with a JSON round trip
(`to_json` / `from_json`) so a trace or a saved model carries the exact settings
that produced it. Field meanings follow ARMT_SPEC.md §1 (official code, HEAD of
`framework_accel`); the later-variant switches follow §1.13.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from .trace.schema import LEVELS  # the recording levels are the schema's

__all__ = ["ARMTConfig", "RecordConfig", "LEVELS"]

_ALIGNMENTS = ("left", "right", "center")
_STORAGE_DTYPES = ("float32", "float16", "bfloat16")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


class _JSONMixin:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}.from_dict expects a dict of fields (a JSON object), got "
                             f"{type(d).__name__}: {str(d)[:80]!r}; pass what to_dict()/to_json() wrote")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown field(s) {unknown}; expected a subset of {sorted(known)}. "
                "Remove them, or upgrade armt_viz if they come from a newer version."
            )
        return cls(**d)

    @classmethod
    def from_json(cls, s: str):
        return cls.from_dict(json.loads(s))


@dataclass(frozen=True)
class ARMTConfig(_JSONMixin):
    """Settings of the associative memory wrapped around a causal LM.

    Attributes:
        num_mem_tokens: M, write-only memory tokens appended to every segment.
        d_mem: projection size of W_mq / W_mk; the key feature size is d_key = 2*nu*d_mem.
        segment_size: S, input tokens per segment (memory tokens are extra).
        wrap_pos: GPT-2 only: memory tokens get new position rows P..P+M-1 (ARMT_SPEC §1.4).
        correction: gamma correction of the normalizer update (the official default, True).
        segment_alignment: how a sequence is cut: "left" (default), "right" or "center".
        layers_attr: dotted path of the decoder block list; None picks it from the backbone family.
        nu: DPFP order (the official code hard-codes 3).
        eps: the 1e-5 added to every denominator.
        normalize_features: later variant: L2-normalise phi(q) and phi(k) after DPFP.
        n_heads: later variant: multi-head memory (d_mem and hidden split into heads).
        gating: later variant: per-dimension write gate (W_mb: d -> d) instead of one scalar.
        use_denom: later variant switch; False drops the normalizer z and every denominator.
        gamma_eps: keep the +eps on ||k||^2 in gamma's denominator (HEAD); later code drops it.
        delta_rule: the delta rule (official, True): a write stores u = beta (v - v-bar), replacing the value
            already associated with its key. False is a control that is not in any official code: u = beta v
            (v-bar is not subtracted, so a rewrite adds to the old value instead of erasing it).
    """

    num_mem_tokens: int = 4
    d_mem: int = 16
    segment_size: int = 16
    wrap_pos: bool = False
    correction: bool = True
    segment_alignment: str = "left"
    layers_attr: str | None = None
    nu: int = 3
    eps: float = 1e-5
    normalize_features: bool = False
    n_heads: int = 1
    gating: bool = False
    use_denom: bool = True
    gamma_eps: bool = True
    delta_rule: bool = True

    def __post_init__(self) -> None:
        for name in ("num_mem_tokens", "d_mem", "segment_size", "nu", "n_heads"):
            v = getattr(self, name)
            _check(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                f"ARMTConfig.{name} must be a positive int, got {v!r}. "
                "(num_mem_tokens=0 would break the write: the official code then selects the whole sequence.)",
            )
        _check(
            self.segment_alignment in _ALIGNMENTS,
            f"ARMTConfig.segment_alignment must be one of {_ALIGNMENTS}, got {self.segment_alignment!r}.",
        )
        _check(
            isinstance(self.eps, (int, float)) and not isinstance(self.eps, bool) and math.isfinite(self.eps)
            and self.eps >= 0,
            f"ARMTConfig.eps must be a finite non-negative float, got {self.eps!r}.",
        )
        _check(
            self.d_mem % self.n_heads == 0,
            f"ARMTConfig.d_mem={self.d_mem} must be divisible by n_heads={self.n_heads}.",
        )
        _check(
            self.layers_attr is None or (isinstance(self.layers_attr, str) and self.layers_attr.strip() != ""),
            f"ARMTConfig.layers_attr must be None (pick from the backbone family) or a dotted attribute path such as "
            f"'transformer.h', got {self.layers_attr!r}.",
        )
        for name in ("wrap_pos", "correction", "normalize_features", "gating", "use_denom", "gamma_eps", "delta_rule"):
            _check(isinstance(getattr(self, name), bool), f"ARMTConfig.{name} must be a bool, got {getattr(self, name)!r}.")

    @property
    def d_key(self) -> int:
        """Key-feature size 2*nu*d_mem (all heads together)."""
        return 2 * self.nu * self.d_mem


@dataclass(frozen=True)
class RecordConfig(_JSONMixin):
    """What the recorder keeps (DESIGN.md §4).

    Attributes:
        level: "summary" < "writes" < "full".
        keyframe_every: segments between stored (A, z) keyframes.
        chunk_segments: segments per zarr chunk and per commit.
        storage_dtype: dtype of write events and memory-token states on disk.
        spectrum_rank: number of singular values of A kept at keyframes.
    """

    level: str = "summary"
    keyframe_every: int = 64
    chunk_segments: int = 64
    storage_dtype: str = "float16"
    spectrum_rank: int = 16

    def __post_init__(self) -> None:
        _check(self.level in LEVELS, f"RecordConfig.level must be one of {LEVELS}, got {self.level!r}.")
        for name in ("keyframe_every", "chunk_segments", "spectrum_rank"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"RecordConfig.{name} must be a positive int, got {v!r}.")
        _check(
            self.storage_dtype in _STORAGE_DTYPES,
            f"RecordConfig.storage_dtype must be one of {_STORAGE_DTYPES}, got {self.storage_dtype!r}.",
        )
