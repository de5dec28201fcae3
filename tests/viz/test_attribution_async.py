"""Background attribution of the dashboard (loaders.attribution_async): a failure is a message, logged, final
(issue 14 bug 2: the failed future stayed pending and the fact view redrew itself forever)."""

from __future__ import annotations

import logging
import threading

import pytest

pytest.importorskip("panel")

from armt_viz.viz.dashboard import loaders  # noqa: E402


@pytest.fixture
def background(monkeypatch):
    monkeypatch.setattr(loaders, "BACKGROUND", True)
    monkeypatch.setattr(loaders, "_DONE", {})
    monkeypatch.setattr(loaders, "_PENDING", {})


def _boom(*key):
    raise KeyError("write_key")


def _wait(done: threading.Event):
    assert done.wait(10), "on_done was never called"


def test_a_failed_attribution_is_a_logged_message_and_schedules_nothing_more(background, monkeypatch, caplog):
    monkeypatch.setattr(loaders, "load_attribution", _boom)
    key = ("/traces/run.zarr", 7, 2, 0, 12, 0)
    calls = []
    done = threading.Event()

    def on_done():
        calls.append(1)
        done.set()
    with caplog.at_level(logging.ERROR, logger=loaders.__name__):
        assert loaders.attribution_async(key, on_done) is None  # scheduled
        _wait(done)
        result = loaders.attribution_async(key, on_done)  # the redraw that on_done triggers
    assert result is not None, "the failed attribution is still pending: the view would redraw forever"
    frame, message = result
    assert frame is None and "Attribution failed" in message and "KeyError" in message
    assert key not in loaders._PENDING
    # a third call (another redraw) neither reschedules nor fires on_done again
    assert loaders.attribution_async(key, on_done) == result
    assert calls == [1]
    assert any("attribution of fact 2 at layer 0" in r.getMessage() and r.exc_info for r in caplog.records)


def test_inline_attribution_failure_is_a_message(monkeypatch, caplog):
    monkeypatch.setattr(loaders, "BACKGROUND", False)
    monkeypatch.setattr(loaders, "_DONE", {})
    monkeypatch.setattr(loaders, "load_attribution", _boom)
    with caplog.at_level(logging.ERROR, logger=loaders.__name__):
        frame, message = loaders.attribution_async(("/t.zarr", 1, 0, 1, 12, 0), lambda: None)
    assert frame is None and "Attribution failed" in message
    assert caplog.records, "the failure was not logged"


def test_a_successful_attribution_is_returned_on_the_next_call(background, monkeypatch):
    monkeypatch.setattr(loaders, "load_attribution", lambda *key: ("frame", None))
    done = threading.Event()
    key = ("/t.zarr", 1, 3, 1, 12, 0)
    assert loaders.attribution_async(key, done.set) is None
    _wait(done)
    assert loaders.attribution_async(key, done.set) == ("frame", None)
