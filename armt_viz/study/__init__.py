"""The stale-key study (issue 13): `stale_keys_study(model, out, small=...)`, also `armt-viz study stale-keys`.

    core.py     plan the independent runs, run them (dask cluster or here), summarise every number
    runs.py     one run: a model (with flags) on one mutable-state stream; the causal test (torch)
    stats.py    Wilson CIs, binned curves, the log-linear decline fit (pure numpy)
    report.py   figures, the offline HTML report, PNGs
"""

from .core import FULL, MEDIUM, SMALL, plan, stale_keys_study, summarise

__all__ = ["stale_keys_study", "plan", "summarise", "SMALL", "MEDIUM", "FULL"]
