"""The Compare tab: the open trace (A) beside a second trace (B) of the same root, aligned by segment index
(``figures_compare.compare_figure``). B is chosen in the tab's own control and kept in the store (``compare``) so
deep links carry it; it goes through the same root confinement as the Trace control."""

from __future__ import annotations

import logging

import panel as pn

from .. import data as _data
from ..figures import message_figure
from ..figures_compare import COMPARE_VARS, compare_figure
from ..paths import TracePathError, resolve_trace
from . import loaders
from .views import TraceView

__all__ = ["CompareView"]

log = logging.getLogger(__name__)
_NONE = "— choose a second trace —"


class CompareView(TraceView):
    watch = ("version", "layer", "sample", "compare", "show_stale_mass")
    title = "Compare two runs"
    key = "compare"

    def __init__(self, **params):
        super().__init__(**params)
        names = self.store.available_traces()
        self._other = pn.widgets.Select(name="Compare with (B)", options={_NONE: "", **{n: n for n in names}},
                                        value=self.store.compare if self.store.compare in names else "",
                                        sizing_mode="stretch_width",
                                        description="The second run (B), drawn beside the open trace (A) and "
                                                    "subtracted from it, segment by segment.")
        self._other.param.watch(lambda e: setattr(self.store, "compare", e.new or ""), "value")
        self.store.param.watch(self._sync_widget, "compare")

    def _sync_widget(self, event) -> None:
        if self._other.value != event.new and event.new in self._other.options.values():
            self._other.value = event.new

    def _open_b(self):
        path = str(resolve_trace(self.store.trace_root, self.store.compare))
        stamp = loaders.stamp_of(path)
        return path, stamp, loaders.open_dataset(path, stamp)

    def figure(self):
        st = self.store
        if not st.compare:
            return message_figure(self.title, "Choose a second trace (B) above to compare it with the open one (A).")
        try:
            path_b, stamp_b, ds_b = self._open_b()
        except (TracePathError, FileNotFoundError) as exc:
            return message_figure(self.title, f"Cannot open trace B: {exc}")
        sample_b = min(st.sample, max(int(ds_b.sizes.get("sample", 1)) - 1, 0))
        layer_b = min(st.layer, max(_data.n_layers(ds_b) - 1, 0))

        def pick(path, stamp, ds, layer, sample):
            out = {}
            for name in COMPARE_VARS:
                if name in ds:
                    out[name] = loaders.load_series(path, stamp, name, layer if "layer" in ds[name].dims else None,
                                                    sample)
            if st.show_stale_mass:
                s, _ = loaders.load_stale_mass(path, stamp, layer, sample)
                if s is not None:
                    out["stale_mass"] = s
            return out

        series_a = pick(st.path, st.stamp, st.ds, st.layer, st.sample)
        series_b = pick(path_b, stamp_b, ds_b, layer_b, sample_b)
        probes_a = _data.sample_probes(loaders.load_probes(st.path, st.stamp), st.sample)
        probes_b = _data.sample_probes(loaders.load_probes(path_b, stamp_b), sample_b)
        return compare_figure(series_a, series_b, probes_a=probes_a, probes_b=probes_b,
                              chance_a=loaders.load_chance(st.path, st.stamp),
                              chance_b=loaders.load_chance(path_b, stamp_b),
                              labels=(f"A: {st.trace}", f"B: {st.compare}"), title=self.title,
                              subtitle=f"A = {st.trace} · B = {st.compare} · layer {st.layer} · aligned by segment")

    def __panel__(self):
        return pn.Column(self._other, super().__panel__(), sizing_mode="stretch_width")
