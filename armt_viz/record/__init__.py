"""Everything that runs the model to produce trace data: record, replay, probe_keys.

`armt_viz.record` as an attribute is the `record` function (see armt_viz/__init__.py); this subpackage is
`sys.modules["armt_viz.record"]` and is reached by `from armt_viz.record import ...` or `importlib.import_module`.
`replay` and `probe_keys` here are the functions (their real signatures and docstrings), bound over the submodules
of the same names once at import, so a later `import armt_viz.record.probe_keys` does not rebind them."""

from .recorder import RecordInput, record
from .replay import replay
from .probe_keys import probe_keys

__all__ = ["record", "replay", "probe_keys", "RecordInput"]
