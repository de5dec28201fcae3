"""Statistics of the stale-key study (pure numpy): binomial CIs, binned curves, the log-linear decline fit.

Every accuracy carries a Wilson score interval (95 %) and the chance rate of its class; the decline of accuracy
with updates per key is fitted as acc(u) = a + b log10(u) (PI-LLM, arXiv 2506.08184, reports a log-linear fall
toward 0 as updates per key rise from 3 to 400), and summarised as the updates per key at which the fitted
accuracy halves from its value at one update, with a bootstrap CI over queries.
"""

from __future__ import annotations

import numpy as np

__all__ = ["wilson", "binned", "loglinear_fit", "halving_point", "halving_ci", "log_edges", "PI_LLM_RANGE", "pi_llm_halving"]

Z95 = 1.959963984540054
PI_LLM_RANGE = (3.0, 400.0)  # updates per key over which PI-LLM reports the log-linear fall toward 0


def wilson(k, n, z: float = Z95):
    """Wilson score interval of k successes in n trials -> (low, high); NaN where n == 0. Units: fraction."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo, hi = centre - half, centre + half
    bad = n <= 0
    return np.where(bad, np.nan, np.clip(lo, 0, 1)), np.where(bad, np.nan, np.clip(hi, 0, 1))


def log_edges(top: float) -> np.ndarray:
    """Bin edges 1, 2, 3, 4, 6, 8, 12, 16, ... (x1.5/x1.33 steps) up to past `top` (bin i = [e_i, e_{i+1}))."""
    edges = [1.0, 2.0, 3.0, 4.0]
    while edges[-1] <= top:
        edges.append(edges[-1] * (1.5 if len(edges) % 2 == 0 else 4 / 3))
    return np.round(np.asarray(edges))


def binned(x, correct, edges, *, extra: dict | None = None) -> dict[str, np.ndarray]:
    """Accuracy of `correct` (bool) in bins of x (bin i = [edges[i], edges[i+1])), with Wilson CI and count;
    `extra` {name: values} are averaged per bin (NaN-aware)."""
    x, ok = np.asarray(x, dtype=np.float64), np.asarray(correct, dtype=bool)
    e = np.asarray(edges, dtype=np.float64)
    nb = len(e) - 1
    idx = np.digitize(x, e) - 1
    keep = (idx >= 0) & (idx < nb) & np.isfinite(x)
    n = np.bincount(idx[keep], minlength=nb).astype(np.float64)
    k = np.bincount(idx[keep], weights=ok[keep], minlength=nb)
    lo, hi = wilson(k, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"acc": np.where(n > 0, k / np.maximum(n, 1), np.nan), "lo": lo, "hi": hi, "n": n,
               "bin_lo": e[:-1], "bin_hi": e[1:]}
        for name, v in (extra or {}).items():
            v = np.asarray(v, dtype=np.float64)
            good = keep & np.isfinite(v)
            s = np.bincount(idx[good], weights=v[good], minlength=nb)
            c = np.bincount(idx[good], minlength=nb)
            out[name] = np.where(c > 0, s / np.maximum(c, 1), np.nan)
    return out


def loglinear_fit(updates, correct) -> tuple[float, float]:
    """Least-squares fit of correct (0/1 per query) = a + b log10(updates) over queries with updates >= 1."""
    u, y = np.asarray(updates, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    keep = (u >= 1) & np.isfinite(u)
    if keep.sum() < 3 or np.ptp(np.log10(u[keep])) == 0:
        return float("nan"), float("nan")
    X = np.stack([np.ones(keep.sum()), np.log10(u[keep])], 1)
    a, b = np.linalg.lstsq(X, y[keep], rcond=None)[0]
    return float(a), float(b)


HALVING_CAP = 1e4  # updates per key: a fit that halves only past this (20x any measured range) never halves


def halving_point(a: float, b: float) -> float:
    """Updates per key u_half with a + b log10(u_half) = a / 2 (half the fitted accuracy at one update):
    10^(-a / (2 b)). inf if the fit does not decline (b >= 0), a <= 0, or it halves only past HALVING_CAP (a
    nearly flat fit extrapolated by many decades: 1e39 updates is not a number to report)."""
    if not np.isfinite(a) or not np.isfinite(b) or b >= 0 or a <= 0:
        return float("inf")
    e = -a / (2 * b)
    return float(10 ** e) if e <= np.log10(HALVING_CAP) else float("inf")


def halving_ci(updates, correct, *, n_boot: int = 200, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval (percentile, resampling queries) of `halving_point`; inf-valued draws kept."""
    rng = np.random.default_rng(seed)
    u, y = np.asarray(updates), np.asarray(correct)
    draws = []
    for _ in range(n_boot):
        i = rng.integers(0, len(u), len(u))
        draws.append(halving_point(*loglinear_fit(u[i], y[i])))
    d = np.sort(np.asarray(draws, dtype=np.float64))  # nearest-rank percentiles (draws may be inf)
    return float(d[int(0.025 * (len(d) - 1))]), float(d[int(np.ceil(0.975 * (len(d) - 1)))])


def pi_llm_halving() -> float:
    """Halving point of a log-linear fall from any accuracy at 3 updates to 0 at 400: the geometric mean
    sqrt(3 * 400) ~ 34.6 updates per key (the shape PI-LLM reports, not a number it states)."""
    return float(np.sqrt(PI_LLM_RANGE[0] * PI_LLM_RANGE[1]))
