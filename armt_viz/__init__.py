"""armt_viz: see inside Associative Recurrent Memory Transformers.

Public API (lazy: `import armt_viz` does not import torch, so stored traces open on
machines without a model):

    ARMTConfig, RecordConfig                 configuration
    ARMTModel, MemoryState                   the model (torch)
    record, replay, probe_keys               run the model and write traces (torch)
    open_trace, open_traces, validate_trace  read traces (no torch)
    memory_at                                exact memory reconstruction (no torch)
    attribute_read                           exact read attribution (no torch)
    explore                                  ipywidgets explorer
    compare                                  two traces side by side (plotly figure)
    load_demo_model                          the shipped trained model
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("armt_viz")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"

_LAZY = {
    "ARMTConfig": "armt_viz.config",
    "RecordConfig": "armt_viz.config",
    "ARMTModel": "armt_viz.model.armt",
    "MemoryState": "armt_viz.model.armt",
    "record": "armt_viz.record",
    "replay": "armt_viz.record",
    "probe_keys": "armt_viz.record",
    "open_trace": "armt_viz.trace",
    "open_traces": "armt_viz.trace",
    "validate_trace": "armt_viz.trace",
    "memory_at": "armt_viz.trace",
    "attribute_read": "armt_viz.analysis",
    "explore": "armt_viz.viz.explorer",
    "compare": "armt_viz.viz.figures_compare",
    "load_demo_model": "armt_viz.assets",
}

__all__ = sorted(_LAZY) + ["__version__"]


try:  # register the `ds.armt` accessor (xarray only, no torch)
    from .analysis import accessor as _accessor  # noqa: F401
except ImportError:  # pragma: no cover - xarray missing
    pass


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'armt_viz' has no attribute {name!r}")
    module = importlib.import_module(mod)
    # `record` is served as the (callable) subpackage itself, so `armt_viz.record.record` keeps working
    value = module if name == "record" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
