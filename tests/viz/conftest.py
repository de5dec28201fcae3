"""Fixtures for the viz tests: synthetic schema-conformant traces (``synthetic.py``) and a trace root laid out
to probe confinement (a store outside the root, symlinks escaping it and staying inside it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import make_root, make_trace  # noqa: E402


@pytest.fixture(scope="session")
def trace_writes():
    """A writes-level synthetic trace with ledger and probes (48 segments, 2 layers), in memory."""
    return make_trace(level="writes")


@pytest.fixture(scope="session")
def trace_summary():
    return make_trace(level="summary", seed=1, n_segments=40)


@pytest.fixture(scope="session")
def trace_full():
    return make_trace(level="full", seed=2, n_segments=24)


@pytest.fixture(scope="session")
def trace_root(tmp_path_factory) -> dict[str, Path]:
    return make_root(tmp_path_factory.mktemp("traces"))
