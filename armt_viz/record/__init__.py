"""Everything that runs the model to produce trace data: record, replay, probe_keys.

`armt_viz.record` as an attribute is the `record` function (see armt_viz/__init__.py); this subpackage is
`sys.modules["armt_viz.record"]` and is reached by `from armt_viz.record import ...` or `importlib.import_module`."""

from .recorder import RecordInput, record
from .replay import replay


def probe_keys(*args, **kwargs):
    """Replay a query for every live key from the stored memory (see record/probe_keys.py)."""
    from .probe_keys import probe_keys as _pk
    return _pk(*args, **kwargs)


__all__ = ["record", "replay", "probe_keys", "RecordInput"]

