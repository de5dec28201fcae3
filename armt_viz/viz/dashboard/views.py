"""One Panel ``Viewer`` per dashboard view, each drawing a shared plotly builder from ``TraceStore`` state.

Views hold a ``store`` (``param.ClassSelector``), watch the store parameters they depend on, and replace their
Plotly pane's figure; they implement only the figure and ``__panel__`` (Panel's DataStore/View split). A view
that cannot draw (a summary-level trace, no ledger, a failing analysis) shows a message figure that says what is
needed instead of failing. Data comes from the memoised loaders, so a figure carries only what it draws.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

import panel as pn
import param
from panel.viewable import Viewer

from .. import data as _data
from ..figures import message_figure, missing_facts, missing_probes, segment_size
from ..figures_facts import fact_lifecycle_figure, stale_answers_figure
from ..figures_memory import assoc_figure, write_events_figure
from .._spec import move_segment_line
from ..explain import HOW_TO_READ
from ..figures_timeline import layer_comparison_figure, timeline_figure
from . import loaders
from .safe import public_message
from .store import NO_FACT, TraceStore

__all__ = ["TraceView", "TimelineView", "AssocView", "WritesView", "FactView", "StaleView", "LayersView", "VIEWS",
           "PLOTLY_CONFIG", "RelayoutPlotly", "merge_relayout", "x_axis_request"]

log = logging.getLogger(__name__)

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True,
                 "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines"],
                 "toImageButtonOptions": {"format": "png", "scale": 2}}
_X_AUTORANGE_KEY = re.compile(r"^xaxis\d*\.autorange$")
_X_RANGE_END_KEY = re.compile(r"^xaxis\d*\.range\[(0|1)\]$")
_X_RANGE_KEY = re.compile(r"^xaxis\d*\.range$")


def merge_relayout(pending: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Two plotly relayout deltas as one, in the order they were made: ``new``'s keys last, replacing ``pending``'s.

    A relayout message is a change, not a state: ``{"xaxis.autorange": True}`` followed by ``{"autosize": True}``
    still asks for the reset, so a delta that has not been handled yet must be merged with the next, not replaced.
    """
    merged = {k: v for k, v in pending.items() if k not in new}
    merged.update(new)
    return merged


def x_axis_request(relayout: Mapping[str, Any]) -> Literal["autorange"] | tuple[float, float] | None:
    """What a relayout delta asks of the x axes: ``"autorange"`` (reset), ``(x0, x1)`` (a range) or None.

    Keys are read in order and the last complete instruction wins, so a merged delta (``merge_relayout``) keeps
    the meaning of the latest request: a zoom after a reset is a zoom, a reset after a zoom is a reset. Only x-axis
    keys count (a y-axis autorange leaves the segment range alone); other keys (``autosize``, ``width``) are ignored.
    """
    request: Literal["autorange"] | tuple[float, float] | None = None
    ends: dict[int, float] = {}
    for key, value in relayout.items():
        if _X_AUTORANGE_KEY.match(key):
            if value:
                request, ends = "autorange", {}
        elif m := _X_RANGE_END_KEY.match(key):
            ends[int(m.group(1))] = float(value)
            if len(ends) == 2:
                request = (ends[0], ends[1])
        elif _X_RANGE_KEY.match(key) and isinstance(value, (list, tuple)) and len(value) == 2:
            request, ends = (float(value[0]), float(value[1])), {}
    return request


class RelayoutPlotly(pn.pane.Plotly):
    """``pn.pane.Plotly`` whose browser relayout deltas are merged while one waits to be handled, never dropped.

    Panel debounces property changes from the browser (50 ms, and for as long as the session is busy) and keeps
    only the last value of each property. ``relayout_data`` is a delta, and plotly sends ``{"autosize": True}``
    about 100 ms after every render (``Plots.resize``): a zoom or a double-click reset that came just before it was
    replaced by it and never reached the view (the flaky zoom-reset browser test). Here a change that arrives
    while an earlier one is pending is merged with it (``merge_relayout``). ``_server_change`` and ``_events`` are
    Panel internals (Panel's own ``Tabs`` overrides the same hook); tests/ui's zoom test fails if they change.
    """

    def _server_change(self, doc, ref, subpath, attr, old, new) -> None:
        pending = self._events.get(attr) if attr == "relayout_data" and not subpath else None
        if isinstance(pending, Mapping) and isinstance(new, Mapping):
            new = merge_relayout(pending, new)
        super()._server_change(doc, ref, subpath, attr, old, new)


def _inside_window(fig, segment: int) -> bool:
    """False when the figure drew only a window of its events and ``segment`` left it (then it is rebuilt)."""
    meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    window = meta.get("segment_window")
    return window is None or window[0] <= segment <= window[1]


class _ForceRedraw:
    """An event-like marker: redraw even though the selection did not change (data became ready)."""

    name = "force"


class TraceView(Viewer):
    """Base view: a Plotly pane redrawn when any of ``watch`` (store parameters) changes."""

    store = param.ClassSelector(class_=TraceStore, doc="The session's trace store and selection.")
    watch: tuple[str, ...] = ("version",)
    title = "view"
    key = ""  # name in explain.HOW_TO_READ and in build_app's views
    segment_moves_line = False  # True: a Segment change only moves the figure's rule (no rebuild)

    def __init__(self, **params):
        super().__init__(**params)
        # link_figure: moving the Segment rule is sent as a plotly relayout message, not a new figure
        self.pane = RelayoutPlotly(None, config=PLOTLY_CONFIG, sizing_mode="stretch_width", link_figure=True)
        self._drawn: tuple | None = None  # the selection the figure shows (see _selection)
        self.store.param.watch(self._redraw, list(self.watch))
        self._redraw()

    def figure(self):
        raise NotImplementedError

    def _selection(self) -> tuple:
        """The store state this view draws: its watched parameters and the open trace."""
        st = self.store
        return (st.path, st.stamp, *(getattr(st, name) for name in self.watch if name != "version"))

    def _redraw(self, *events) -> None:
        st = self.store
        fig = self.pane.object
        selection = self._selection()
        if events and selection == self._drawn and all(getattr(e, "name", None) not in ("version", "force")
                                                       for e in events):
            return  # already drawn (a new sample's fact was chosen, and drawn, before the sample event came)
        if (self.segment_moves_line and events and fig is not None and st.ds is not None
                and all(getattr(e, "name", None) == "segment" for e in events)
                and _inside_window(fig, st.segment) and move_segment_line(fig, st.segment)):
            self._drawn = selection
            return
        if st.ds is None:
            fig = message_figure(self.title, "No trace open" + (" (see the message in the sidebar)."
                                                                if st.status else ": choose one in the sidebar."))
        else:
            try:
                fig = self.figure()
            except Exception as exc:  # keep serving; say what broke
                log.exception("%s failed", type(self).__name__)
                text = public_message(f"{type(exc).__name__}: {exc or 'no message'}", st.trace_root)
                fig = message_figure(self.title, f"Could not draw this view: {text}")
        self.pane.height = int(fig.layout.height or 400)
        self.pane.object = fig
        self._drawn = selection

    def _chance(self):
        """The open trace's chance baseline per probe, or None while it is computed in the background (the view
        redraws when it is ready)."""
        st = self.store
        doc = pn.state.curdoc
        key = (st.path, st.stamp)

        def done():
            if doc is not None and (self.store.path, self.store.stamp) == key:
                doc.add_next_tick_callback(lambda: self._redraw(_ForceRedraw))
        ready, chance = loaders.chance_async(st.path, st.stamp, done)
        return chance if ready else None

    def __panel__(self):
        how = HOW_TO_READ.get(self.key)
        parts = [self.pane]
        if how:  # plain text (escaped by Panel), never Markdown/HTML
            parts.append(pn.widgets.StaticText(value=how, sizing_mode="stretch_width", css_classes=["armt-how"],
                                               margin=(0, 10, 4, 10)))
        return pn.Column(*parts, sizing_mode="stretch_width", css_classes=["armt-card"])


def _stale_note(progress) -> str:
    if progress is None or not progress[1]:
        return "computing the stale mass (every layer, cached beside the trace)…"
    done, total = progress
    return f"computing the stale mass: {done:,} / {total:,} segments ({100 * done / total:.0f} %)…"


class TimelineView(TraceView):
    """The run timeline; zooming re-aggregates the visible range, clicking a segment selects it."""

    key = "timeline"
    segment_moves_line = True

    watch = ("version", "layer", "segment", "fact", "x_range", "show_stale_mass", "sample")
    title = "Run timeline"
    n_pixels = param.Integer(default=900, bounds=(50, 4000), doc="Pixel columns (buckets) of the timeline.")

    def __init__(self, **params):
        super().__init__(**params)
        # onlychanged=False: a request equal to the last one (the same reset twice) is still a request
        self.pane.param.watch(self._on_relayout, "relayout_data", onlychanged=False)
        self.pane.param.watch(self._on_click, "click_data")

    def figure(self):
        st = self.store
        series = {}
        for name in _data.TIMELINE_VARS:
            if name in st.ds:
                layer = None if "layer" not in st.ds[name].dims else st.layer
                series[name] = loaders.load_series(st.path, st.stamp, name, layer, st.sample)
        probes = _data.sample_probes(loaders.load_probes(st.path, st.stamp), st.sample)
        events = None
        if st.fact != NO_FACT:
            events = _data.fact_events(loaders.load_ledger(st.path, st.stamp), st.fact, st.sample)
        stale, note = (None, None)
        if st.show_stale_mass:
            ready = loaders.stale_mass_async((st.path, st.stamp, st.layer, st.sample), self._stale_progress())
            stale, note = ready if ready is not None else (None, _stale_note(loaders.stale_progress(st.path, st.stamp)))
        sub = f"layer {st.layer}" + (f" · {note}" if note else "")
        if st.x_range is not None:
            sub += f" · segments {st.x_range[0]:,.0f}–{st.x_range[1]:,.0f} (double-click to reset)"
        return timeline_figure(series, x_range=st.x_range, n_pixels=self.n_pixels, segment=st.segment,
                               probes=probes, fact_events=events, fact=None if st.fact == NO_FACT else st.fact,
                               stale_mass=stale, subtitle=sub, chance=self._chance())

    def _stale_progress(self):
        """Redraw (with the progress in the subtitle, then the overlay) while this trace's stale mass computes."""
        doc, trace = pn.state.curdoc, (self.store.path, self.store.stamp)

        def tick():
            st = self.store
            if doc is not None and st.show_stale_mass and (st.path, st.stamp) == trace:
                doc.add_next_tick_callback(self._redraw)
        return tick

    def _on_relayout(self, event) -> None:
        request = x_axis_request(event.new or {})
        if request is None:
            return
        if request == "autorange":
            self.store.x_range = None
            return
        lo, hi = sorted((request[0] + 0.5, request[1] - 0.5))
        n = self.store.n_segments
        lo, hi = max(lo, 0.0), min(hi, float(n - 1))
        if hi - lo < 2:
            return
        new = (lo, hi)
        if self.store.x_range is None or max(abs(a - b) for a, b in zip(new, self.store.x_range)) > 0.25:
            self.store.x_range = new

    def _on_click(self, event) -> None:
        points = (event.new or {}).get("points") or []
        if points and points[0].get("x") is not None:
            seg = int(round(float(points[0]["x"])))
            lo, hi = self.store.param.segment.bounds
            self.store.segment = min(max(seg, lo), hi)


class AssocView(TraceView):
    key = "assoc"
    watch = ("version", "layer", "segment", "sample")
    title = "Association matrix"

    def figure(self):
        st = self.store
        a, z, how = loaders.load_memory(st.path, st.stamp, st.segment, st.layer, st.sample)
        if a is None:
            return message_figure(f"Association matrix · segment {st.segment} · layer {st.layer}", how)
        return assoc_figure(a, z, segment=st.segment, layer=st.layer, how=how)


class WritesView(TraceView):
    key = "writes"
    watch = ("version", "layer", "segment", "sample")
    title = "Write events"

    def figure(self):
        st = self.store
        writes, message = loaders.load_writes(st.path, st.stamp, st.segment, st.layer, st.sample)
        if writes is None:
            return message_figure(f"Write events · segment {st.segment} · layer {st.layer}", message)
        return write_events_figure(writes, segment=st.segment, layer=st.layer)


class FactView(TraceView):
    key = "fact"
    segment_moves_line = True
    watch = ("version", "fact", "layer", "segment", "sample")
    title = "Fact lifecycle"
    max_recalls = param.Integer(default=12, bounds=(1, 200), doc="Recalls of the fact to attribute.")

    def figure(self):
        st = self.store
        ledger = loaders.load_ledger(st.path, st.stamp)
        if ledger is None or st.fact == NO_FACT:
            return message_figure("Fact lifecycle", missing_facts(ledger, st.sample))
        recalls = _data.fact_recalls(loaders.load_probes(st.path, st.stamp), st.fact, st.sample)
        key = (st.path, st.stamp, st.fact, st.layer, self.max_recalls, st.sample)
        ready = loaders.attribution_async(key, self._attribution_ready(key))
        if ready is None:
            n = min(self.max_recalls, len(recalls))
            attribution, message = None, f"Attributing {n} recalls of fact {st.fact} over all earlier writes…"
        else:
            attribution, message = ready
        if message and "writes-level" in message:
            message = "Attribution of recalls needs a writes-level trace (record with level='writes')."
        return fact_lifecycle_figure(_data.fact_events(ledger, st.fact, st.sample), recalls, fact=st.fact,
                                     n_segments=st.n_segments, attribution=attribution, message=message,
                                     segment=st.segment, segment_size=segment_size(st.ds))


    def _attribution_ready(self, key):
        doc = pn.state.curdoc

        def done():
            st = self.store
            if doc is not None and key == (st.path, st.stamp, st.fact, st.layer, self.max_recalls, st.sample):
                doc.add_next_tick_callback(self._redraw)
        return done


class StaleView(TraceView):
    key = "stale"
    segment_moves_line = True
    watch = ("version", "fact", "segment", "sample")
    title = "Stale answers over time"

    def figure(self):
        st = self.store
        probes = loaders.load_probes(st.path, st.stamp)
        if (message := missing_probes(probes, st.sample)) is not None:
            return message_figure(self.title, message)
        fig = stale_answers_figure(_data.sample_probes(probes, st.sample), n_segments=st.n_segments,
                                   segment=st.segment, fact=None if st.fact == NO_FACT else st.fact,
                                   chance=self._chance())
        return fig


class LayersView(TraceView):
    key = "layers"
    segment_moves_line = True
    watch = ("version", "segment", "x_range", "sample")
    title = "Layer comparison"
    names = ("assoc_norm", "write_gate_mean", "correction_mean", "read_out_norm_mean")

    def figure(self):
        st = self.store
        series = {n: loaders.load_layer_series(st.path, st.stamp, n, st.sample) for n in self.names if n in st.ds}
        return layer_comparison_figure(series, x_range=st.x_range, segment=st.segment,
                                       subtitle="every layer (bucket means), same segment range as the timeline")


VIEWS = (TimelineView, AssocView, WritesView, FactView, StaleView, LayersView)
