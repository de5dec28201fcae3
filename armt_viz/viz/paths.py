"""Trace-root confinement for the hosted dashboard (issue 8 §4: no path traversal, no symlink escape).

The dashboard lists and opens traces under one configured root only. Every path is resolved to its real
path (symlinks followed, ``..`` collapsed) and must lie inside the real path of the root; anything else is
neither listed nor opened. Names exchanged with the browser are root-relative POSIX paths, never absolute.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["TracePathError", "is_trace_dir", "list_traces", "resolve_trace", "within_root"]

MAX_NAME = 1024  # longer names are refused outright
MAX_DEPTH = 4    # directory levels searched below the root


class TracePathError(PermissionError):
    """A trace name that does not resolve to a trace inside the configured root."""


def is_trace_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a committed armt_viz trace: a zarr group with the recorder's commit marker.

    A recording whose first chunk is not committed yet (or a foreign zarr store) is not listed."""
    p = Path(path)
    return p.is_dir() and (p / "zarr.json").is_file() and (p / "armt_commit.json").is_file()


def within_root(root_real: str, path: str | os.PathLike) -> bool:
    """Whether the real path of ``path`` lies inside ``root_real`` (itself a real path)."""
    real = os.path.realpath(path)
    try:
        return os.path.commonpath([root_real, real]) == root_real
    except ValueError:  # different drives
        return False


def list_traces(root: str | os.PathLike, max_depth: int = MAX_DEPTH) -> list[str]:
    """Root-relative names of the trace stores under ``root`` whose real paths stay inside it, sorted.

    Hidden entries (leading dot) are skipped; a store's own folders are not searched; symlinks are followed
    only while they resolve inside the root (each real directory is visited once).
    """
    root_real = os.path.realpath(root)
    if not os.path.isdir(root_real):
        raise FileNotFoundError(f"trace root {str(root)!r} is not a directory; pass --trace-root DIR")
    found: list[str] = []
    seen: set[str] = set()

    def walk(real_dir: str, rel: str, depth: int) -> None:
        if real_dir in seen or depth > max_depth:
            return
        seen.add(real_dir)
        try:
            entries = sorted(os.scandir(real_dir), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            target = os.path.realpath(entry.path)
            if not within_root(root_real, target) or not os.path.isdir(target):
                continue
            name = f"{rel}/{entry.name}" if rel else entry.name
            if is_trace_dir(target):
                found.append(name)
            else:
                walk(target, name, depth + 1)

    walk(root_real, "", 1)
    return sorted(found)


def resolve_trace(root: str | os.PathLike, name: str) -> Path:
    """The real path of trace ``name`` (root-relative) if it is a trace inside ``root``; else ``TracePathError``.

    Refused: non-strings, empty or over-long names, NUL bytes, absolute paths, and any name whose real path
    (after ``..`` and symlinks) leaves the root or is not a trace store.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\x00" in name:
        raise TracePathError(f"refused trace name {str(name)[:80]!r}: expected a non-empty relative path "
                             f"of at most {MAX_NAME} characters")
    if os.path.isabs(name) or name.startswith(("/", "\\", "~")):
        raise TracePathError(f"refused trace name {name[:80]!r}: absolute paths are not served; "
                             "names are relative to the trace root")
    root_real = os.path.realpath(root)
    candidate = os.path.join(root_real, name)
    if not within_root(root_real, candidate):
        raise TracePathError(f"refused trace name {name[:80]!r}: it resolves outside the trace root")
    real = os.path.realpath(candidate)
    if not is_trace_dir(real):
        raise TracePathError(f"refused trace name {name[:80]!r}: no trace store of that name under the root")
    return Path(real)
