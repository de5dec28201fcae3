"""Small, pure selections from a trace for the figures: series, ledger tables, probe outcomes, memory.

Everything here takes a (possibly lazy, dask-backed) trace ``xarray.Dataset`` and returns a *small* in-memory
object: a 1-D series over ``segment``, one segment's write events, a table of one fact's ledger rows. Nothing
returns a whole multi-dimensional array, so the dashboard never ships one to the browser. No plotly, no Panel.

Trace layout used (``armt_viz.trace.schema``): per ``(sample, segment, layer)`` scalars, ``segment_loss``,
``tokens`` ``(sample, segment, position)``, write events at level ``writes``, probes along ``probe``, and the
task ledger as ``ledger_<name>`` variables along ``event`` (``armt_viz.tasks.ledger``).

Recall outcome of a probe (``probe_frame``), the classes of ``armt_viz.analysis.answer_status`` computed from
the recorded token stream instead of the ledger's spelling of values (the two agree; a test checks it). The
probe's greedy prediction is compared with the true next token of the stream, ``tokens[probe_token + 1]``:

    correct  prediction == next token
    stale    otherwise, and prediction == the first value token of a version of the queried fact that was
             superseded before the query (an older value of the key)
    other    otherwise, and another fact held a value with that first token before the query
    wrong    otherwise
    pending  no prediction stored (-1)
"""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..trace.schema import SUMMARY_STATS

__all__ = [
    "SCALAR_VARS", "TIMELINE_VARS", "LEDGER_COLUMNS", "MemoryUnavailable", "trace_level", "n_layers",
    "n_segments", "series", "layer_series", "scalar_table", "attribution_inputs", "ledger_frame", "fact_table",
    "probe_counts", "fact_choices", "pick_fact", "fact_events", "fact_recalls", "sample_probes", "token_stream",
    "probe_frame", "segment_writes", "memory_matrix", "recall_attribution", "stale_mass_series", "probe_chance",
    "segment_tokens",
]

log = logging.getLogger(__name__)

SCALAR_VARS = SUMMARY_STATS  # every per (sample, segment, layer) scalar of the schema
# rows of the run timeline, top to bottom (segment_loss has no layer dim)
TIMELINE_VARS = ("assoc_norm", "write_gate_mean", "correction_mean", "read_out_norm_mean", "write_delta_norm",
                 "segment_loss")
LEDGER_COLUMNS = ("role", "fact_id", "version", "token", "segment", "valid_from", "valid_to", "value",
                  "expected_answer", "sample", "n_tokens")


class MemoryUnavailable(RuntimeError):
    """The memory at a segment cannot be computed from this trace (level too low, or no reconstruction)."""


def trace_level(ds: xr.Dataset) -> str:
    """The recording level: from ``attrs['record_config']`` JSON, else inferred from the variables."""
    try:
        level = json.loads(ds.attrs.get("record_config", "{}")).get("level")
    except (TypeError, ValueError):
        level = None
    if level in ("summary", "writes", "full"):
        return level
    if "assoc_matrix" in ds:
        return "full"
    return "writes" if "write_key" in ds else "summary"


def n_layers(ds: xr.Dataset) -> int:
    return int(ds.sizes.get("layer", 0))


def n_segments(ds: xr.Dataset) -> int:
    return int(ds.sizes.get("segment", 0))


def _segment_coord(ds: xr.Dataset) -> np.ndarray:
    if "segment" in ds.coords:
        return np.asarray(ds["segment"].values)
    return np.arange(n_segments(ds))


def series(ds: xr.Dataset, name: str, layer: int | None = None, sample: int = 0) -> xr.DataArray:
    """One variable as an in-memory 1-D series over ``segment`` (layer and sample selected), attrs kept."""
    if name not in ds:
        raise KeyError(f"trace has no variable {name!r}; available: {sorted(map(str, ds.data_vars))}")
    da = ds[name]
    sel: dict[str, Any] = {}
    if "sample" in da.dims:
        sel["sample"] = sample
    if "layer" in da.dims:
        if layer is None:
            raise ValueError(f"series({name!r}) needs a layer: the variable has a layer dim")
        sel["layer"] = layer
    out = da.isel(sel)
    if out.dims != ("segment",):
        raise ValueError(f"series({name!r}): expected a (sample, segment[, layer]) variable, got dims {da.dims}")
    out = out.load()
    return out.assign_coords(segment=_segment_coord(ds)).rename(name)


def scalar_table(ds: xr.Dataset, sample: int = 0) -> xr.Dataset:
    """Every per-segment scalar (``SCALAR_VARS`` and ``segment_loss``) of one sample, loaded in one pass."""
    names = [n for n in (*SCALAR_VARS, "segment_loss") if n in ds]
    out = ds[names].isel(sample=sample).load()
    return out.assign_coords(segment=_segment_coord(ds))


def layer_series(ds: xr.Dataset, name: str, sample: int = 0) -> xr.DataArray:
    """A ``(sample, segment, layer)`` variable as an in-memory ``(layer, segment)`` array for one sample."""
    da = ds[name]
    da = (da.isel(sample=sample) if "sample" in da.dims else da).transpose("layer", "segment").load()
    return da.assign_coords(segment=_segment_coord(ds), layer=np.arange(da.sizes["layer"])).rename(name)


# ---------------------------------------------------------------------------------------------- ledger and facts
def ledger_frame(ds: xr.Dataset) -> pd.DataFrame | None:
    """The task ledger (``ledger_*`` variables along ``event``) as a DataFrame, or None if the trace has none."""
    if "ledger_role" not in ds:
        return None
    cols = {c: np.asarray(ds[f"ledger_{c}"].values) for c in LEDGER_COLUMNS if f"ledger_{c}" in ds}
    df = pd.DataFrame(cols)
    df["role"] = df["role"].astype(str)
    if "sample" not in df:
        df["sample"] = 0
    if "n_tokens" not in df:
        df["n_tokens"] = 1
    return df.sort_values(["sample", "token"], kind="stable").reset_index(drop=True)


def fact_table(ledger: pd.DataFrame | None, sample: int = 0) -> pd.DataFrame:
    """One row per fact of one sample: writes (all key rows), overwrites (writes replacing a value), deletes,
    queries, first and last token (index: fact_id).

    Fact ids are per sample (each sample of a multi-sample trace is its own stream with its own ledger), so rows
    of other samples are never counted.
    """
    cols = ["writes", "overwrites", "deletes", "queries", "first_token", "last_token"]
    if ledger is None or ledger.empty:
        return pd.DataFrame(columns=cols)
    facts = ledger[(ledger["fact_id"] >= 0) & (ledger["sample"] == sample)]
    if facts.empty:
        return pd.DataFrame(columns=cols)
    g = facts.groupby("fact_id")
    writes = facts[facts["role"] == "key"].groupby("fact_id").size()
    overwrites = facts[_overwrites(facts)].groupby("fact_id").size()
    out = pd.DataFrame({
        "writes": writes,
        "overwrites": overwrites,
        "deletes": facts[facts["role"] == "delete"].groupby("fact_id").size(),
        "queries": facts[facts["role"] == "query"].groupby("fact_id").size(),
        "first_token": g["token"].min(),
        "last_token": g["token"].max(),
    }).fillna(0).astype(np.int64)
    return out[cols]


def probe_counts(probes: pd.DataFrame, sample: int = 0) -> pd.Series:
    """Probed recalls per fact of one sample (index: fact_id, most probed first; probes at no fact left out)."""
    linked = sample_probes(probes, sample)
    counts = linked[linked["fact_id"] >= 0]["fact_id"].value_counts().sort_index()
    return counts.sort_values(ascending=False, kind="stable")  # ties: the smaller fact id first


def fact_choices(table: pd.DataFrame, counts: pd.Series) -> dict[str, int]:
    """Labels of a Fact control (``"7  ·  3 writes, 2 queries, 2 probed"``) for one sample's ``fact_table`` and
    ``probe_counts``, in fact-id order; empty when the sample has no facts."""
    return {f"{int(fid)}  ·  {int(row['writes'])} writes, {int(row['queries'])} queries, "
            f"{int(counts.get(fid, 0))} probed": int(fid) for fid, row in table.iterrows()}


def pick_fact(current: int | None, available: list[int], counts: pd.Series | None) -> int | None:
    """The fact to select among ``available``: ``current`` if it is one of them, else the most probed one
    (``probe_counts``), else the first; None when nothing is available."""
    if not available:
        return None
    if current in available:
        return current
    probed = [int(f) for f in counts.index if int(f) in available]
    return probed[0] if probed else available[0]


def fact_events(ledger: pd.DataFrame | None, fact: int, sample: int = 0) -> pd.DataFrame:
    """The ledger rows of one fact (one sample), in stream order, with an ``event`` kind column:
    ``write`` / ``overwrite`` (key rows), ``delete``, ``query``; value and answer rows are folded in."""
    if ledger is None:
        return pd.DataFrame(columns=[*LEDGER_COLUMNS, "event"])
    rows = ledger[(ledger["fact_id"] == fact) & (ledger["sample"] == sample)]
    rows = rows[rows["role"].isin(["key", "delete", "query"])].copy()
    kind = rows["role"].map({"key": "write", "delete": "delete", "query": "query"})
    kind[_overwrites(rows)] = "overwrite"
    rows["event"] = kind
    return rows.reset_index(drop=True)


def sample_probes(probes: pd.DataFrame, sample: int = 0) -> pd.DataFrame:
    """The ``probe_frame`` rows of one sample (each sample of a multi-sample trace is its own stream, with its own
    ledger and fact ids, so recall outcomes are never pooled across samples)."""
    return probes[probes["sample"] == sample]


def fact_recalls(probes: pd.DataFrame, fact: int, sample: int = 0) -> pd.DataFrame:
    """The ``probe_frame`` rows of one fact's recalls in one sample (fact ids are per sample: each sample of a
    multi-sample trace is its own stream with its own ledger)."""
    probes = sample_probes(probes, sample)
    return probes[probes["fact_id"] == fact]


def _overwrites(rows: pd.DataFrame) -> np.ndarray:
    """Key rows that replace a value (the version they supersede was written, not deleted)."""
    is_key = (rows["role"] == "key").to_numpy()
    keys = rows[is_key]
    closed = pd.MultiIndex.from_arrays([keys["sample"], keys["fact_id"], keys["valid_to"]])
    mine = pd.MultiIndex.from_arrays([rows["sample"], rows["fact_id"], rows["valid_from"]])
    return is_key & np.asarray(mine.isin(closed))


def token_stream(ds: xr.Dataset, sample: int = 0) -> np.ndarray:
    """The sample's flat token stream (int64) rebuilt from ``tokens`` and ``segment_start`` (padding dropped)."""
    tokens = np.asarray(ds["tokens"].isel(sample=sample).values, dtype=np.int64)  # (segment, position)
    if "segment_start" in ds:
        starts = np.asarray(ds["segment_start"].values, dtype=np.int64)
    else:
        starts = np.arange(tokens.shape[0], dtype=np.int64) * tokens.shape[1]
    length = int(starts[-1] + (tokens[-1] >= 0).sum()) if tokens.size else 0
    stream = np.full(length, -1, dtype=np.int64)
    index = starts[:, None] + np.arange(tokens.shape[1])[None, :]
    valid = (tokens >= 0) & (index < length)
    stream[index[valid]] = tokens[valid]
    return stream


def probe_frame(ds: xr.Dataset, ledger: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per probe: where it is, what the model predicted, the fact it queries and the recall outcome.

    Columns: probe, sample, segment, token, prediction, expected (true next token), fact_id (-1 if the probe
    is at no query of the ledger), version, outcome (see the module docstring). Vectorised: a million-token
    trace with 50k probes takes well under a second.
    """
    cols = ["probe", "sample", "segment", "token", "prediction", "expected", "fact_id", "version", "outcome"]
    if "probe" not in ds.dims or "probe_token" not in ds:
        return pd.DataFrame(columns=cols)
    n = ds.sizes["probe"]
    df = pd.DataFrame({
        "probe": np.arange(n),
        "sample": np.asarray(ds["probe_sample"].values) if "probe_sample" in ds else np.zeros(n, np.int64),
        "segment": np.asarray(ds["probe_segment"].values),
        "token": np.asarray(ds["probe_token"].values),
        "prediction": (np.asarray(ds["probe_prediction"].values, dtype=np.int64) if "probe_prediction" in ds
                       else np.full(n, -1, np.int64)),
    })
    # probes beyond the committed segments are not in this (possibly partial) trace yet
    df = df[(df["segment"] >= 0) & (df["segment"] < n_segments(ds))].reset_index(drop=True)
    for col in ("expected", "fact_id", "version"):
        df[col] = -1
    outcome = np.full(len(df), "wrong", dtype=object)
    for sample, idx in df.groupby("sample").groups.items():
        idx = np.asarray(idx)
        stream = token_stream(ds, int(sample)) if "tokens" in ds else None
        if stream is not None:
            nxt = df.loc[idx, "token"].to_numpy() + 1
            ok = (nxt >= 0) & (nxt < stream.size)
            df.loc[idx[ok], "expected"] = stream[nxt[ok]]
        if ledger is not None:
            outcome[idx] = _classify(df, idx, ledger[ledger["sample"] == sample], stream)
    pred, exp = df["prediction"].to_numpy(), df["expected"].to_numpy()
    outcome = np.where((pred == exp) & (exp >= 0), "correct", outcome)
    df["outcome"] = np.where(pred < 0, "pending", outcome)
    return df[cols]


def _classify(df: pd.DataFrame, idx: np.ndarray, led: pd.DataFrame, stream: np.ndarray | None) -> np.ndarray:
    """Link probes ``idx`` to the query whose span holds them (fills fact_id/version) and classify wrong answers
    as ``stale`` (a superseded value of the same fact) or ``other`` (a value another fact held earlier)."""
    out = np.full(len(idx), "wrong", dtype=object)
    queries = led[led["role"] == "query"]
    if queries.empty:
        return out
    answers = led[led["role"] == "answer"]
    q_tok = queries["token"].to_numpy()
    a_tok = answers["token"].to_numpy()
    a_end = (answers["token"] + answers["n_tokens"]).to_numpy()
    # a query's span runs to the end of the answer that follows it (or one token if it has none)
    nxt = np.searchsorted(a_tok, q_tok, side="left")
    span_end = np.where(nxt < len(a_tok), a_end[np.minimum(nxt, max(len(a_tok) - 1, 0))] if len(a_tok) else 0,
                        q_tok + 1)
    p_tok = df.loc[idx, "token"].to_numpy()
    j = np.searchsorted(q_tok, p_tok, side="right") - 1
    hit = (j >= 0) & (p_tok < span_end[np.maximum(j, 0)])
    rows = idx[hit]
    q = queries.iloc[j[hit]]
    df.loc[rows, "fact_id"] = q["fact_id"].to_numpy()
    df.loc[rows, "version"] = q["version"].to_numpy()
    values = led[led["role"] == "value"]
    if stream is None or values.empty or not len(rows):
        return out
    v_tok = values["token"].to_numpy()
    first = np.where((v_tok >= 0) & (v_tok < stream.size), stream[np.clip(v_tok, 0, stream.size - 1)], -2)
    vals = pd.DataFrame({"fact_id": values["fact_id"].to_numpy(), "first": first,
                         "valid_from": values["valid_from"].to_numpy(), "valid_to": values["valid_to"].to_numpy()})
    probes = pd.DataFrame({"row": np.flatnonzero(hit), "fact_id": q["fact_id"].to_numpy(),
                           "pred": df.loc[rows, "prediction"].to_numpy(), "t": q["token"].to_numpy()})
    # stale: the fact held this value in a version superseded before the query
    sup = vals[vals["valid_to"] >= 0].groupby(["fact_id", "first"], as_index=False)["valid_to"].min()
    m = probes.merge(sup, left_on=["fact_id", "pred"], right_on=["fact_id", "first"], how="left")
    stale = (m["valid_to"].to_numpy() <= m["t"].to_numpy()) & m["valid_to"].notna().to_numpy()
    # other: another fact held this value before the query (the two earliest facts per value suffice)
    firsts = vals.sort_values("valid_from").drop_duplicates(["first", "fact_id"]).groupby("first").head(2)
    one = firsts.groupby("first").nth(0).set_index("first")
    two = firsts.groupby("first").nth(1).set_index("first")
    f1 = one["fact_id"].reindex(probes["pred"]).to_numpy()
    t1 = one["valid_from"].reindex(probes["pred"]).to_numpy()
    t2 = two["valid_from"].reindex(probes["pred"]).to_numpy()
    other_from = np.where(f1 != probes["fact_id"].to_numpy(), t1, t2)
    other = np.nan_to_num(other_from, nan=np.inf) < probes["t"].to_numpy()
    cls = np.where(stale, "stale", np.where(other, "other", "wrong"))
    out[probes["row"].to_numpy()] = cls
    return out


# ---------------------------------------------------------------------------------------------- memory and writes
def segment_writes(ds: xr.Dataset, segment: int, layer: int, sample: int = 0) -> xr.Dataset:
    """The write events of one segment and layer (per memory token), loaded; needs a ``writes`` trace."""
    names = [n for n in ("write_gate", "write_correction", "write_prev_value_norm", "write_key", "write_delta")
             if n in ds]
    if "write_gate" not in names:
        raise MemoryUnavailable(
            f"write events need a writes-level trace; this one is {trace_level(ds)!r} "
            "(record with level='writes')")
    return ds[names].isel(sample=sample, segment=segment, layer=layer).load()


def memory_matrix(ds: xr.Dataset, segment: int, layer: int, sample: int = 0
                  ) -> tuple[xr.DataArray, xr.DataArray | None, str]:
    """The association matrix A (key_feature, hidden) and normalizer z after ``segment``'s write.

    Uses the exact reconstruction ``armt_viz.trace.memory_at``; falls back to the stored ``assoc_matrix`` of a
    ``full`` trace. Returns ``(A, z, how)``. Raises ``MemoryUnavailable`` with a message saying what is needed.
    """
    try:
        from armt_viz.trace import memory_at  # the lead's exact reconstruction
    except ImportError:
        memory_at = None
    attrs_a = {"long_name": "association matrix A after the segment's write", "units": "1"}
    attrs_z = {"long_name": "normalizer z after the segment's write", "units": "1"}
    if "assoc_matrix" in ds:
        a = ds["assoc_matrix"].isel(sample=sample, segment=segment, layer=layer).load()
        z = ds["normalizer"].isel(sample=sample, segment=segment, layer=layer).load() if "normalizer" in ds else None
        return a, z, "stored (full trace)"
    if memory_at is not None and trace_level(ds) != "summary":
        a, z = memory_at(ds, segment=int(segment), layer=int(layer))
        a = _as_dataarray(a, ("sample", "key_feature", "hidden"), attrs_a)
        z = _as_dataarray(z, ("sample", "key_feature"), attrs_z)
        if "sample" in a.dims:
            a, z = a.isel(sample=sample), z.isel(sample=sample)
        return a.load(), z.load(), "reconstructed (keyframe + writes)"
    if trace_level(ds) == "summary":
        raise MemoryUnavailable("the association matrix at any segment needs a writes-level trace "
                                "(record with level='writes'); this trace only has keyframes")
    raise MemoryUnavailable("armt_viz.trace.memory_at is not available in this installation")


def _as_dataarray(x: Any, dims: tuple[str, ...], attrs: dict) -> xr.DataArray:
    if isinstance(x, xr.DataArray):
        out = x
    else:
        arr = np.asarray(getattr(x, "detach", lambda: x)())
        out = xr.DataArray(arr, dims=dims[-arr.ndim:])
    for k, v in attrs.items():
        out.attrs.setdefault(k, v)
    return out


ORIGIN_MAX_SEGMENTS = 20_000  # recalls later than this use the per-write view (the origin scan is O(segments))
ORIGIN_NOTE = ("stale = what superseded versions' values still contribute after the delta rule erased along their "
               "keys (origin view); the per-write view sums what each write added, so an overwritten value and its "
               "erasure appear as large cancelling stale and current parts")


def recall_attribution(ds: xr.Dataset, probes: pd.DataFrame, layer: int, max_recalls: int = 12,
                       ledger: Any = None) -> tuple[pd.DataFrame | None, str | None]:
    """Shares of each recall's read-out from the current version / superseded versions / other keys, in the origin
    view (``attribute_read(by="origin")``, exact under the delta rule; ``ORIGIN_NOTE``), or the per-write view
    (``by="status"``) for recalls after ``ORIGIN_MAX_SEGMENTS`` segments.

    At most ``max_recalls`` recalls, evenly spaced over the fact's life, are attributed: each costs a pass over
    all earlier writes. ``ledger`` is passed on to ``attribute_read`` (its prepared ``Facts`` saves a pass over
    the ledger per recall; see ``attribution_inputs``). Returns ``(frame, message)``: frame columns probe,
    segment, token, outcome, current,
    stale, other (fractions of |read_out|, summing to 1), or None with a message saying why there is none.
    """
    if trace_level(ds) == "summary" or "write_key" not in ds:
        return None, "Attribution needs a writes-level trace (record with level='writes')."
    if "read_query" not in ds:
        return None, "Attribution needs probes at the recalls (record with probes=...)."
    if probes is None or probes.empty:
        return None, "No recall of this fact was probed."
    try:
        from armt_viz.analysis import attribute_read
        from armt_viz.analysis.attribution import EmptyReadWarning
    except ImportError:
        return None, "Attribution needs armt_viz.analysis.attribute_read, which is not installed."
    probes = probes.sort_values("segment")
    pick = np.unique(np.linspace(0, len(probes) - 1, min(max_recalls, len(probes))).round().astype(int))
    rows = []
    for _, p in probes.iloc[pick].iterrows():
        try:
            with warnings.catch_warnings():  # an empty read (segment 0) is drawn as such, not warned about
                warnings.simplefilter("ignore", EmptyReadWarning)
                if int(p["segment"]) <= ORIGIN_MAX_SEGMENTS:  # the origin view: exact under the delta rule
                    by = attribute_read(ds, probe=int(p["probe"]), layer=int(layer), by="origin", ledger=ledger)
                    by = by.groupby("status").sum()
                    # superseded versions' surviving values -> "stale"; other keys and no-fact origins -> "other"
                    names = {"current": "current", "superseded": "stale", "other": "other", "no-fact": "other"}
                else:  # too long for an interactive forward/backward scan: the per-write view
                    by = attribute_read(ds, probe=int(p["probe"]), layer=int(layer), by="status", ledger=ledger)
                    names = {"current": "current", "stale": "stale", "other": "other"}
            total = float(by.attrs.get("read_out_norm", float(by.sum())))
            values = {}
            for k, v in zip(by["status"].values, np.asarray(by.values)):
                values[names[str(k)]] = values.get(names[str(k)], 0.0) + float(v)
        except Exception as exc:  # one broken recall must not take the view down
            log.warning("attribute_read failed for probe %s: %s", p["probe"], exc)
            continue
        row = {"probe": int(p["probe"]), "segment": int(p["segment"]), "token": int(p["token"]),
               "outcome": p.get("outcome", "n/a")}
        for status in ("current", "stale", "other"):
            row[status] = values.get(status, 0.0) / total if total else np.nan
        rows.append(row)
    if not rows:
        return None, "Attribution failed for every recall of this fact (see the server log)."
    return pd.DataFrame(rows), None


def attribution_inputs(ds: xr.Dataset, layer: int) -> tuple[xr.Dataset, Any]:
    """What ``attribute_read`` reads for recalls at ``layer``, loaded into memory once: that layer's write events
    and probe reads (as a one-layer Dataset: use layer 0 on it) and the ledger prepared as ``Facts``.

    Recorded probe arrays are stored in one chunk each, so attributing recalls one by one from the store would
    decompress them whole per recall; this reads them once.
    """
    names = [n for n in ("write_key", "write_delta", "write_correction", "write_gate", "write_gate_channel",
                         "read_query", "read_out", "read_denominator") if n in ds]
    names += [n for n in ds.data_vars if str(n).startswith("ledger_")]
    sub = ds[names].isel(layer=[layer]).load()
    facts = None
    try:  # a prepared ledger; optional (attribute_read rebuilds it per call without it)
        from armt_viz.analysis import facts_of, ledger_of

        facts = facts_of(ledger_of(sub, None, required=True))
    except (ImportError, ValueError, KeyError):
        facts = None
    return sub, facts


def stale_mass_series(ds: xr.Dataset, layer: int, sample: int = 0, *, path=None,
                      progress=None) -> tuple[xr.DataArray | None, str | None]:
    """The stale mass of the memory over time for one layer (``armt_viz.analysis.stale_mass``), or a message.
    With the trace store's ``path``, through the cache kept beside it (``armt_viz.analysis.stale_cache``);
    ``progress(done, total)`` is called while segments are scanned."""
    if "write_key" not in ds:
        return None, "Stale mass needs a writes-level trace (record with level='writes')."
    if "ledger_role" not in ds:
        return None, "Stale mass needs a task ledger in the trace."
    try:
        from armt_viz.analysis import stale_mass
    except ImportError:
        return None, "Stale mass needs armt_viz.analysis.stale_mass, which is not installed."
    # the surviving stale mass (origin view, exact under the delta rule)
    if path is not None:
        from armt_viz.analysis.stale_cache import cached_origin_stale_mass
        da = cached_origin_stale_mass(ds, path, progress=progress).isel(sample=sample, layer=layer)
    else:
        da = stale_mass(ds, method="origin", progress=progress).isel(sample=sample, layer=layer).load()
    return da.assign_coords(segment=_segment_coord(ds)).rename("stale_mass"), None


def probe_chance(ds: xr.Dataset) -> pd.DataFrame | None:
    """Per probe, the probability that a uniform guess over the value set lands in each outcome class
    (``armt_viz.analysis.answer_chance``; its ``current`` is this module's ``correct``): columns probe, correct,
    stale, other, wrong (NaN where the probe predicts no answer token). None when the trace has no ledger or
    probes to compare with."""
    if "ledger_role" not in ds or "probe_token" not in ds or "probe" not in ds.dims:
        return None
    from ..analysis.chance import answer_chance

    try:
        per = answer_chance(ds)
    except (ValueError, KeyError) as exc:
        log.warning("no chance baseline for this trace: %s", exc)
        return None
    frame = pd.DataFrame(per.values, columns=[("correct" if c == "current" else str(c))
                                              for c in per["answer_class"].values])
    frame.insert(0, "probe", np.arange(len(frame)))
    return frame


def segment_tokens(ds: xr.Dataset, segment: int, sample: int = 0) -> np.ndarray:
    """The token ids of one segment (padding -1 dropped)."""
    if "tokens" not in ds:
        return np.zeros(0, dtype=np.int64)
    row = np.asarray(ds["tokens"].isel(sample=sample, segment=segment).values, dtype=np.int64)
    return row[row >= 0]
