"""Analysis of ARMT traces: exact read attribution, fact lineage, stale keys, interference, capacity.

Pure functions of an `xarray.Dataset` trace (DESIGN.md §4, §7) that return named DataArrays with `long_name`
and `units`; they never import torch, and they run lazily on dask-backed traces (a LocalCluster or a remote
scheduler through `armt_viz.distributed.cluster`). Importing this package also registers the `ds.armt`
accessor, which forwards to the same functions.

    attribute_read(ds, probe, layer)   exact shares of a read over past writes; .sum() == |read_out|
    probe_read(ds, probe, layer)       the recorded read (q, D, r) of one probe
    recall_shares / stale_share        current / stale / other fractions of each recall (ledger)
    stale_mass                         |sum_superseded phi (x) u|_F / |A|_F over time, per layer (ledger);
                                       method="origin": the surviving stale mass, exact under the delta rule
                                       (progress=True|callable; stale_cache.cached_origin_stale_mass keeps it
                                       beside a trace store and scans only newly committed segments)
    memory_by_origin                   A split by the status of its origins (current/superseded/other/no-fact)
    fact_residual                      per fact: old versions' and other facts' shares of a read at its keys
    answer_status                      current / stale / other / wrong answers (probes or probe_keys output)
    chance_baseline, answer_chance     what a uniform guess would score in each class; rate_vs_chance, wilson_interval
    fact_lineage                       versions, supersessions, recalls and their attribution of a fact
    key_overlap, retrieval_snr         interference between write keys; recall signal-to-noise
    correction_distribution            histogram of gamma
    memory_spectrum, effective_rank    singular values and effective rank of A
    capacity                           n * EM(n), the paper's capacity estimate
    ledger_of, facts_of, Facts         the task ledger stored in a trace, and its fact index (for record/, viz/)
    json_attr                          a JSON attribute of a trace (e.g. the model config)
"""

from __future__ import annotations

from . import accessor as _accessor  # noqa: F401  (registers ds.armt)
from ._common import config_of, head_mask, json_attr
from ._ledger import Facts, facts_of, ledger_of
from .answers import ANSWER_CLASSES, answer_status
from .attribution import attribute_read, probe_read
from .chance import CHANCE_CLASSES, answer_chance, chance_baseline, rate_vs_chance, wilson_interval
from .capacity import capacity, effective_rank, memory_spectrum
from .interference import correction_distribution, key_overlap, retrieval_snr
from .lineage import fact_lineage
from .origin import ORIGIN_STATUS, fact_residual, memory_by_origin, origin_contributions
from .staleness import recall_shares, stale_mass, stale_share

__all__ = [
    "ANSWER_CLASSES",
    "Facts",
    "ORIGIN_STATUS",
    "config_of",
    "head_mask",
    "facts_of",
    "json_attr",
    "ledger_of",
    "CHANCE_CLASSES",
    "answer_chance",
    "answer_status",
    "chance_baseline",
    "rate_vs_chance",
    "wilson_interval",
    "attribute_read",
    "capacity",
    "correction_distribution",
    "effective_rank",
    "fact_lineage",
    "fact_residual",
    "key_overlap",
    "memory_by_origin",
    "memory_spectrum",
    "origin_contributions",
    "probe_read",
    "recall_shares",
    "retrieval_snr",
    "stale_mass",
    "stale_share",
]
