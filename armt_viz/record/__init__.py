"""Everything that runs the model to produce trace data: record, replay, probe_keys."""

from .recorder import RecordInput, record
from .replay import replay


def probe_keys(*args, **kwargs):
    """Replay a query for every live key from the stored memory (see record/probe_keys.py)."""
    from .probe_keys import probe_keys as _pk
    return _pk(*args, **kwargs)


__all__ = ["record", "replay", "probe_keys", "RecordInput"]


# `armt_viz.record` is both this subpackage and the `record` function. Once a submodule is imported,
# Python binds the subpackage as the attribute `armt_viz.record`, shadowing the lazily exported
# function; making the module callable keeps `av.record(...)` working either way.
import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        return record(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
