"""``TraceStore``: the dashboard's data store and selection (Panel DataStore/View split, STYLE.md rule 20).

One store per browser session. It owns the selection (trace, sample, layer, segment, fact, visible segment range)
as ``param`` parameters, makes its widgets per instance (labels ``Trace``, ``Layer``, ``Segment``, ``Fact``, and
``Sample`` when the trace has more than one), and opens traces through ``paths.resolve_trace`` only: a name that
resolves outside the trace root (``..``, symlinks, absolute paths) is refused and never opened. Views read data
through the memoised loaders with the store's ``path`` and ``stamp`` as keys, so sessions share loaded data but
never each other's selection.
"""

from __future__ import annotations

import html
import logging
import os

import numpy as np
import panel as pn
import param
import xarray as xr
from panel.viewable import Viewer

from .. import data as _data
from ..export import export_zip, selection_subset
from ..explain import CONTROL_HELP, decode_tokens, range_warning, special_tokens_of
from ..paths import TracePathError, list_traces, resolve_trace
from . import loaders
from .safe import escape, public_message, text_html, text_pane
from .urlstate import TABS

__all__ = ["TraceStore"]

log = logging.getLogger(__name__)
NO_FACT = -1
NO_TRACE_LABEL = "— no trace —"
LIVE_PERIOD_MS = 2000  # how often a served session looks for new commits of the open trace


def _clamp(value, high: int) -> int:
    return int(min(max(int(value), 0), max(high, 0)))


def plain_text(value, **kw):
    """A text pane that shows ``value`` (a string, or a ``pn.bind`` of one) as text: HTML-escaped, never
    interpreted as HTML or Markdown."""
    escaped = pn.bind(lambda v: html.escape(str(v or "")), value) if callable(value) else html.escape(str(value))
    return pn.widgets.StaticText(value=escaped, sizing_mode="stretch_width",
                                 styles={"font-size": "0.85em", "color": "#3C4043"}, **kw)


def _data_notice(ds) -> str:
    """What the reader should know about the data of a trace that opened: skipped chunks of an older store, or a
    timeline with no finite value (drawn blank otherwise)."""
    notes = []
    if ds.attrs.get("missing_chunks"):
        notes.append(f"{int(ds.attrs['missing_chunks'])} chunk files of this trace are absent; an older store may "
                     "skip chunks that hold only the fill value, so those rows show as NaN.")
    try:
        names = [n for n in _data.TIMELINE_VARS if n in ds]
        head = {"sample": 0, "segment": slice(0, 4096)}  # a bounded look: the first 4096 segments
        if names and int(ds.sizes.get("segment", 0)) and not any(
                bool(np.isfinite(np.asarray(ds[n].isel(head).values, dtype=float)).any()) for n in names[:3]):
            notes.append(f"This trace holds no finite values in {', '.join(names[:3])} (all NaN or Inf, first "
                         "4096 segments): the figures are blank. Record again with check_finite=True to find where "
                         "the values broke.")
    except Exception:  # the notice is a courtesy; the views report real errors
        pass
    return "\n".join(notes)


class TraceStore(Viewer):
    """The selection and the open trace of one dashboard session.

    Args:
        trace_root: folder whose traces may be listed and opened (nothing outside it is).
        trace: root-relative name of the trace to open (default: the most recently written one).
    """

    trace_root = param.String(default=".", constant=True, doc="Folder of the traces this store may open.")
    trace = param.String(default="", doc=CONTROL_HELP["trace"])
    layer = param.Integer(default=0, bounds=(0, 0), doc=CONTROL_HELP["layer"])
    segment = param.Integer(default=0, bounds=(0, 0), doc=CONTROL_HELP["segment"])
    fact = param.Integer(default=NO_FACT, doc=CONTROL_HELP["fact"])
    sample = param.Integer(default=0, bounds=(0, 0), doc=CONTROL_HELP["sample"])
    tab = param.Selector(default="memory", objects=list(TABS), doc="The tab shown under the timeline.")
    compare = param.String(default="", doc="Root-relative name of the second trace of the Compare tab.")
    x_range = param.Tuple(default=None, length=2, allow_None=True,
                          doc="Visible segment range of the timeline (None = whole run).")
    show_stale_mass = param.Boolean(default=False, doc=CONTROL_HELP["stale"])
    status = param.String(default="", doc="Message about the last refused or failed trace.")
    notice = param.String(default="", doc="Information about the open trace (opening, ignored URL values, no data).")
    path = param.String(default="", doc="Real path of the open trace (inside the root).")
    stamp = param.Integer(default=0, doc="Commit stamp of the open trace (cache key).")
    version = param.Event(doc="Fires after a trace was opened (views rebuild).")

    def __init__(self, **params):
        trace = params.pop("trace", None)
        # a deep link's selection (urlstate.query_to_state), applied once its trace is open
        self._initial: dict = dict(params.pop("initial", None) or {})
        super().__init__(**params)
        self.ds: xr.Dataset | None = None
        self._opening: tuple | None = None  # (name, path, stamp) of a trace being opened in the background
        self._deferred: dict = {}  # URL selection values waiting for that trace
        self._follow_ends: set[int] = set()  # last segments a live view followed (see `refresh`)
        names = self.available_traces()
        self._trace_select = pn.widgets.Select(label="Trace", options={NO_TRACE_LABEL: "", **{n: n for n in names}},
                                               value="", sizing_mode="stretch_width",
                                               description=CONTROL_HELP["trace"])
        # each of Layer and Segment: a labelled number box (type a value; a <label> names it) and a slider
        self._layer = pn.widgets.IntInput.from_param(self.param.layer, label="Layer", width=96)
        self._layer_slider = pn.widgets.IntSlider.from_param(self.param.layer, label="", show_value=False,
                                                             sizing_mode="stretch_width", margin=(36, 10, 5, 12))
        self._segment = pn.widgets.IntInput.from_param(self.param.segment, label="Segment", width=96)
        self._segment_slider = pn.widgets.IntSlider.from_param(self.param.segment, label="", show_value=False,
                                                               sizing_mode="stretch_width", margin=(36, 10, 5, 12))
        self._sample = pn.widgets.Select(label="Sample", options={"0": 0}, value=0, visible=False,
                                         sizing_mode="stretch_width", description=CONTROL_HELP["sample"])
        self._fact = pn.widgets.Select(label="Fact", options={"(no ledger)": NO_FACT}, sizing_mode="stretch_width",
                                       description=CONTROL_HELP["fact"])
        self._stale = pn.widgets.Checkbox.from_param(self.param.show_stale_mass,
                                                     label="Show stale mass on the timeline")
        self._stale_help = pn.widgets.TooltipIcon(value=(
            "Surviving stale mass (origin view): the part of the memory that superseded versions' values still "
            "contribute after the delta rule erased along their keys, over |A|. The per-write view (the sum of "
            "what superseded writes added) ignores that erasure and reports stale mass for a memory that holds "
            "no trace of an old value. The fact lifecycle's stale shares use the origin view too."))
        self._export = pn.widgets.FileDownload(callback=self._export_selection, filename="selection.zarr.zip",
                                               label="Export selection (zarr, zipped)",
                                               sizing_mode="stretch_width", description=CONTROL_HELP["export"])
        self._trace_select.param.watch(lambda e: setattr(self, "trace", e.new or ""), "value")
        self._fact.param.watch(lambda e: setattr(self, "fact", NO_FACT if e.new is None else int(e.new)), "value")
        self._sample.param.watch(lambda e: setattr(self, "sample", int(e.new)), "value")
        self.param.watch(self._on_trace, "trace")
        # registered before any view's watcher: a new sample's fact is chosen before the views redraw
        self.param.watch(self._on_sample, "sample")
        self.param.watch(self._sync_fact_widget, "fact")
        self.param.watch(self._update_filename, ["trace", "layer", "segment"])
        first = trace if trace is not None else self._initial.get("trace") or self._default_trace()
        if first:
            self.trace = first  # the initial selection applies once it is open (maybe in the background)
        else:
            self._initial = {}

    # ------------------------------------------------------------------ traces
    def available_traces(self) -> list[str]:
        """Root-relative names of the traces under the root (nothing outside it)."""
        try:
            return list_traces(self.trace_root)
        except FileNotFoundError as exc:
            self.status = str(exc)
            return []

    def _default_trace(self) -> str:
        names = [n for n in self._trace_select.options.values() if n]
        if not names:
            return ""
        root = os.path.realpath(self.trace_root)
        # the most recently committed trace; a symlinked alias loses ties to its target
        return max(names, key=lambda n: (loaders.stamp_of(os.path.join(root, n)),
                                         not os.path.islink(os.path.join(root, n))))

    def _on_trace(self, event) -> None:
        name = event.new
        self._opening = None
        if not name:
            self._close()
            return
        try:
            path = str(resolve_trace(self.trace_root, name))
        except TracePathError as exc:
            log.warning("refused trace %r: %s", name[:80], exc)
            self._fail(str(exc))
            return
        stamp = loaders.stamp_of(path)
        if loaders.open_in_background() and not loaders.is_open(path, stamp):
            # off the event loop, with a time limit: a slow or hostile trace never holds up other sessions
            self._opening = token = (name, path, stamp)
            self.notice = f"Opening {name}…"
            doc = pn.state.curdoc

            def done(result):
                doc.add_next_tick_callback(lambda: self._opened(token, result))

            loaders.open_async(path, stamp, done)
            doc.add_timeout_callback(lambda: self._open_timed_out(token), int(loaders.OPEN_TIMEOUT_S * 1000))
            return
        try:
            ds = loaders.open_dataset(path, stamp)
        except Exception as exc:  # a corrupted, foreign or hostile store: say so, keep serving
            self._fail_open(name, exc)
            return
        self._apply(name, path, stamp, ds)

    def _opened(self, token, result) -> None:
        if self._opening != token:
            return  # another trace was chosen meanwhile, or the open timed out
        self._opening = None
        name, path, stamp = token
        if isinstance(result, BaseException):
            self._fail_open(name, result)
        else:
            self._apply(name, path, stamp, result)

    def _open_timed_out(self, token) -> None:
        if self._opening != token:
            return
        self._opening = None
        self._fail(f"Cannot open {token[0]!r}: opening it took longer than {loaders.OPEN_TIMEOUT_S:g} s (a very "
                   "large trace, a slow disk, or a damaged store); try again later")

    def _fail_open(self, name: str, exc: BaseException) -> None:
        log.warning("cannot open trace %r: %s: %s", name[:80], type(exc).__name__, exc)
        what = str(exc) or {"MemoryError": "the server ran out of memory while opening it"}.get(
            type(exc).__name__, "no message")
        self._fail(f"Cannot open {name[:80]!r}: {type(exc).__name__}: {what}")

    def _fail(self, message: str) -> None:
        message = public_message(message, self.trace_root)
        self.notice = ""
        self.status = message[:1].upper() + message[1:]
        self._close()

    def _apply(self, name: str, path: str, stamp: int, ds) -> None:
        self.ds = ds
        with param.parameterized.batch_call_watchers(self):
            self.status = ""
            self.notice = _data_notice(ds)
            self.path, self.stamp = path, stamp
            n_layer, n_seg = max(_data.n_layers(ds), 1), max(_data.n_segments(ds), 1)
            n_sample = max(int(ds.sizes.get("sample", 1)), 1)
            self.param.layer.bounds = (0, n_layer - 1)
            self.param.segment.bounds = (0, n_seg - 1)
            self.param.sample.bounds = (0, n_sample - 1)
            want = self._initial if self._initial.get("trace", name) == name else {}
            ignored = list(want.get("ignored", []))
            for key, n in (("layer", n_layer), ("sample", n_sample), ("segment", n_seg)):
                if key in want and not 0 <= int(want[key]) <= n - 1:
                    ignored.append(f"{key}={str(want[key])[:40]!r} (this trace has 0-{n - 1})")
            if ignored:
                self.notice = ((self.notice + "\n") if self.notice else "") + "Ignored URL value" + \
                    ("s " if len(ignored) > 1 else " ") + ", ".join(ignored) + \
                    ": expected whole numbers within the trace's range."
            # a switch keeps what still applies (layer, sample) and resets the rest (segment, zoom)
            self.layer = _clamp(want.get("layer", self.layer), n_layer - 1)
            self.sample = _clamp(want.get("sample", self.sample), n_sample - 1)
            # a trace still being recorded opens on its growing end, which the view then follows (refresh);
            # a finished one on its most informative segment
            live = not int(ds.attrs.get("complete", 1))
            self.segment = (_clamp(want["segment"], n_seg - 1) if "segment" in want
                            else n_seg - 1 if live else self.informative_segment(ds, path, stamp, self.sample))
            self._follow_ends = {n_seg - 1} if live and self.segment == n_seg - 1 else set()
            zoom = want.get("zoom")
            self.x_range = (tuple(float(v) for v in zoom) if zoom is not None and 0 <= zoom[0] < zoom[1] <= n_seg - 1
                            else None)
            if want.get("tab") in TABS:
                self.tab = want["tab"]
            if want.get("compare") is not None:
                self.compare = want["compare"]
        self._set_control(self._layer, self._layer_slider, n_layer, self.layer)
        self._set_control(self._segment, self._segment_slider, n_seg, self.segment)
        self._sample.param.update(options={str(i): i for i in range(n_sample)}, value=self.sample,
                                  visible=n_sample > 1)
        if self._trace_select.value != name:
            self._trace_select.value = name if name in self._trace_select.options.values() else ""
        self._refresh_facts()
        self._initial = {}  # the URL's selection applied to the trace it named; a later switch starts fresh
        self.param.trigger("version")
        if self._deferred:
            deferred, self._deferred = self._deferred, {}
            self.apply_url_values(deferred)

    def apply_url_values(self, values: dict) -> None:
        """Selection values from the page URL that could not be applied at once (the location sync's
        ``on_error``): applied one by one once the trace is open; a value that does not fit is named in the
        notice instead of being dropped without a word."""
        values = dict(values)
        trace = values.pop("trace", None)
        if trace is not None and trace != self.trace:
            self.trace = str(trace)
        if self._opening is not None:
            self._deferred.update(values)
            return
        refused = []
        for key, value in values.items():
            if key not in ("sample", "layer", "segment", "fact"):
                continue
            try:
                if key == "fact":
                    self.fact = int(value)
                else:
                    setattr(self, key, int(value))
            except Exception:
                lo, hi = self.param[key].bounds if key != "fact" else (None, None)
                rng = f" (this trace has {lo}-{hi})" if lo is not None and self.ds is not None else ""
                refused.append(f"{key}={str(value)[:40]!r}{rng}")
        if refused:
            note = "Ignored URL value" + ("s " if len(refused) > 1 else " ") + ", ".join(refused) + \
                ": expected whole numbers within the trace's range."
            self.notice = (self.notice + "\n" if self.notice else "") + note

    # ------------------------------------------------------------------ live traces
    def refresh(self) -> bool:
        """Follow traces being recorded: offer traces that appeared under the root, and when the open trace has
        committed more segments (its commit stamp changed), reopen its committed prefix keeping the selection (a
        view on the last segment follows the new last one). Returns True when the open trace grew.
        Called every ``LIVE_PERIOD_MS`` by a served session."""
        names = self.available_traces()
        known = [v for v in self._trace_select.options.values() if v]
        if names != known:
            self._trace_select.options = {NO_TRACE_LABEL: "", **{n: n for n in names}}
        if not self.path:
            return False
        stamp = loaders.stamp_of(self.path)
        if stamp == self.stamp:
            # a followed view that a stale browser echo put back on an earlier end returns to the end
            if self.segment in self._follow_ends and self.segment != self.n_segments - 1:
                self.segment = self.n_segments - 1
            return False
        try:
            ds = loaders.open_dataset(self.path, stamp)
        except Exception as exc:  # a half-written commit: try again next time
            log.info("could not reopen %s yet: %s", self.trace, exc)
            return False
        old_n = self.n_segments
        n_seg = max(_data.n_segments(ds), 1)
        # following: on the last segment, or on an end this view followed before. After a range change the
        # browser's widgets can send back the value they held, an earlier end (seen under load: the view
        # stuck on segment 31 of a growing trace); a view the user moved elsewhere stops following.
        following = self.segment >= old_n - 1 or self.segment in self._follow_ends
        self._follow_ends = (self._follow_ends | {old_n - 1, n_seg - 1}) if following else set()
        value = n_seg - 1 if following else self.segment
        self.ds = ds
        # widen the controls first: a widget refuses a value beyond its end
        self.param.segment.bounds = (0, n_seg - 1)
        self._set_control(self._segment, self._segment_slider, n_seg, value)
        self.stamp = stamp
        self.segment = value
        self._refresh_facts()
        self.param.trigger("version")
        return n_seg != old_n

    @staticmethod
    def _set_control(box, slider, n: int, value: int) -> None:
        """A control's number box and slider get the range 0..n-1 and `value`, each in ONE update: a browser
        slider whose range changes on its own re-sends the value it held, and that stale echo, arriving after the
        new value, put a followed live view back on an old last segment (seen under load)."""
        box.param.update(start=0, end=n - 1, value=value)
        slider.param.update(start=0, end=max(n - 1, 1), value=value, disabled=n < 2)

    @staticmethod
    def informative_segment(ds, path: str, stamp: int, sample: int = 0) -> int:
        """Where a fresh view opens: the segment of the most recent answered probe (a recall whose outcome is
        known) in ``sample``, else the last segment (memory at its fullest), never an empty memory at 0."""
        n = max(_data.n_segments(ds), 1)
        try:
            probes = _data.sample_probes(loaders.load_probes(path, stamp), sample)
        except Exception:  # no probes table: fall back to the last segment
            probes = None
        if probes is not None and len(probes):
            answered = probes[(probes["fact_id"] >= 0) & (probes["outcome"] != "pending")]
            if len(answered):
                return _clamp(answered["segment"].max(), n - 1)
        return n - 1

    def view_state(self) -> dict:
        """The selection as a deep-link state (``urlstate``): trace, sample, layer, segment, fact, tab, zoom,
        compare."""
        return {"trace": self.trace or None, "sample": self.sample, "layer": self.layer, "segment": self.segment,
                "fact": self.fact, "tab": self.tab, "zoom": self.x_range, "compare": self.compare or None}

    def _close(self) -> None:
        self.ds = None
        self._opening = None
        if self._trace_select.value != "":
            self._trace_select.value = ""
        with param.parameterized.batch_call_watchers(self):
            self.path, self.stamp = "", 0
            if self.trace:
                self.trace = ""
        self._fact.options = {"(no trace)": NO_FACT}
        self.param.trigger("version")

    # ------------------------------------------------------------------ facts
    def fact_options(self) -> dict[str, int]:
        """The Fact control's choices: the facts of the selected sample, with that sample's counts of writes,
        queries and probed recalls (fact ids are per sample)."""
        if not self.path:
            return {"(no trace)": NO_FACT}
        if loaders.load_ledger(self.path, self.stamp) is None:
            return {"(no ledger)": NO_FACT}
        table = loaders.load_fact_table(self.path, self.stamp, self.sample)
        counts = _data.probe_counts(loaders.load_probes(self.path, self.stamp), self.sample)
        return _data.fact_choices(table, counts) or {f"(no facts in sample {self.sample})": NO_FACT}

    def _refresh_facts(self) -> None:
        """Offer the selected sample's facts; keep the selected fact if that sample has it, else select the
        sample's most probed fact."""
        opts = self.fact_options()
        available = [v for v in opts.values() if v != NO_FACT]
        counts = (_data.probe_counts(loaders.load_probes(self.path, self.stamp), self.sample) if available
                  else None)
        wanted = self._initial.get("fact") if self._initial.get("trace", self.trace) == self.trace else None
        picked = (wanted if wanted in available else NO_FACT if wanted == NO_FACT
                  else _data.pick_fact(self.fact, available, counts))
        fact = NO_FACT if picked is None else picked
        # options and value in one update: a Select given options without its value resets it to the first
        self._fact.param.update(options=opts, value=fact if fact in opts.values() else next(iter(opts.values())))
        self.fact = fact

    def _on_sample(self, *_) -> None:
        """A new sample: show it in the Sample control and offer its facts."""
        if self._sample.value != self.sample and self.sample in self._sample.options.values():
            self._sample.value = self.sample
        if self.ds is not None:
            self._refresh_facts()

    def _sync_fact_widget(self, *_) -> None:
        if self.fact in self._fact.options.values() and self._fact.value != self.fact:
            self._fact.value = self.fact

    # ------------------------------------------------------------------ export
    def _update_filename(self, *_) -> None:
        stem = os.path.basename(self.trace.rstrip("/")).removesuffix(".zarr") or "selection"
        self._export.filename = f"{stem}__seg{self.segment}__layer{self.layer}.zarr.zip"

    def _export_selection(self):
        if self.ds is None:
            self.status = "Nothing to export: no trace is open."
            return None
        try:
            tree = selection_subset(self.ds, segment=self.segment, layer=self.layer,
                                    fact=None if self.fact == NO_FACT else self.fact, x_range=self.x_range,
                                    sample=self.sample, trace_name=self.trace)
            return export_zip(tree, name=self._export.filename.removesuffix(".zip"))
        except Exception as exc:  # missing or unreadable data is refused, and said so
            log.warning("export of %r failed: %s: %s", self.trace[:80], type(exc).__name__, exc)
            self.status = public_message(f"Export refused: {type(exc).__name__}: {exc or 'no message'}",
                                         self.trace_root)
            return None

    # ------------------------------------------------------------------ panel
    @property
    def n_segments(self) -> int:
        return _data.n_segments(self.ds) if self.ds is not None else 0

    # ------------------------------------------------------------------ text of the selection
    def segment_text(self) -> str:
        """The selected segment's tokens, decoded with the task's vocabulary (plain text)."""
        if self.ds is None or "tokens" not in self.ds:
            return ""
        special = special_tokens_of(self.ds.attrs)
        tokens = _data.segment_tokens(self.ds, self.segment, self.sample)
        return f"Segment {self.segment:,} tokens: {decode_tokens(tokens, special) or '(none)'}"

    def query_text(self) -> str:
        """The selected fact's probed query nearest before (or at) the selected segment: its segment's tokens
        with the probed token in brackets, the model's prediction and the true next token."""
        if self.ds is None or self.fact == NO_FACT or "tokens" not in self.ds:
            return ""
        recalls = _data.fact_recalls(loaders.load_probes(self.path, self.stamp), self.fact, self.sample)
        if recalls.empty:
            return f"Fact {self.fact}: no probed query."
        before = recalls[recalls["segment"] <= self.segment]
        row = (before if len(before) else recalls).sort_values("segment").iloc[-1 if len(before) else 0]
        seg = int(row["segment"])
        start = int(self.ds["segment_start"].values[seg]) if "segment_start" in self.ds else None
        size = int(self.ds.sizes.get("position", 0))
        special = special_tokens_of(self.ds.attrs)
        mark = int(row["token"]) - start if start is not None else int(row["token"]) % max(size, 1)
        text = decode_tokens(_data.segment_tokens(self.ds, seg, self.sample), special, mark=mark)
        word = lambda t: decode_tokens([t], special) if t >= 0 else "?"  # noqa: E731
        return (f"Probed query of fact {self.fact} at segment {seg:,}: {text} — predicted {word(int(row['prediction']))}"
                f", next token {word(int(row['expected']))} ({row['outcome']})")

    def range_text(self) -> str:
        """The training-range warning of the open trace ('' when within range or unknown)."""
        if self.ds is None:
            return ""
        return range_warning(self.ds.attrs, self.n_segments) or ""

    def info(self) -> str:
        """A short description of the open trace, as escaped HTML (names and attributes are data)."""
        if self.ds is None:
            return text_html("No trace open." if self.status else "No trace open: choose one above.")
        ds = self.ds
        n_tok = int(np.asarray(ds["segment_length"].values).sum()) if "segment_length" in ds else None
        lines = [f"<b>{escape(self.trace)}</b>",
                 f"level <code>{escape(_data.trace_level(ds))}</code> · {_data.n_segments(ds):,} segments"
                 + (f" · {n_tok:,} tokens" if n_tok else "") + f" · {_data.n_layers(ds)} layers",
                 f"{int(ds.sizes.get('probe', 0)):,} probes · {int(ds.sizes.get('event', 0)):,} ledger events"]
        if not int(ds.attrs.get("complete", 1)):
            lines.append("<i>recording in progress: showing the committed prefix</i>")
        return '<div style="font-size:0.85em;color:#3C4043">' + "".join(f"<p>{x}</p>" for x in lines) + "</div>"

    def controls(self) -> pn.Column:
        """The sidebar: the labelled selection controls (Sample only for a multi-sample trace), export and
        status."""
        info = pn.pane.HTML(pn.bind(lambda *_: self.info(), self.param.version, self.param.status),
                            sizing_mode="stretch_width")
        # the status (warning) and the notice (information): text, never markup (safe.py)
        alert = pn.Column(text_pane(self.param.status, "warning"), text_pane(self.param.notice, "info"),
                          sizing_mode="stretch_width")
        watched = (self.param.version, self.param.segment, self.param.fact, self.param.sample)
        tokens = plain_text(pn.bind(lambda *_: self.segment_text(), *watched), css_classes=["armt-tokens"])
        query = plain_text(pn.bind(lambda *_: self.query_text(), *watched), css_classes=["armt-tokens"])
        return pn.Column(self._trace_select, self._sample,
                         pn.Row(self._layer, self._layer_slider, sizing_mode="stretch_width"),
                         pn.Row(self._segment, self._segment_slider, sizing_mode="stretch_width"), self._fact,
                         pn.Row(self._stale, self._stale_help),
                         tokens, query, pn.layout.Divider(), self._export, alert, info,
                         sizing_mode="stretch_width")

    def __panel__(self):
        return self.controls()
