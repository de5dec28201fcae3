"""`ds.armt`: the analysis functions as a Dataset namespace (xarray accessor, STYLE.md rule 18).

A thin forwarder: every method calls the function of the same name with the Dataset as first argument, so
`ds.armt.attribute_read(probe=0, layer=1)` is `attribute_read(ds, probe=0, layer=1)`. The only state kept is
the parsed fact tables of the trace's ledger (xarray caches one accessor per Dataset object), so repeated
ledger-aware calls on a long trace parse the ledger once.
"""

from __future__ import annotations

import xarray as xr

from . import answers, attribution, capacity, interference, lineage, origin, staleness
from ._common import check_trace
from ._ledger import Facts, facts_of, ledger_of

__all__ = ["ArmtAccessor"]


@xr.register_dataset_accessor("armt")
class ArmtAccessor:
    """Analysis of an armt_viz trace: `ds.armt.<function>(...)` (see `armt_viz.analysis`)."""

    __slots__ = ("_obj", "_facts")

    def __init__(self, ds: xr.Dataset):
        self._obj = ds
        self._facts: Facts | None = None

    @property
    def _ds(self) -> xr.Dataset:
        return check_trace(self._obj, (), "ds.armt")

    def _ledger(self, ledger):
        """An explicit ledger wins; else the trace's own, parsed once and cached."""
        if ledger is not None:
            return ledger
        if self._facts is None:
            led = ledger_of(self._ds)
            if led is None:
                return None
            self._facts = facts_of(led)
        return self._facts

    @property
    def config(self):
        """The ARMTConfig that produced the trace."""
        from ._common import config_of
        return config_of(self._ds)

    @property
    def ledger(self) -> xr.Dataset | None:
        """The embedded task ledger (`ledger_*` variables, prefix stripped), or None."""
        return ledger_of(self._ds)

    def attribute_read(self, probe: int, layer: int, **kwargs) -> xr.DataArray:
        """See `armt_viz.analysis.attribute_read`."""
        kwargs["ledger"] = self._ledger(kwargs.get("ledger"))
        return attribution.attribute_read(self._ds, probe, layer, **kwargs)

    def recall_shares(self, **kwargs) -> xr.DataArray:
        """See `armt_viz.analysis.recall_shares`."""
        kwargs["ledger"] = self._ledger(kwargs.get("ledger"))
        return staleness.recall_shares(self._ds, **kwargs)

    def stale_share(self, **kwargs) -> xr.DataArray:
        """See `armt_viz.analysis.stale_share`."""
        kwargs["ledger"] = self._ledger(kwargs.get("ledger"))
        return staleness.stale_share(self._ds, **kwargs)

    def stale_mass(self, **kwargs) -> xr.DataArray:
        """See `armt_viz.analysis.stale_mass`."""
        kwargs["ledger"] = self._ledger(kwargs.get("ledger"))
        return staleness.stale_mass(self._ds, **kwargs)

    def memory_by_origin(self, segment: int, layer: int, **kwargs) -> xr.DataArray:
        """See `armt_viz.analysis.memory_by_origin`."""
        kwargs["ledger"] = self._ledger(kwargs.get("ledger"))
        return origin.memory_by_origin(self._ds, segment, layer, **kwargs)

    def fact_residual(self, layer: int, **kwargs) -> xr.Dataset:
        """See `armt_viz.analysis.fact_residual`."""
        kwargs["ledger"] = self._ledger(kwargs.get("ledger"))
        return origin.fact_residual(self._ds, layer, **kwargs)

    def answer_status(self, **kwargs) -> xr.DataArray:
        """See `armt_viz.analysis.answer_status`."""
        return answers.answer_status(self._ds, **kwargs)

    def fact_lineage(self, fact_id: int | None = None, **kwargs) -> xr.Dataset:
        """See `armt_viz.analysis.fact_lineage`."""
        return lineage.fact_lineage(self._ds, fact_id, **kwargs)

    def key_overlap(self, **kwargs) -> xr.DataArray:
        """See `armt_viz.analysis.key_overlap`."""
        return interference.key_overlap(self._ds, **kwargs)

    def retrieval_snr(self, **kwargs) -> xr.DataArray:
        """See `armt_viz.analysis.retrieval_snr`."""
        kwargs["ledger"] = self._ledger(kwargs.get("ledger"))
        return interference.retrieval_snr(self._ds, **kwargs)

    def correction_distribution(self, **kwargs) -> xr.DataArray:
        """See `armt_viz.analysis.correction_distribution`."""
        return interference.correction_distribution(self._ds, **kwargs)

    def memory_spectrum(self, **kwargs) -> xr.DataArray:
        """See `armt_viz.analysis.memory_spectrum`."""
        return capacity.memory_spectrum(self._ds, **kwargs)

    def effective_rank(self, **kwargs) -> xr.DataArray:
        """See `armt_viz.analysis.effective_rank` (from `memory_spectrum(**kwargs)`)."""
        return capacity.effective_rank(self._ds, **kwargs)
