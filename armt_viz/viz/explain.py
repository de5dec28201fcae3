"""Words that make the dashboard's numbers explain themselves (issue 15): one-line "how to read this" per figure,
the landing guide, control tooltips, token decoding, chance summaries and the training-range warning.

Pure functions of small inputs (no Panel): the views and figure builders call them, tests check them. Every text
here is plain text (shown in text panes or plotly annotations, never parsed as HTML or Markdown by the page).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from ..training_range import check_range, range_from_mapping

__all__ = ["HOW_TO_READ", "GUIDE", "CONTROL_HELP", "SIGNED_SHARE_FORMULA", "special_tokens_of", "decode_tokens",
           "range_warning", "chance_sentence"]

SIGNED_SHARE_FORMULA = ("signed projection: share_w = <c_w, r> / |r|^2, where r is the recall's read-out and c_w the "
                        "part of it contributed by write w; shares sum to 1 over all writes, and a write pointing "
                        "away from r has a negative share (so one group can exceed 100 % while another is negative)")

HOW_TO_READ = {
    "timeline": ("How to read: one column per segment (x: segment index); each row a per-segment statistic of the "
                 "selected layer, min-max over the segments a pixel covers; units on each row's axis. Click a "
                 "segment to select it, drag to zoom."),
    "assoc": ("How to read: the association matrix A (rows: DPFP key features, columns: model dimensions, color: "
              "entry value, unitless) after the selected segment; the text says how it was rebuilt."),
    "writes": ("How to read: the memory writes of the selected segment, one per memory token: write gate β "
               "(0-1), correction γ and the norms of key and value (unitless L2 norms)."),
    "fact": ("How to read: top, the values the selected key (fact) held over segments (bars: while current), its "
             "writes and its recalls colored by outcome; bottom, each recall's read-out split over earlier writes "
             "as signed projections (hover the panel title for the formula)."),
    "stale": ("How to read: top, per key and time bucket, the fraction of probed recalls that returned an older "
              "value; bottom, the share of recalls per outcome over time (%), grey: what a uniform guess over the "
              "value set would score on the same queries."),
    "layers": ("How to read: the same statistics for every layer side by side over the timeline's segment range "
               "(x: segment index; units on each axis)."),
    "compare": ("How to read: two traces aligned by segment index; top rows overlay a statistic of both runs, the "
                "difference panel shows A minus B; answer classes as shares of recalls with their chance level."),
}

GUIDE = ("What to look at: (1) the timeline's |A| and read-out rows: does the memory keep growing? (2) Facts tab: "
         "pick a key, see when it was overwritten and whether later recalls returned the current value; compare "
         "every rate with its chance line before calling it a finding. (3) Memory tab: the association matrix and "
         "this segment's writes. (4) Compare two runs (e.g. γ on/off) under Compare. Tokens of the selected "
         "segment and of the probed query are spelled out in the sidebar.")

CONTROL_HELP = {
    "trace": "Which recorded run to show (only runs under the server's trace root are listed).",
    "sample": "Which stream of a batched recording to show; fact ids are per sample.",
    "layer": "Which ARMT layer's memory every view shows (each layer has its own association matrix A).",
    "segment": "Which segment to inspect: the Memory tab shows A after it; the vertical rule marks it everywhere.",
    "fact": "Which key of the task ledger to follow: its writes, overwrites and recalls (count of each shown).",
    "stale": ("Add the stale mass row to the timeline: the share of A's norm held by superseded writes "
              "(computed once per layer; can take a while on long runs)."),
    "export": "Download the selected segment, layer and fact as a zipped zarr store (open it with av.open_trace).",
    "html": "Download this view as one offline HTML file: the figures (with plotly.js inlined), the selection and "
            "the trace's provenance.",
    "copy": "Copy a link that reopens exactly this view (trace, sample, layer, segment, fact, tab and zoom).",
}

# the stream's special tokens (AR's SEP/GEN/EOS have the same ids): the default vocabulary of a trace whose ledger
# does not name its own
_DEFAULT_SPECIAL = {"SEP": 100, "GEN": 101, "EOS": 102, "DEL": 103, "FILL": 104, "NONE": 105}


def special_tokens_of(attrs: Mapping) -> dict[int, str]:
    """``{token id: name}`` of a trace's task vocabulary (ledger ``special_tokens``; the stream's otherwise)."""
    special = None
    raw = attrs.get("ledger_attrs")
    if isinstance(raw, str):
        try:
            special = json.loads(raw).get("special_tokens")
        except (ValueError, AttributeError):
            special = None
    elif isinstance(raw, Mapping):
        special = raw.get("special_tokens")
    if special is None:
        special = attrs.get("ledger_special_tokens")
    if isinstance(special, str):
        try:
            special = json.loads(special)
        except ValueError:
            special = None
    if not isinstance(special, Mapping):
        special = _DEFAULT_SPECIAL
    return {int(v): str(k) for k, v in special.items()}


def decode_tokens(tokens, special: Mapping[int, str] | None, *, mark: int | None = None) -> str:
    """Token ids as text: special tokens by name, digits 0-15 in hex (the tasks' base-16 digits), others as #id;
    padding (-1) dropped; the token at index ``mark`` in brackets. ``special=None``: raw ids."""
    out = []
    for i, t in enumerate(np.asarray(tokens, dtype=np.int64).ravel().tolist()):
        if t < 0:
            continue
        if special is None:
            word = str(t)
        elif t in special:
            word = special[t]
        elif 0 <= t < 16:
            word = format(t, "X")
        else:
            word = f"#{t}"
        out.append(f"[{word}]" if mark is not None and i == mark else word)
    return " ".join(out)


def range_warning(attrs: Mapping, n_segments: int) -> str | None:
    """The training-range warning of a trace (``attrs['trained_range']`` written by the recorder), or None."""
    raw = attrs.get("trained_range")
    if not raw:
        return None
    try:
        rng = range_from_mapping(json.loads(raw) if isinstance(raw, str) else raw)
    except (ValueError, TypeError):
        return None
    text = check_range(rng, n_segments)
    return None if text is None else "Beyond the model's range: " + text


def chance_sentence(label: str, k: int, n: int, chance: float) -> str:
    """``"stale 91.0 % (95 % CI 90.1-91.8 %) vs chance 94.0 %"`` with a note when chance explains the rate."""
    from ..analysis.chance import rate_vs_chance

    if n <= 0 or not np.isfinite(chance):
        return f"{label}: no answered recalls"
    r = rate_vs_chance(k, n, chance)
    text = (f"{label} {100 * r['rate']:.1f} % (95 % CI {100 * r['low']:.1f}–{100 * r['high']:.1f} %, n={n:,}) "
            f"vs chance {100 * chance:.1f} %")
    return text + (" — indistinguishable from chance" if r["indistinguishable"] else "")
