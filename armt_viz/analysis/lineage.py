"""Fact lineage: every version of a fact, where it was written and superseded, and every recall of it.

The ledger (`armt_viz.tasks.ledger`) gives the ground truth; the trace gives what the model did. One call
returns a Dataset with two tables (DESIGN.md §6 "a fact's lifecycle"):

* dim `fact_version`, one row per version of a fact: kind (write | delete), value, written_token,
  written_segment, superseded_token / superseded_segment (-1 while latest), superseded_by (write | delete | ""),
  n_queries (queries asking about this version);
* dim `recall`, one row per query of the fact: the version asked, query token and segment, expected answer, the
  probe on it (-1 if none; the probe predicting the first answer token when there are several), the model's
  prediction there (`probe_prediction`), its class (`armt_viz.analysis.answers`), and, with `attribution=True`,
  `recall_share` (recall, layer, status): the fractions of the read-out from current / stale / other writes.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ._common import as_numpy, per_run
from ._ledger import STATUS, facts_of, ledger_of
from .answers import answer_status
from .staleness import recall_shares

__all__ = ["fact_lineage"]


def _probe_of_query(facts, q_rows: np.ndarray, ds: xr.Dataset) -> np.ndarray:
    """Probe index per query row (-1 if no probe lies in its span)."""
    out = np.full(len(q_rows), -1, dtype=np.int64)
    if "probe_token" not in ds.variables or ds.sizes.get("probe", 0) == 0:
        return out
    sample = as_numpy(ds["probe_sample"]).astype(np.int64)
    token = as_numpy(ds["probe_token"]).astype(np.int64)
    match = facts.match_probes(sample, token)
    by_query: dict[int, list[int]] = {}
    for p in np.flatnonzero(match >= 0):
        by_query.setdefault(int(match[p]), []).append(int(p))
    for k, i in enumerate(q_rows):
        hits = by_query.get(int(i))
        if hits:
            first = [p for p in hits if token[p] == facts.query_answer_token[i] - 1]
            out[k] = first[0] if first else hits[0]
    return out


@per_run
def fact_lineage(ds: xr.Dataset, fact_id: int | None = None, *, sample: int = 0, ledger=None,
                 attribution: bool = True, layer=None) -> xr.Dataset:
    """Lineage of one fact (`fact_id`) or of every fact (None) of `sample`; see the module docstring."""
    led = ledger_of(ds, ledger, required=True)
    facts = facts_of(led)
    vmask = facts.ver_sample == sample
    qmask = facts.query_sample == sample
    if fact_id is not None:
        vmask &= facts.ver_fact == fact_id
        qmask &= facts.query_fact == fact_id
    v = np.flatnonzero(vmask)
    q = np.flatnonzero(qmask)
    # queries per version
    vkey = facts.ver_fact[v] * (1 << 32) + facts.ver_version[v]
    qkey = facts.query_fact[q] * (1 << 32) + facts.query_version[q]
    uniq, counts = np.unique(qkey, return_counts=True)
    pos = np.minimum(np.searchsorted(uniq, vkey), max(len(uniq) - 1, 0))
    n_queries = np.where((len(uniq) > 0) & (uniq[pos] == vkey), counts[pos], 0) if len(uniq) else np.zeros(len(v), np.int64)

    probe = _probe_of_query(facts, q, ds)
    prediction = np.full(len(q), -1, dtype=np.int64)
    status = np.full(len(q), "n/a", dtype=object)
    has = probe >= 0
    if has.any() and "probe_prediction" in ds.variables:
        prediction[has] = as_numpy(ds["probe_prediction"]).astype(np.int64)[probe[has]]
        status[has] = as_numpy(answer_status(ds, source="probe", ledger=led))[probe[has]]

    data = {
        "fact_id": ("fact_version", facts.ver_fact[v]),
        "version": ("fact_version", facts.ver_version[v]),
        "kind": ("fact_version", facts.ver_kind[v]),
        "value": ("fact_version", facts.ver_value[v]),
        "written_token": ("fact_version", facts.ver_token[v]),
        "written_segment": ("fact_version", facts.ver_segment[v]),
        "superseded_token": ("fact_version", facts.ver_valid_to[v]),
        "superseded_segment": ("fact_version", facts.ver_superseded_segment[v]),
        "superseded_by": ("fact_version", facts.ver_superseded_by[v]),
        "n_queries": ("fact_version", n_queries),
        "recall_fact_id": ("recall", facts.query_fact[q]),
        "recall_version": ("recall", facts.query_version[q]),
        "query_token": ("recall", facts.query_token[q]),
        "query_segment": ("recall", facts.query_segment[q]),
        "expected_answer": ("recall", facts.query_expected[q]),
        "probe": ("recall", probe),
        "prediction": ("recall", prediction),
        "answer_status": ("recall", status),
    }
    out = xr.Dataset(data, coords={"fact_version": np.arange(len(v)), "recall": np.arange(len(q))},
                     attrs={"sample": sample, "fact": -1 if fact_id is None else int(fact_id)})
    units = {"written_token": "token", "superseded_token": "token", "query_token": "token"}
    for name in out.data_vars:
        out[name].attrs = {"long_name": name.replace("_", " "), "units": units.get(name, "1")}
    if attribution and has.any() and "write_key" in ds.variables and "read_out" in ds.variables:
        shares = recall_shares(ds, layer=layer, probes=probe[has], ledger=facts)
        full = np.full((len(q), shares.sizes["layer"], len(STATUS)), np.nan)
        full[has] = shares.values
        out["recall_share"] = xr.DataArray(full, dims=("recall", "layer", "status"),
                                           coords={"layer": shares["layer"].values, "status": list(STATUS)},
                                           attrs=dict(shares.attrs))
    return out
