"""armt_viz: see inside Associative Recurrent Memory Transformers.

Public API (lazy: `import armt_viz` does not import torch, so stored traces open on
machines without a model):

    ARMTConfig, RecordConfig                 configuration
    ARMTModel, MemoryState                   the model (torch)
    record, replay, probe_keys               run the model and write traces (torch)
    open_trace, open_traces, validate_trace  read traces (no torch)
    memory_at                                exact memory reconstruction (no torch)
    attribute_read                           exact read attribution (no torch); by="origin": delta-rule exact
    memory_by_origin                         A split by the status of its origins (no torch)
    explore                                  ipywidgets explorer
    compare                                  two traces side by side (plotly figure)
    load_demo_model                          the shipped trained model
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for static tools: `armt_viz.record` is the function (see _Package.record)
    from .record.recorder import record

try:
    __version__ = version("armt_viz")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"

_LAZY = {
    "ARMTConfig": "armt_viz.config",
    "RecordConfig": "armt_viz.config",
    "ARMTModel": "armt_viz.model.armt",
    "MemoryState": "armt_viz.model.armt",
    "replay": "armt_viz.record",
    "probe_keys": "armt_viz.record",
    "open_trace": "armt_viz.trace",
    "open_traces": "armt_viz.trace",
    "validate_trace": "armt_viz.trace",
    "memory_at": "armt_viz.trace",
    "attribute_read": "armt_viz.analysis",
    "memory_by_origin": "armt_viz.analysis",
    "explore": "armt_viz.viz.explorer",
    "compare": "armt_viz.viz.figures_compare",
    "load_demo_model": "armt_viz.assets",
}

__all__ = sorted([*_LAZY, "record"]) + ["__version__"]


try:  # register the `ds.armt` accessor (xarray only, no torch)
    from .analysis import accessor as _accessor  # noqa: F401
except ImportError:  # pragma: no cover - xarray missing
    pass


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'armt_viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


class _Package(types.ModuleType):
    """The `armt_viz` module. `armt_viz.record` is the `record` function (its real signature and docstring), and
    the subpackage of the same name stays `sys.modules["armt_viz.record"]` (`from armt_viz.record import replay`,
    `importlib.import_module("armt_viz.record")`). Importing a submodule makes Python bind the subpackage as the
    attribute `armt_viz.record`; the setter ignores exactly that binding, so the function is never shadowed.
    Any other assignment (e.g. a test's monkeypatch) replaces the function until it is assigned back."""

    @property
    def record(self):
        override = self.__dict__.get("_record_override")
        if override is not None:
            return override
        from .record.recorder import record as fn
        return fn

    @record.setter
    def record(self, value):
        if isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.record":
            return  # the import system binding the subpackage
        self.__dict__["_record_override"] = value


sys.modules[__name__].__class__ = _Package
