"""Server-side min/max aggregation per pixel column, so a million-segment series draws in a few hundred
points and a single-sample spike never vanishes (PEERS.md: TensorBoard#2310, wandb#5694, plotly-resampler#234).

The x-range ``[lo, hi]`` is split into ``n_pixels`` equal-width buckets (one per pixel column of the plot).
Each non-empty bucket reports the min, max, mean and count of the samples that fall in it, so the min/max
envelope contains every sample: zoomed out, a spike widens the envelope of its bucket; zoomed in (fewer
samples than pixels) the raw samples come back unchanged. Zooming re-aggregates: the caller passes the
visible range and only that range is read. NaNs are ignored; a bucket of NaNs only is dropped.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["aggregate_minmax"]


def aggregate_minmax(da: xr.DataArray, x_range: tuple[float, float] | None = None, n_pixels: int = 800,
                     *, dim: str | None = None) -> xr.Dataset:
    """Min/max envelope of a 1-D series over the visible ``x_range``, one bucket per pixel column.

    Args:
        da: 1-D DataArray along ``dim`` (its coordinate must increase; default: its only dim).
        x_range: visible ``(lo, hi)`` in coordinate units, or None for the whole series. One sample on each
            side beyond the range is kept so lines run to the plot edges.
        n_pixels: number of buckets (pixel columns), >= 1.
        dim: the dimension to aggregate along.

    Returns:
        Dataset along ``dim`` (bucket centres; raw coordinates when not aggregated) with variables ``min``,
        ``max``, ``mean`` (each with ``da``'s attrs) and ``count`` (samples per bucket). Attrs: ``aggregated``
        (0/1), ``n_raw`` (samples in range), ``x_lo``/``x_hi`` (the range used).

    Examples:
        >>> import numpy as np, xarray as xr
        >>> y = xr.DataArray(np.zeros(1_000_000), dims="segment", coords={"segment": np.arange(1_000_000)})
        >>> y[123_457] = 9.0
        >>> env = aggregate_minmax(y, n_pixels=500)
        >>> env.sizes["segment"], float(env["max"].max())
        (500, 9.0)
    """
    if n_pixels < 1:
        raise ValueError(f"aggregate_minmax: n_pixels must be >= 1, received {n_pixels!r}")
    dim = dim or (da.dims[0] if da.ndim == 1 else None)
    if da.ndim != 1 or dim not in da.dims:
        raise ValueError(f"aggregate_minmax: expected a 1-D DataArray along {dim!r}, received dims {da.dims}")
    x = np.asarray(da[dim].values, dtype=np.float64)
    if x.size and np.any(np.diff(x) < 0):
        raise ValueError(f"aggregate_minmax: coordinate {dim!r} must be increasing")
    lo_all, hi_all = (float(x[0]), float(x[-1])) if x.size else (0.0, 0.0)
    lo, hi = (lo_all, hi_all) if x_range is None else (float(min(x_range)), float(max(x_range)))
    start = max(int(np.searchsorted(x, lo, side="left")) - 1, 0)
    stop = min(int(np.searchsorted(x, hi, side="right")) + 1, x.size)
    sub = da.isel({dim: slice(start, stop)})
    xs = x[start:stop]
    y = np.asarray(sub.values, dtype=np.float64)
    attrs = dict(da.attrs)
    meta = {"n_raw": int(xs.size), "x_lo": lo, "x_hi": hi}
    if xs.size <= n_pixels or not np.any((xs >= lo) & (xs <= hi)):
        count = np.isfinite(y).astype(np.int64)
        out = xr.Dataset(
            {"min": (dim, y, attrs), "max": (dim, y, attrs), "mean": (dim, y, attrs), "count": (dim, count)},
            coords={dim: xs}, attrs={**meta, "aggregated": 0},
        )
        return out
    # the padding samples outside [lo, hi] stay raw points; the samples inside go to equal-width columns
    inside = (xs >= lo) & (xs <= hi)
    first, last = int(np.argmax(inside)), int(xs.size - np.argmax(inside[::-1]))
    xin, yin = xs[first:last], y[first:last]
    width = (hi - lo) / n_pixels if hi > lo else 1.0
    bucket = np.clip(((xin - lo) / width).astype(np.int64), 0, n_pixels - 1)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])  # x increases, so buckets are contiguous
    finite = np.isfinite(yin)
    y_min = np.fmin.reduceat(np.where(finite, yin, np.inf), starts)
    y_max = np.fmax.reduceat(np.where(finite, yin, -np.inf), starts)
    count = np.add.reduceat(finite.astype(np.int64), starts)
    total = np.add.reduceat(np.where(finite, yin, 0.0), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    centres = lo + (bucket[starts] + 0.5) * width
    sel = np.flatnonzero(count > 0)
    pad_lo, pad_hi = slice(0, first), slice(last, xs.size)

    def cat(pad_values_lo, values, pad_values_hi):
        return np.concatenate([pad_values_lo, values, pad_values_hi])

    raw_count_lo, raw_count_hi = np.isfinite(y[pad_lo]).astype(np.int64), np.isfinite(y[pad_hi]).astype(np.int64)
    return xr.Dataset(
        {"min": (dim, cat(y[pad_lo], y_min[sel], y[pad_hi]), attrs),
         "max": (dim, cat(y[pad_lo], y_max[sel], y[pad_hi]), attrs),
         "mean": (dim, cat(y[pad_lo], mean[sel], y[pad_hi]), attrs),
         "count": (dim, cat(raw_count_lo, count[sel], raw_count_hi))},
        coords={dim: cat(xs[pad_lo], centres[sel], xs[pad_hi])}, attrs={**meta, "aggregated": 1},
    )
