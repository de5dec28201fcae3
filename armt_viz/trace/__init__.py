"""Traces: schema, crash-safe zarr store, lazy opening, exact memory reconstruction. No torch."""

from .io import open_trace, open_traces, validate_trace
from .reconstruct import memory_at
from .schema import SCHEMA, SCHEMA_VERSION
from .store import TraceStoreError

__all__ = ["open_trace", "open_traces", "validate_trace", "memory_at", "SCHEMA", "SCHEMA_VERSION", "TraceStoreError"]
