"""The dashboard's view state as a URL query, and back (deep links; issue 15).

Keys (names kept from earlier links): ``trace`` (root-relative name), ``sample``, ``layer``, ``segment``, ``fact``
(-1: none), ``tab`` (``memory`` | ``facts`` | ``layers`` | ``compare``), ``zoom`` (``lo-hi``, the timeline's
visible segment range), ``compare`` (the second trace of the Compare tab). ``state_to_query`` writes only what
differs from a fresh view; ``query_to_state`` reads a query leniently: a malformed value is dropped (and logged),
never raised, so a hand-edited link still opens. Both are pure; ``query_to_state(state_to_query(s)) == s`` for
every valid state (tested).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlencode

__all__ = ["TABS", "state_to_query", "query_to_state", "query_string", "session_query"]

log = logging.getLogger(__name__)

TABS = ("memory", "facts", "layers", "compare")
_INTS = ("sample", "layer", "segment", "fact")


def _zoom_text(zoom) -> str:
    lo, hi = (float(v) for v in zoom)
    fmt = lambda v: f"{v:.6g}"  # noqa: E731  (round-trips through float)
    return f"{fmt(lo)}-{fmt(hi)}" if lo >= 0 else f"{fmt(lo)}~{fmt(hi)}"


def state_to_query(state: Mapping) -> dict[str, str]:
    """``{key: text}`` of a view state (keys above; missing or None entries are left out)."""
    out: dict[str, str] = {}
    if state.get("trace"):
        out["trace"] = str(state["trace"])
    for key in _INTS:
        if state.get(key) is not None:
            out[key] = str(int(state[key]))
    if state.get("tab") in TABS:
        out["tab"] = state["tab"]
    if state.get("zoom") is not None:
        out["zoom"] = _zoom_text(state["zoom"])
    if state.get("compare"):
        out["compare"] = str(state["compare"])
    return out


def _first(value):
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def query_to_state(query: Mapping) -> dict:
    """The view state a URL query asks for (``pn.state.session_args`` lists of bytes, or plain strings). Values
    that do not parse are listed under ``"ignored"`` (``key='value'`` strings) so the page can name them."""
    state: dict = {}
    for key, raw in query.items():
        value = _first(raw)
        if value is None:
            continue
        try:
            if key in ("trace", "compare"):
                if value:
                    state[key] = str(value)
            elif key in _INTS:
                state[key] = int(value)
            elif key == "tab":
                if value not in TABS:
                    raise ValueError(f"not one of {TABS}")
                state["tab"] = value
            elif key == "zoom":
                lo, sep, hi = value.partition("-") if "~" not in value else value.partition("~")
                lo_f, hi_f = float(lo), float(hi)
                if not sep or not lo_f < hi_f:
                    raise ValueError("expected lo-hi with lo < hi")
                state["zoom"] = (lo_f, hi_f)
        except (TypeError, ValueError) as exc:
            log.info("ignoring URL parameter %s=%r: %s", key, str(value)[:80], exc)
            state.setdefault("ignored", []).append(f"{key}={str(value)[:40]!r}")
    return state


def query_string(state: Mapping) -> str:
    """``?trace=...&segment=...`` for a state ('' when empty)."""
    q = state_to_query(state)
    return "?" + urlencode(q) if q else ""


def session_query() -> dict:
    """The URL query of the current Panel session (empty outside a served session)."""
    try:
        import panel as pn

        args = pn.state.session_args
        return dict(args) if args else {}
    except Exception:  # no session
        return {}
