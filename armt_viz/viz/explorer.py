"""``explore(ds)``: an ipywidgets explorer of a trace for Jupyter, over the same figure builders as the dashboard.

No Panel server: Layer and Segment sliders, a Fact dropdown (the selected sample's facts) and, for a trace with
more than one sample, a Sample dropdown drive plotly figures shown in ``ipywidgets.Output`` areas
(``go.FigureWidget`` would need ``anywidget``, which is not a dependency). Loaded data (series, ledger, probe
outcomes) is cached per explorer, so moving a slider only re-reads the selected segment.

Example:
    >>> import armt_viz as av                                   # doctest: +SKIP
    >>> ds = av.open_trace("runs/demo.zarr")
    >>> av.explore(ds)
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import xarray as xr

from . import data as _data
from .figures import LAYER_COMPARISON_VARS, message_figure, missing_facts, missing_probes, segment_size
from .figures_facts import fact_lifecycle_figure, stale_answers_figure
from .figures_memory import assoc_figure, write_events_figure
from .figures_timeline import layer_comparison_figure, timeline_figure

__all__ = ["explore", "Explorer"]

NO_FACT = -1


class Explorer:
    """The explorer's state and widgets; ``explore(ds)`` returns ``Explorer(ds).widget``.

    Args:
        ds: a trace Dataset (lazy or in memory).
        layer, segment, fact: the initial selection (fact: default the sample's most probed one).
        sample: the sample (batch row) shown; a trace with more than one sample gets a Sample dropdown.
    """

    def __init__(self, ds: xr.Dataset, *, layer: int = 0, segment: int = 0, fact: int | None = None,
                 sample: int = 0) -> None:
        import ipywidgets as w

        self.ds = ds
        n_layer, n_seg = max(_data.n_layers(ds), 1), max(_data.n_segments(ds), 1)
        n_sample = max(int(ds.sizes.get("sample", 1)), 1)
        if not 0 <= sample < n_sample:
            raise ValueError(f"sample={sample!r} is not a sample of this trace; expected 0..{n_sample - 1}")
        self._series = lru_cache(maxsize=None)(self._load_series)
        self._layer_series = lru_cache(maxsize=None)(lambda name, sample: _data.layer_series(ds, name, sample))
        self.ledger = _data.ledger_frame(ds)
        self.probes = _data.probe_frame(ds, self.ledger)  # every sample's; the figures take the selected one's
        self.chance = _data.probe_chance(ds)  # per probe, the outcome mix of a uniform guess (chance lines)
        self._attribution = lru_cache(maxsize=64)(self._load_attribution)
        self._quiet = False  # True while the Fact options are replaced (no redraw per intermediate value)
        style = {"description_width": "64px"}
        self.sample = w.Dropdown(options=[(str(i), i) for i in range(n_sample)], value=sample, description="Sample",
                                 style=style, layout=w.Layout(width="180px"))
        self.layer = w.IntSlider(value=min(layer, n_layer - 1), min=0, max=n_layer - 1, description="Layer",
                                 style=style, continuous_update=False, layout=w.Layout(width="320px"))
        self.segment = w.IntSlider(value=min(segment, n_seg - 1), min=0, max=n_seg - 1, description="Segment",
                                   style=style, continuous_update=False, layout=w.Layout(width="520px"))
        options, value = self._fact_options(sample, fact)
        self.fact = w.Dropdown(options=options, value=value, description="Fact", style=style,
                               layout=w.Layout(width="420px"))
        self.out = {name: w.Output() for name in ("timeline", "assoc", "writes", "fact", "stale", "layers")}
        tabs = w.Tab(children=[
            self.out["timeline"],
            w.HBox([self.out["assoc"], self.out["writes"]]),
            w.HBox([self.out["fact"], self.out["stale"]]),
            self.out["layers"],
        ])
        for i, title in enumerate(("Timeline", "Memory at segment", "Facts", "Layers")):
            tabs.set_title(i, title)
        self.layer.observe(lambda _: self.redraw("timeline", "assoc", "writes", "fact"), "value")
        self.segment.observe(lambda _: self.redraw(*self.out), "value")
        self.fact.observe(lambda _: self._quiet or self.redraw("timeline", "fact", "stale"), "value")
        self.sample.observe(self._on_sample, "value")
        controls = [self.sample, self.layer, self.fact] if n_sample > 1 else [self.layer, self.fact]
        self.widget = w.VBox([w.HBox(controls), self.segment, tabs])
        self.redraw(*self.out)

    # ------------------------------------------------------------------ selection
    def _fact_options(self, sample: int, fact: int | None) -> tuple[list[tuple[str, int]], int]:
        """The Fact dropdown's choices for ``sample`` (its facts and counts) and the fact to select: ``fact`` if
        the sample has it, else the sample's most probed fact."""
        counts = _data.probe_counts(self.probes, sample)
        choices = _data.fact_choices(_data.fact_table(self.ledger, sample), counts)
        if not choices:
            return [("(no ledger)" if self.ledger is None else f"(no facts in sample {sample})", NO_FACT)], NO_FACT
        picked = _data.pick_fact(fact, list(choices.values()), counts)
        return list(choices.items()), NO_FACT if picked is None else picked

    def _on_sample(self, change) -> None:
        current = None if self.fact.value == NO_FACT else self.fact.value
        options, value = self._fact_options(change["new"], current)
        self._quiet = True
        try:
            self.fact.options = options
            self.fact.value = value
        finally:
            self._quiet = False
        self.redraw(*self.out)

    @property
    def sample_probes(self):
        """The ``data.probe_frame`` rows of the selected sample."""
        return _data.sample_probes(self.probes, self.sample.value)

    # ------------------------------------------------------------------ data
    def _load_series(self, name: str, layer: int | None, sample: int):
        return _data.series(self.ds, name, layer, sample)

    def _load_attribution(self, fact: int, layer: int, sample: int):
        recalls = _data.fact_recalls(self.probes, fact, sample)
        return _data.recall_attribution(self.ds, recalls, layer)

    # ------------------------------------------------------------------ figures
    def figure(self, name: str):
        """The figure of one view for the current selection (a ``go.Figure``)."""
        ds, layer, segment, fact = self.ds, self.layer.value, self.segment.value, self.fact.value
        sample = self.sample.value
        fact_or_none = None if fact == NO_FACT else fact
        if name == "timeline":
            series = {n: self._series(n, None if "layer" not in ds[n].dims else layer, sample)
                      for n in _data.TIMELINE_VARS if n in ds}
            events = _data.fact_events(self.ledger, fact, sample) if fact_or_none is not None else None
            return timeline_figure(series, segment=segment, probes=self.sample_probes, fact_events=events,
                                   fact=fact_or_none, subtitle=f"layer {layer}", chance=self.chance)
        if name == "assoc":
            try:
                a, z, how = _data.memory_matrix(ds, segment, layer, sample)
            except _data.MemoryUnavailable as exc:
                return message_figure(f"Association matrix · segment {segment} · layer {layer}", str(exc))
            return assoc_figure(a, z, segment=segment, layer=layer, how=how)
        if name == "writes":
            try:
                writes = _data.segment_writes(ds, segment, layer, sample)
            except _data.MemoryUnavailable as exc:
                return message_figure(f"Write events · segment {segment} · layer {layer}", str(exc))
            return write_events_figure(writes, segment=segment, layer=layer)
        if name == "fact":
            if self.ledger is None or fact_or_none is None:
                return message_figure("Fact lifecycle", missing_facts(self.ledger, sample))
            attribution, message = self._attribution(fact, layer, sample)
            return fact_lifecycle_figure(_data.fact_events(self.ledger, fact, sample),
                                         _data.fact_recalls(self.probes, fact, sample), fact=fact,
                                         n_segments=_data.n_segments(ds), attribution=attribution, message=message,
                                         segment=segment, segment_size=segment_size(ds))
        if name == "stale":
            if (message := missing_probes(self.probes, sample)) is not None:
                return message_figure("Stale answers over time", message)
            return stale_answers_figure(self.sample_probes, n_segments=_data.n_segments(ds), segment=segment,
                                        fact=fact_or_none, chance=self.chance)
        if name == "layers":
            series = {n: self._layer_series(n, sample) for n in LAYER_COMPARISON_VARS if n in ds}
            return layer_comparison_figure(series, segment=segment)
        raise KeyError(f"unknown view {name!r}; expected one of {sorted(self.out)}")

    def redraw(self, *names: str) -> None:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is None:  # not in a kernel: nothing would show; figure() stays available
            return
        for name in names:
            out = self.out[name]
            fig = self.figure(name)
            if name in ("assoc", "writes", "fact", "stale"):
                fig.update_layout(width=620)
            out.clear_output(wait=True)
            with out:
                display(fig)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def explore(ds: xr.Dataset, **selection: Any):
    """An ipywidgets explorer of ``ds``: Layer/Segment sliders, Fact (and Sample) dropdowns and the dashboard's
    figures.

    Args:
        ds: a trace (``armt_viz.open_trace`` or ``armt_viz.record``).
        **selection: initial ``layer``, ``segment``, ``fact``, ``sample``.

    Returns:
        The explorer's ``ipywidgets.VBox`` (displayed when it is the cell's last expression).
    """
    return Explorer(ds, **selection).widget
