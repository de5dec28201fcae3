"""Chance baselines for answer rates: what a uniform guess over the value set would score, and whether an
observed rate can be told apart from it (DESIGN.md §4 "stale answers"; issue 15).

* ``answer_chance(ds)``: per probed query, the probability that a uniform guess over the task's value set lands in
  each answer class of ``answer_status`` (current / stale / other / wrong). The guess is classified with the very
  rules ``answer_status`` applies to the model's answer (``answers._answer_classes``), against the same ledger, so
  "stale" chance is the fraction of the value set that an older version of the asked key held. Value set: the 16
  base-16 digit tokens for AR and stream answers (``params.value_size`` known), else (bAbI) every value the
  ledger's facts hold. NONE is not a guess (``include_none=True`` adds it where the task has one).
* ``chance_baseline(ds)``: those probabilities averaged over the answered queries (the expected rate of a
  guesser on exactly these queries).
* ``wilson_interval(k, n)`` and ``rate_vs_chance(k, n, chance)``: the Wilson score interval of an observed rate
  and whether the chance rate falls inside it ("indistinguishable from chance").

Once every key has held most of the values, almost any wrong guess is an "older value of the key": on the
shipped model's 50,000-segment demo run, 94 % of uniform guesses are "stale" (issue 15).
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ._common import as_numpy, check_trace, named
from ._ledger import Facts, answer_spelling, facts_of, ledger_of
from .answers import _answer_classes

__all__ = ["CHANCE_CLASSES", "answer_chance", "chance_baseline", "wilson_interval", "rate_vs_chance",
           "value_candidates"]

CHANCE_CLASSES = ("current", "stale", "other", "wrong")
Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate ``k / n`` (Wilson 1927); ``(nan, nan)`` for ``n == 0``."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_vs_chance(k: int, n: int, chance: float, z: float = Z95) -> dict:
    """``{rate, low, high, chance, n, indistinguishable}``: the observed rate, its Wilson interval, and whether
    the chance rate lies inside that interval (then the rate cannot be told apart from guessing)."""
    low, high = wilson_interval(int(k), int(n), z)
    rate = k / n if n else float("nan")
    indist = bool(n) and low <= chance <= high
    return {"rate": rate, "low": low, "high": high, "chance": float(chance), "n": int(n), "indistinguishable": indist}


def value_candidates(led: xr.Dataset, facts: Facts, *, include_none: bool = False) -> np.ndarray:
    """Answer tokens a uniform guesser picks from (see the module docstring)."""
    size, none = answer_spelling(led)
    if size is not None:
        cand = np.arange(16, dtype=np.int64)
    else:
        vals = facts.ver_value[facts.ver_value >= 0]
        cand = np.unique(vals).astype(np.int64)
    if include_none and none >= 0:
        cand = np.union1d(cand, [none])
    return cand


def answer_chance(ds: xr.Dataset, *, ledger=None, include_none: bool = False) -> xr.DataArray:
    """Probability that a uniform guess lands in each class, per probe: dims ``(probe, answer_class)``, NaN rows
    for probes that predict no answer token (``answer_status`` "n/a"). Rows sum to 1."""
    check_trace(ds, ("probe_sample", "probe_token"), "answer_chance")
    led = ledger if isinstance(ledger, xr.Dataset) else ledger_of(ds, None, required=True)
    facts = facts_of(led)
    sample = as_numpy(ds["probe_sample"]).astype(np.int64)
    token = as_numpy(ds["probe_token"]).astype(np.int64)
    out = np.full((len(sample), len(CHANCE_CLASSES)), np.nan)
    q = facts.match_probes(sample, token)
    p = np.flatnonzero(q >= 0)
    i = q[p]
    j = token[p] + 1 - facts.query_answer_token[i]
    length = facts.query_answer_len[i]
    on_answer = (facts.query_answer_token[i] >= 0) & (j >= 0) & (j < length)
    p, i, j, length = p[on_answer], i[on_answer], j[on_answer], length[on_answer]
    size, none = answer_spelling(led)
    cand = value_candidates(led, facts, include_none=include_none)
    for n in np.unique(length):
        g = np.flatnonzero(length == n)
        if not len(g):
            continue
        rep_i, rep_j = np.repeat(i[g], len(cand)), np.repeat(j[g], len(cand))
        guess = np.tile(cand, len(g))
        cls = _answer_classes(facts, rep_i, rep_j, guess, size if size is not None or n <= 1 else int(n), none)
        cls = cls.reshape(len(g), len(cand))
        for c, name in enumerate(CHANCE_CLASSES):
            out[p[g], c] = (cls == name).mean(axis=1)
    da = xr.DataArray(out, dims=("probe", "answer_class"),
                      coords={"probe": np.arange(len(sample)), "answer_class": list(CHANCE_CLASSES)})
    return named(da, "answer_chance", "probability that a uniform guess lands in each answer class", "1",
                 value_set_size=int(len(cand)))


def chance_baseline(ds: xr.Dataset, *, ledger=None, include_none: bool = False) -> xr.DataArray:
    """``answer_chance`` averaged over the probes that predict an answer token: dim ``answer_class``."""
    per = answer_chance(ds, ledger=ledger, include_none=include_none)
    answered = per.notnull().all("answer_class")
    mean = per.where(answered, drop=True).mean("probe") if bool(answered.any()) else per.isel(probe=0) * np.nan
    return named(mean, "chance_baseline", "expected answer-class rate of a uniform guess", "1",
                 n_queries=int(answered.sum()), value_set_size=per.attrs["value_set_size"])
