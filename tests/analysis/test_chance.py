"""Chance baselines (armt_viz/analysis/chance.py) against the naive answer-class reference of test_answers, and
the Wilson interval against its closed form and a simulated coverage."""

from __future__ import annotations

import numpy as np
import pytest

from armt_viz.analysis import answer_chance, answer_status, chance_baseline, rate_vs_chance, wilson_interval
from armt_viz.tasks.stream import NONE

from .test_answers import _random_case, naive_answer_status

TOL = 1e-12  # exact fractions of 16 guesses


@pytest.mark.parametrize("value_size", [1, 2])
@pytest.mark.parametrize("seed", [0, 3])
def test_answer_chance_is_the_class_mix_of_every_uniform_guess(seed, value_size):
    ds, ledger = _random_case(seed, value_size, samples=1)
    got = answer_chance(ds)
    status = answer_status(ds).values
    want = np.full(got.shape, np.nan)
    classes = list(got["answer_class"].values)
    for g in range(16):  # the naive reference classifies each guess as if the model had answered it
        cls = naive_answer_status(ds["probe_sample"].values, ds["probe_token"].values,
                                  np.full(ds.sizes["probe"], g), ledger, value_size=value_size, none=NONE)
        for c, name in enumerate(classes):
            hit = np.array([x == name for x in cls], dtype=float)
            want[:, c] = np.where(np.isnan(want[:, c]), 0, want[:, c]) + hit / 16
    want[status == "n/a"] = np.nan
    np.testing.assert_allclose(got.values, want, atol=TOL, equal_nan=True)
    answered = ~np.isnan(got.values).any(axis=1)
    assert answered.sum() > 10 and (status[answered] != "n/a").all()
    np.testing.assert_allclose(got.values[answered].sum(axis=1), 1.0, atol=TOL)
    assert (got.sel(answer_class="stale").values[answered] > 0).any()  # the case has superseded values
    base = chance_baseline(ds)
    np.testing.assert_allclose(base.values, np.nanmean(want[answered], axis=0), atol=TOL)
    assert base.attrs["n_queries"] == int(answered.sum()) and base.attrs["value_set_size"] == 16


def test_wilson_interval_closed_form_and_coverage():
    low, high = wilson_interval(7, 20)
    z = 1.959963984540054
    p, n = 0.35, 20
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert abs(low - (centre - half)) < 1e-12 and abs(high - (centre + half)) < 1e-12
    rng = np.random.default_rng(0)
    ks = rng.binomial(200, 0.3, size=4000)
    covered = np.mean([lo <= 0.3 <= hi for lo, hi in (wilson_interval(int(k), 200) for k in ks)])
    assert 0.93 <= covered <= 0.97  # nominal 95 %
    assert wilson_interval(0, 0) != wilson_interval(0, 0)  # nan
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(5, 3)


def test_rate_vs_chance_flags_a_rate_chance_explains():
    # the numbers: 91 % stale where a guess is stale 94 % of the time, over ~4000 recalls
    assert rate_vs_chance(3640, 4000, 0.94)["indistinguishable"] is False  # 91 % is *below* chance here
    assert rate_vs_chance(375, 400, 0.94)["indistinguishable"] is True
    far = rate_vs_chance(400, 400, 1 / 16)
    assert far["indistinguishable"] is False and far["low"] > 0.98
