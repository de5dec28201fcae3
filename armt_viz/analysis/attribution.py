"""Exact read attribution: a probe's memory read decomposed over every past write event (DESIGN.md §4).

The association matrix after segment S is a sum of write events, A_S = sum_w phi_w (x) u_w, and the
normalizer z_S = sum_w gamma_w phi_w (ARMT_SPEC.md §1.5). A read at a probe in segment t uses the memory after
segment t-1, so only writes of segments strictly before t are visible. Per head h (block layout, see
`MemoryState.flat_assoc`), with query features q, denominator D_h = z_h.q_h + eps and read-out r:

    r_h = sum_w c_{w,h},      c_{w,h} = (q_h . phi_{w,h}) u_{w,h} / D_h                 (vector contribution)
    a_w = <c_w, r> / |r|,     sum_w a_w = |r|                                           (scalar share)
    d_{w,h} = gamma_{w,h} (q_h . phi_{w,h}) / D_h,   sum_w d_{w,h} = 1 - eps / D_h       (denominator share)

With `use_denom=False` (ARMT_SPEC.md §1.13) D = 1 and there is no denominator share. The decomposition is
exact up to the storage dtype of the write events: float32 storage (the recorder's default) reproduces |r| to
~1e-7 relative, float16 storage to ~3e-4 (measured on a random tiny GPT-2 ARMT, tests/analysis/test_end_to_end.py).

Work is vectorised over write events with `xarray.apply_ufunc`; on a dask-backed trace (opened from zarr) the
result is lazy and computed chunk by chunk along `segment`, so a 10M-token trace never loads whole.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import xarray as xr

from ..config import ARMTConfig
from ._common import as_numpy, check_trace, config_of, core_single_chunk, feature_map, named, segment_positions
from ._common import per_run
from ._ledger import STATUS, Facts, facts_of, ledger_of

__all__ = ["EmptyReadWarning", "attribute_read", "probe_read", "ProbeRead"]

Kind = Literal["share", "vector", "denominator"]
By = Literal["write", "origin", "segment", "mem_token", "fact", "status"]
_NEEDS = ("write_key", "write_delta", "read_query", "read_out", "read_denominator", "probe_sample", "probe_segment")


class ProbeRead:
    """The read at one probe and layer: sample, segment, q [key_feature], D [head], r [hidden]."""

    __slots__ = ("probe", "layer", "sample", "segment", "token", "query", "denominator", "read_out")

    def __init__(self, ds: xr.Dataset, probe: int, layer: int, config: ARMTConfig):
        self.probe, self.layer = int(probe), int(layer)
        names = ["probe_sample", "probe_segment", "read_query", "read_out"]
        names += ["probe_token"] if "probe_token" in ds.variables else []
        names += ["read_denominator"] if config.use_denom else []
        sel = {"probe": self.probe, "layer": self.layer}
        # one load (one dask compute) for all the small probe arrays
        sub = xr.Dataset({n: ds[n].variable for n in names}).isel({k: v for k, v in sel.items()}).load()
        self.sample = int(sub["probe_sample"])
        self.segment = int(sub["probe_segment"])
        self.token = int(sub["probe_token"]) if "probe_token" in sub else -1
        self.query = sub["read_query"].values.astype(np.float64)
        self.read_out = sub["read_out"].values.astype(np.float64)
        if config.use_denom:
            self.denominator = sub["read_denominator"].values.astype(np.float64).reshape(config.n_heads)
        else:
            self.denominator = np.ones(config.n_heads)

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.read_out))

    @property
    def direction(self) -> np.ndarray:
        """r/|r| (zeros for a zero read, e.g. a probe in the first segment, which reads nothing)."""
        n = self.norm
        return self.read_out / n if n > 0 else np.zeros_like(self.read_out)


def probe_read(ds: xr.Dataset, probe: int, layer: int) -> ProbeRead:
    """The recorded read of one probe at one layer (q, D, r and where it sits)."""
    check_trace(ds, _NEEDS[2:], "probe_read")
    n_probe = ds.sizes.get("probe", 0)
    if not 0 <= int(probe) < n_probe:
        raise IndexError(f"probe={probe} is out of range: the trace has {n_probe} probe(s) (0..{n_probe - 1})")
    n_layer = ds.sizes.get("layer", 0)
    if not 0 <= int(layer) < n_layer:
        raise IndexError(f"layer={layer} is out of range: the trace has {n_layer} layer(s) (0..{n_layer - 1})")
    return ProbeRead(ds, probe, layer, config_of(ds))


class EmptyReadWarning(UserWarning):
    """``attribute_read`` was asked about a read that has nothing to attribute."""


def _warn_if_empty(read: ProbeRead) -> None:
    """Say why a probe's read has nothing to split: no write before it, or a zero read-out."""
    if read.segment == 0:
        reason = ("the probe sits in segment 0, before any write, so the memory it reads is empty and every share "
                  "is 0")
    elif not read.norm > 0:
        reason = f"its read-out is zero (|r| = {read.norm:g}), so every share is 0"
    else:
        return
    warnings.warn(f"attribute_read(probe={read.probe}, layer={read.layer}): nothing to attribute: {reason}; pick a "
                  "probe in a later segment (ds.probe_segment > 0)", EmptyReadWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- kernels
def _read_weights(key: np.ndarray, query: np.ndarray, den: np.ndarray, config: ARMTConfig) -> np.ndarray:
    """write keys [..., key_dim] -> per-head read weights (q_h . phi_{w,h}) / D_h, [..., head]."""
    heads = config.n_heads
    phi = feature_map(key, heads, config.nu, config.normalize_features)  # [..., key_feature]
    phi = phi.reshape(phi.shape[:-1] + (heads, phi.shape[-1] // heads))  # [..., head, feature per head]
    return (phi * query.reshape(heads, -1)).sum(-1) / den


def _split(delta: np.ndarray, heads: int) -> np.ndarray:
    """[..., hidden] -> [..., head, hidden per head]."""
    return np.asarray(delta, dtype=np.float64).reshape(delta.shape[:-1] + (heads, delta.shape[-1] // heads))


def _share_kernel(key, delta, *, query, den, direction, config):
    """a_w = sum_h weight_{w,h} (u_{w,h} . r_h/|r|)   [...]."""
    weight = _read_weights(key, query, den, config)
    along = (_split(delta, config.n_heads) * direction.reshape(config.n_heads, -1)).sum(-1)
    return (weight * along).sum(-1)


def _vector_kernel(key, delta, *, query, den, config):
    """c_w = weight_{w,h} u_{w,h} per head, merged back to [..., hidden]."""
    weight = _read_weights(key, query, den, config)
    c = weight[..., None] * _split(delta, config.n_heads)
    return c.reshape(c.shape[:-2] + (c.shape[-2] * c.shape[-1],))


def _denominator_kernel(key, gamma, *, query, den, config):
    """d_{w,h} = gamma_{w,h} (q_h . phi_{w,h}) / D_h   [..., head]."""
    return np.asarray(gamma, dtype=np.float64) * _read_weights(key, query, den, config)


def write_terms(ds: xr.Dataset, read: ProbeRead, segments, kind: Kind, config: ARMTConfig) -> xr.DataArray:
    """Per-write terms of one read over the write events of `segments` (a slice or index array of positions).

    Returns dims (segment, mem_token) for shares, + hidden for vectors, + head for denominator shares.
    Lazy when the trace is dask-backed.
    """
    sel = {"sample": read.sample, "layer": read.layer, "segment": segments}

    def pick(name: str, core: str) -> xr.DataArray:
        da = ds[name].isel(sel)
        return core_single_chunk(da.drop_vars(list(da.coords)), (core,))

    key = pick("write_key", "key_dim")
    common = dict(query=read.query, den=read.denominator, config=config)
    if kind == "share":
        delta = pick("write_delta", "hidden")
        return xr.apply_ufunc(
            _share_kernel, key, delta, kwargs={**common, "direction": read.direction},
            input_core_dims=[["key_dim"], ["hidden"]], output_core_dims=[[]],
            dask="parallelized", output_dtypes=[np.float64],
        )
    if kind == "vector":
        delta = pick("write_delta", "hidden")
        return xr.apply_ufunc(
            _vector_kernel, key, delta, kwargs=common,
            input_core_dims=[["key_dim"], ["hidden"]], output_core_dims=[["hidden"]],
            dask="parallelized", output_dtypes=[np.float64],
        )
    if kind == "denominator":
        if not config.use_denom:
            raise ValueError("kind='denominator' needs a memory with a normalizer; this trace has use_denom=False (D = 1)")
        gamma = pick("write_correction", "head")
        return xr.apply_ufunc(
            _denominator_kernel, key, gamma, kwargs=common,
            input_core_dims=[["key_dim"], ["head"]], output_core_dims=[["head"]],
            dask="parallelized", output_dtypes=[np.float64],
        )
    raise ValueError(f"kind must be 'share', 'vector' or 'denominator', got {kind!r}")


# ---------------------------------------------------------------------------------------------- public
_NAMES = {
    "share": ("read_share", "share of the read-out along its direction <c_w, r>/|r|"),
    "vector": ("read_contribution", "contribution c_w = (q.phi_w) u_w / D to the read-out"),
    "denominator": ("denominator_share", "share gamma_w (q.phi_w) / D of the read denominator"),
}


@per_run
def attribute_read(
    ds: xr.Dataset,
    probe: int,
    layer: int,
    *,
    kind: Kind = "share",
    by: By | None = None,
    ledger: xr.Dataset | Facts | None = None,
) -> xr.DataArray:
    """Exact decomposition of a probe's memory read over every past write event.

    Args:
        ds: a trace at level >= "writes" recorded with probes.
        probe, layer: positional indices along `probe` and `layer`.
        kind: "share" (default): a_w = <c_w, r>/|r|, one number per write, summing to |r|;
            "vector": c_w = (q.phi_w) u_w / D over `hidden`, summing to r;
            "denominator": gamma_w (q.phi_w)/D per `head`, summing to 1 - eps/D.
        by: None or "write" (one entry per write event, dim `write`: the per-write view, what each write *added*,
            phi_w (x) u_w), "origin" (the origin view, exact under the delta rule: what each write's value still
            contributes after later writes erased along its key; `armt_viz.analysis.origin`), or the per-write
            terms summed over a grouping:
            "segment" (dim `write_segment`), "mem_token", "status" (current / stale / other relative to the fact
            the probe asks about, from the ledger) or "fact" (dim `fact_id`; each segment's total is split equally
            among the facts its segment holds, -1 = no fact, so the groups still add up).
        ledger: the task ledger, if the trace does not embed one (`ledger_*` variables).

    Returns:
        A named DataArray with `long_name` and `units`; for `by=None` the `write` dim carries coords
        `write_segment`, `mem_token` and, with a ledger, `status`, `fact_id` and `version` (the queried fact and
        the version its segment holds when it holds one, else the first fact version the segment holds, else -1).
        attrs: probe, layer, sample, probe_segment, read_out_norm (|r|). Lazy if the trace is dask-backed
        (except by="fact", which computes the per-segment totals).

    Repeated calls on a long trace: use `ds.armt.attribute_read(...)`, which parses the ledger once.

    Example:
        >>> shares = attribute_read(ds, probe=0, layer=1)
        >>> float(shares.sum()) - shares.attrs["read_out_norm"]   # ~0
    """
    if by not in (None, "write", "origin", "segment", "mem_token", "status", "fact"):
        raise ValueError(f"by must be None/'write', 'origin', 'segment', 'mem_token', 'status' or 'fact', got {by!r}")
    if by == "origin":
        from .origin import attribute_read_origin
        return attribute_read_origin(ds, probe, layer, kind=kind, ledger=ledger)
    by = None if by == "write" else by
    if kind not in _NAMES:
        raise ValueError(f"kind must be 'share', 'vector' or 'denominator', got {kind!r}")
    check_trace(ds, _NEEDS + (("write_correction",) if kind == "denominator" else ()), "attribute_read")
    config = config_of(ds)
    read = probe_read(ds, probe, layer)
    _warn_if_empty(read)
    segments = segment_positions(ds, read.segment)
    terms = write_terms(ds, read, segments, kind, config)  # (segment, mem_token[, hidden | head])
    seg_index = as_numpy(ds["segment"])[segments] if "segment" in ds.variables else np.arange(read.segment)
    terms = terms.rename({"segment": "write_segment"}).assign_coords(write_segment=seg_index)
    if "mem_token" not in terms.coords:
        terms = terms.assign_coords(mem_token=np.arange(terms.sizes["mem_token"]))
    name, long_name = _NAMES[kind]
    attrs = {"probe": read.probe, "layer": read.layer, "sample": read.sample, "probe_segment": read.segment,
             "read_out_norm": read.norm}
    facts = _facts(ds, ledger, required=by in ("status", "fact"))  # status coords whenever a ledger is known
    status = fact_coords = None
    if facts is not None:
        status, fact_coords = _segment_labels(facts, read, ds)

    if by is None:
        out = _flatten(terms)
        if status is not None:
            seg = out["write_segment"].values
            out = out.assign_coords(
                status=("write", np.asarray(STATUS, dtype=object)[status[seg]]),
                fact_id=("write", fact_coords[0][seg]), version=("write", fact_coords[1][seg]),
            )
    elif by == "segment":
        out = terms.sum("mem_token")
    elif by == "mem_token":
        out = terms.sum("write_segment")
    elif by == "status":
        onehot = xr.DataArray((status[None, :] == np.arange(len(STATUS))[:, None]).astype(np.float64),
                              dims=("status", "write_segment"), coords={"status": list(STATUS)})
        out = (terms.sum("mem_token") * onehot).sum("write_segment").transpose("status", ...)
    else:  # "fact"
        out = _by_fact(terms.sum("mem_token"), facts, read)
    return named(out.assign_coords(probe=read.probe, layer=read.layer), name, long_name, "1", **attrs)


def _facts(ds, ledger, required: bool) -> Facts | None:
    if isinstance(ledger, Facts):
        return ledger
    led = ledger_of(ds, ledger, required=required)
    return None if led is None else facts_of(led)


def _flatten(terms: xr.DataArray) -> xr.DataArray:
    """(write_segment, mem_token, ...) -> (write, ...) with write_segment and mem_token as coords."""
    n_seg, n_mem = terms.sizes["write_segment"], terms.sizes["mem_token"]
    rest = [d for d in terms.dims if d not in ("write_segment", "mem_token")]
    data = terms.transpose("write_segment", "mem_token", *rest).data.reshape((n_seg * n_mem,) + tuple(terms.sizes[d] for d in rest))
    coords = {
        "write": np.arange(n_seg * n_mem),
        "write_segment": ("write", np.repeat(terms["write_segment"].values, n_mem)),
        "mem_token": ("write", np.tile(terms["mem_token"].values, n_seg)),
    }
    coords.update({d: terms[d] for d in rest if d in terms.coords})
    return xr.DataArray(data, dims=("write", *rest), coords=coords)


def _probe_fact(facts: Facts, read: ProbeRead) -> tuple[int, int]:
    """(fact, version asked) of the query holding the probe, (-1, -1) if the probe is not on a query."""
    q = facts.match_probes(np.array([read.sample]), np.array([read.token]))[0]
    return (-1, -1) if q < 0 else (int(facts.query_fact[q]), int(facts.query_version[q]))


def _segment_labels(facts: Facts, read: ProbeRead, ds: xr.Dataset):
    """Per write segment (positions 0..t-1): status code, and (fact_id, version) labels."""
    t = read.segment
    fact, version = _probe_fact(facts, read)
    status = facts.segment_status(read.sample, fact, version, t)
    fact_id = np.full(t, -1, dtype=np.int64)
    ver = np.full(t, -1, dtype=np.int64)
    mine = np.flatnonzero((facts.held_sample == read.sample) & (facts.held_segment < t))
    if len(mine):
        # the first fact version of each segment (by token) ...
        order = mine[np.lexsort((facts.held_token[mine], facts.held_segment[mine]))]
        seg, first = np.unique(facts.held_segment[order], return_index=True)
        fact_id[seg], ver[seg] = facts.held_fact[order[first]], facts.held_version[order[first]]
        # ... unless it holds the queried fact: then the newest version <= the one asked
        own = mine[(facts.held_fact[mine] == fact) & (facts.held_version[mine] <= version)]
        own = own[np.lexsort((-facts.held_version[own], facts.held_segment[own]))]
        seg, first = np.unique(facts.held_segment[own], return_index=True)
        fact_id[seg], ver[seg] = fact, facts.held_version[own[first]]
    return status, (fact_id, ver)


def _by_fact(per_segment: xr.DataArray, facts: Facts, read: ProbeRead) -> xr.DataArray:
    """Split each segment's total equally among the facts it holds (fact -1 for segments holding none)."""
    values = np.asarray(per_segment.transpose("write_segment", ...).values)
    t = values.shape[0]
    mine = np.flatnonzero((facts.held_sample == read.sample) & (facts.held_segment < t))
    pairs = np.unique(np.stack([facts.held_segment[mine], facts.held_fact[mine]], 1), axis=0)
    seg, fid = pairs[:, 0], pairs[:, 1]
    n_facts = np.bincount(seg, minlength=t)
    empty = np.flatnonzero(n_facts == 0)
    seg = np.r_[seg, empty]
    fid = np.r_[fid, np.full(len(empty), -1)]
    weight = 1.0 / np.maximum(np.bincount(seg, minlength=t), 1)[seg]
    labels, group = np.unique(fid, return_inverse=True)
    out = np.zeros((len(labels),) + values.shape[1:])
    np.add.at(out, group, values[seg] * weight.reshape((-1,) + (1,) * (values.ndim - 1)))
    rest = [d for d in per_segment.transpose("write_segment", ...).dims if d != "write_segment"]
    coords = {"fact_id": labels}
    coords.update({d: per_segment[d] for d in rest if d in per_segment.coords})
    return xr.DataArray(out, dims=("fact_id", *rest), coords=coords)
