"""Trace-root confinement (armt_viz/viz/paths.py): nothing outside the root is listed or opened."""

from __future__ import annotations

import pytest

from armt_viz.viz.paths import TracePathError, list_traces, resolve_trace


def test_lists_only_traces_inside_the_root(trace_root):
    names = list_traces(trace_root["root"])
    assert names == ["alias.zarr", "nested/run_summary.zarr", "run_writes.zarr"]
    assert not any("secret" in n or "link_out" in n or "linked_dir" in n for n in names)


def test_resolves_a_listed_trace_to_its_real_path(trace_root):
    root = trace_root["root"]
    assert resolve_trace(root, "nested/run_summary.zarr") == (root / "nested" / "run_summary.zarr").resolve()
    assert resolve_trace(root, "alias.zarr") == (root / "run_writes.zarr").resolve()  # symlink inside the root


@pytest.mark.parametrize("name", [
    "../outside/secret.zarr",                 # dot-dot traversal
    "nested/../../outside/secret.zarr",       # traversal after a real folder
    "link_out.zarr",                          # symlink escaping the root
    "linked_dir/secret.zarr",                 # through a symlinked folder outside the root
    "notes",                                  # a folder that is not a trace
    "missing.zarr",
    "", "\x00", "a" * 5000,
], ids=["dotdot", "nested-dotdot", "symlink-escape", "symlinked-dir", "not-a-trace", "missing", "empty", "nul",
        "too-long"])
def test_refuses_names_outside_the_root_or_not_traces(trace_root, name):
    with pytest.raises(TracePathError):
        resolve_trace(trace_root["root"], name)


def test_refuses_absolute_paths_even_inside_the_root(trace_root):
    with pytest.raises(TracePathError, match="absolute"):
        resolve_trace(trace_root["root"], str(trace_root["root"] / "run_writes.zarr"))
    with pytest.raises(TracePathError):
        resolve_trace(trace_root["root"], str(trace_root["secret"]))


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="trace root"):
        list_traces(tmp_path / "nope")
