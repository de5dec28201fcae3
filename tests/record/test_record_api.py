"""`armt_viz.record` is the record function, with its real signature and docstring; the subpackage keeps its module
name (issue 14 bug 5: it was the subpackage made callable, `(*args, **kwargs)` and the package's docstring)."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import types
from pathlib import Path

import armt_viz as av

ROOT = Path(__file__).resolve().parents[2]


def test_av_record_is_the_function_with_its_signature_and_docstring():
    import armt_viz.record.replay  # noqa: F401  (the import system binds the subpackage as armt_viz.record)
    from armt_viz.record.recorder import record

    assert isinstance(av.record, types.FunctionType) and av.record is record
    params = list(inspect.signature(av.record).parameters)
    assert params[:4] == ["model", "inputs", "store", "level"] and "initial_state" in params
    assert av.record.__doc__.startswith("Record `model` over `inputs`")
    from armt_viz import record as imported
    assert imported is record


def test_the_subpackage_keeps_its_module_name():
    pkg = importlib.import_module("armt_viz.record")
    assert isinstance(pkg, types.ModuleType) and pkg.__name__ == "armt_viz.record"
    assert sys.modules["armt_viz.record"] is pkg and pkg.record is av.record
    from armt_viz.record import replay
    assert replay is pkg.replay


def test_the_function_survives_a_fresh_import_order():
    code = ("import armt_viz.record.replay, armt_viz as av, inspect, types; "
            "assert isinstance(av.record, types.FunctionType), type(av.record); "
            "print(list(inspect.signature(av.record).parameters)[:2])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "['model', 'inputs']"


def test_av_record_can_be_monkeypatched_and_restored(monkeypatch):
    from armt_viz.record.recorder import record

    def fake(*a, **k):
        return "fake"
    monkeypatch.setattr(av, "record", fake)
    assert av.record() == "fake"
    monkeypatch.undo()
    assert av.record is record


def test_probe_keys_is_the_function_with_its_signature_and_docstring():
    """It was a `(*args, **kwargs)` wrapper that imported the submodule on its first call, which bound the module
    `armt_viz.record.probe_keys` over the wrapper (and over `av.probe_keys` when first looked up after that)."""
    pkg = importlib.import_module("armt_viz.record")
    importlib.import_module("armt_viz.record.probe_keys")  # the submodule: must not shadow the function
    from armt_viz.record.probe_keys import probe_keys
    for fn in (pkg.probe_keys, av.probe_keys):
        assert fn is probe_keys, fn
    params = list(inspect.signature(probe_keys).parameters)
    assert params[:3] == ["model", "ds", "at_segments"] and "include_absent" in params
    assert probe_keys.__doc__.startswith("Replay `k GEN` for every live key")
    code = ("import armt_viz.record.probe_keys, armt_viz as av, types; "
            "assert isinstance(av.probe_keys, types.FunctionType), type(av.probe_keys); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "ok"
