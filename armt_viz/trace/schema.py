"""The trace schema: one table of every variable a recording may hold (DESIGN.md §4).

A trace is event-sourced memory. The association matrix after segment S is an exact
sum of write events,

    A_S = sum_{w: segment(w) <= S} phi(k_w) (x) u_w,     u_w = beta_w (v_w - vbar_w)
    z_S = sum_{w: segment(w) <= S} gamma_w phi(k_w)

so a trace stores the write events plus periodic keyframes of (A, z), and any
segment's memory is rebuilt exactly (`memory_at`). Levels, cheapest first:

    summary  per (sample, segment, layer) scalars, tokens, keyframes, probe read-outs
    writes   + every write event (pre-feature key, delta value, gate, correction)
    full     + (A, z) after every segment and memory-token hidden states

Variables grow along one of two *append dims*: `segment` (one row per segment) or
`keyframe` (one row per stored keyframe). Static variables (probes, ledger) have
neither and are sized up front. `key_feature` is the DPFP feature axis of all heads
together (heads laid out block-diagonally, see MemoryState.flat_assoc); `key_dim` is
the pre-feature key axis (d_mem).

Each entry: dims, dtype ("storage" = RecordConfig.storage_dtype), minimum level,
long_name and units (CF attrs; plots label their axes from them).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Var", "SCHEMA", "SCHEMA_VERSION", "APPEND_DIMS", "LEVELS", "LEVEL_RANK", "OPTIONAL", "SUMMARY_STATS",
           "variables_for"]

SCHEMA_VERSION = 1
APPEND_DIMS = ("segment", "keyframe")
LEVELS = ("summary", "writes", "full")  # cheapest first
LEVEL_RANK = {level: rank for rank, level in enumerate(LEVELS)}


@dataclass(frozen=True)
class Var:
    dims: tuple[str, ...]
    dtype: str
    level: str
    long_name: str
    units: str
    group: str = "core"  # core | probe | ledger

    @property
    def append_dim(self) -> str | None:
        return next((d for d in self.dims if d in APPEND_DIMS), None)


_S = ("sample", "segment", "layer")
SCHEMA: dict[str, Var] = {
    # --- coordinates / bookkeeping (summary)
    "segment": Var(("segment",), "int64", "summary", "segment index", "1"),
    "segment_start": Var(("segment",), "int64", "summary", "index of the segment's first token in the stream", "token"),
    "segment_length": Var(("segment",), "int32", "summary", "input tokens in the segment", "token"),
    "tokens": Var(("sample", "segment", "position"), "int32", "summary", "input token id (-1 = padding)", "1"),
    "segment_loss": Var(("sample", "segment"), "float32", "summary", "next-token cross-entropy within the segment", "nat"),
    # --- per (sample, segment, layer) scalars (summary)
    "assoc_norm": Var(_S, "float32", "summary", "Frobenius norm of the association matrix A after the write", "1"),
    "normalizer_norm": Var(_S, "float32", "summary", "L2 norm of the normalizer z after the write", "1"),
    "read_out_norm_mean": Var(_S, "float32", "summary", "mean read-out norm |A^T q|/(z.q+eps) over the segment's tokens", "1"),
    "read_out_norm_max": Var(_S, "float32", "summary", "max read-out norm over the segment's tokens", "1"),
    "read_denominator_mean": Var(_S, "float32", "summary", "mean read denominator z.q+eps over the segment's tokens", "1"),
    "write_gate_mean": Var(_S, "float32", "summary", "mean write gate beta over memory tokens", "1"),
    "correction_mean": Var(_S, "float32", "summary", "mean normalizer correction gamma over memory tokens", "1"),
    "correction_min": Var(_S, "float32", "summary", "min normalizer correction gamma over memory tokens", "1"),
    "prev_value_norm_mean": Var(_S, "float32", "summary", "mean norm of the retrieved old value v-bar at write keys", "1"),
    "write_delta_norm": Var(_S, "float32", "summary", "Frobenius norm of the segment's update to A", "1"),
    # --- keyframes (summary)
    "keyframe": Var(("keyframe",), "int64", "summary", "keyframe index", "1"),
    "keyframe_segment": Var(("keyframe",), "int64", "summary", "segment after whose write the keyframe was taken", "1"),
    "keyframe_assoc": Var(("sample", "keyframe", "layer", "key_feature", "hidden"), "float32", "summary", "association matrix A at the keyframe", "1"),
    "keyframe_normalizer": Var(("sample", "keyframe", "layer", "key_feature"), "float32", "summary", "normalizer z at the keyframe", "1"),
    "spectrum": Var(("sample", "keyframe", "layer", "rank"), "float32", "summary", "leading singular values of A at the keyframe", "1"),
    "effective_rank": Var(("sample", "keyframe", "layer"), "float32", "summary", "effective rank exp(H(sigma/sum sigma)) of A", "1"),
    # --- write events (writes)
    "write_key": Var(("sample", "segment", "layer", "mem_token", "key_dim"), "storage", "writes", "write key W_mk m before the feature map", "1"),
    "write_delta": Var(("sample", "segment", "layer", "mem_token", "hidden"), "storage", "writes", "written delta value u = beta (v - v-bar)", "1"),
    "write_gate": Var(("sample", "segment", "layer", "mem_token"), "float32", "writes", "write gate beta (mean over dims if gated per dim)", "1"),
    # only when beta has more than one channel (gating: one per hidden channel; n_heads > 1: one per head)
    "write_gate_channel": Var(("sample", "segment", "layer", "mem_token", "gate_channel"), "float32", "writes", "write gate beta per channel (W_mb output: hidden channels or heads)", "1"),
    "write_correction": Var(("sample", "segment", "layer", "mem_token", "head"), "float32", "writes", "normalizer correction gamma", "1"),
    "write_prev_value_norm": Var(("sample", "segment", "layer", "mem_token"), "float32", "writes", "norm of the old value v-bar at the write key", "1"),
    # --- dense memory (full)
    "assoc_matrix": Var(("sample", "segment", "layer", "key_feature", "hidden"), "float32", "full", "association matrix A after the segment's write", "1"),
    "normalizer": Var(("sample", "segment", "layer", "key_feature"), "float32", "full", "normalizer z after the segment's write", "1"),
    "mem_hidden": Var(("sample", "segment", "layer", "mem_token", "hidden"), "storage", "full", "memory-token block output", "1"),
    # --- probes (any level; static, filled as the run passes them)
    "probe_sample": Var(("probe",), "int64", "summary", "sample of the probed token", "1", "probe"),
    "probe_token": Var(("probe",), "int64", "summary", "stream index of the probed token", "token", "probe"),
    "probe_segment": Var(("probe",), "int64", "summary", "segment of the probed token", "1", "probe"),
    "probe_position": Var(("probe",), "int64", "summary", "position of the probed token within its segment", "token", "probe"),
    "read_query": Var(("probe", "layer", "key_feature"), "float32", "summary", "query features phi(W_mq h) at the probe", "1", "probe"),
    "read_out": Var(("probe", "layer", "hidden"), "float32", "summary", "memory read-out added at the probe", "1", "probe"),
    "read_denominator": Var(("probe", "layer", "head"), "float32", "summary", "read denominator z.q+eps at the probe", "1", "probe"),
    "probe_prediction": Var(("probe",), "int32", "summary", "greedy next-token prediction at the probe", "1", "probe"),
}


# the per (sample, segment, layer) scalars of every level, in table order (the recorder's per-segment statistics,
# the dashboard's scalar series)
SUMMARY_STATS = tuple(k for k, v in SCHEMA.items() if v.dims == _S)
# written only when they apply: the full gate when beta has more than one channel (per head or per hidden channel)
OPTIONAL = ("write_gate_channel",)


def variables_for(level: str, *, probes: bool) -> dict[str, Var]:
    """The schema entries a recording at `level` writes (probe variables only with probes)."""
    rank = LEVEL_RANK[level]
    return {
        k: v for k, v in SCHEMA.items()
        if LEVEL_RANK[v.level] <= rank and (probes or v.group != "probe")
    }
