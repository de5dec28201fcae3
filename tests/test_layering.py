"""DESIGN.md §1's import directions, as a test.

    trace/, analysis/, viz/   never import torch, transformers or the model-running packages (model/, record/,
                              hooks, train): a stored trace opens, is analysed and is drawn without torch
    record/                   imports analysis only through its public names (`armt_viz.analysis.__all__`)
    everywhere                no module imports another package's private module (`armt_viz.<pkg>._x`)

Checked on the source (every import statement, also inside functions) and, for the torch rule, by importing the
layers in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "armt_viz"
TORCH_FREE = ("trace", "analysis", "viz")
HEAVY = ("torch", "transformers", "armt_viz.model", "armt_viz.record", "armt_viz.hooks", "armt_viz.train")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in a file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod, [a.name for a in node.names]))
    return out


def _files(sub: str | None = None):
    return sorted((PKG / sub if sub else PKG).rglob("*.py"))


def _under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def test_trace_analysis_and_viz_never_import_torch_or_the_model():
    bad = []
    for sub in TORCH_FREE:
        for f in _files(sub):
            for line, mod, names in _imports(f):
                targets = [mod] + [f"{mod}.{n}" for n in names]
                if any(_under(t, h) for t in targets for h in HEAVY):
                    bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod} {names or ''}")
    assert not bad, "layers above trace/ must import without torch (DESIGN.md §1):\n" + "\n".join(bad)


def test_record_uses_analysis_only_through_public_names():
    import armt_viz.analysis as analysis

    bad = []
    for f in _files("record"):
        for line, mod, names in _imports(f):
            if _under(mod, "armt_viz.analysis") and (mod != "armt_viz.analysis"
                                                    or any(n not in analysis.__all__ for n in names)):
                bad.append(f"{f.relative_to(ROOT)}:{line} from {mod} import {names}")
    assert not bad, "record/ may import analysis only through armt_viz.analysis.__all__:\n" + "\n".join(bad)


def test_no_private_module_of_another_package_is_imported():
    bad = []
    for f in _files():
        own = _module_name(f).split(".")[:2]  # armt_viz.<package>
        for line, mod, names in _imports(f):
            for target in [mod] + [f"{mod}.{n}" for n in names]:
                parts = target.split(".")
                if parts[0] != "armt_viz":
                    continue
                private = next((i for i, p in enumerate(parts) if p.startswith("_") and p != "__init__"), None)
                if private is not None and parts[:2] != own and private >= 2:
                    bad.append(f"{f.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "private modules are their package's own (make the name public instead):\n" + "\n".join(bad)


def test_the_torch_free_layers_import_without_torch():
    code = ("import sys, importlib, pkgutil, armt_viz.trace, armt_viz.analysis\n"
            "import armt_viz.viz.data, armt_viz.viz.figures, armt_viz.viz.figures_facts, armt_viz.viz.figures_memory\n"
            "import armt_viz.viz.figures_timeline, armt_viz.viz.paths, armt_viz.viz.export\n"
            "heavy = sorted(m for m in sys.modules if m in ('torch', 'transformers') or m.startswith(('armt_viz.model',"
            " 'armt_viz.record')))\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert out.stdout.strip() == "", f"importing trace/analysis/viz loaded {out.stdout.strip()}"


def test_the_schema_is_the_one_source_of_levels_and_scalars():
    from armt_viz import config
    from armt_viz.record import stats
    from armt_viz.trace import schema
    from armt_viz.viz import data

    assert config.LEVELS is schema.LEVELS and list(schema.LEVEL_RANK) == list(schema.LEVELS)
    assert stats.SUMMARY_STATS is schema.SUMMARY_STATS and data.SCALAR_VARS is schema.SUMMARY_STATS
    assert set(schema.SUMMARY_STATS) == {k for k, v in schema.SCHEMA.items() if v.dims == ("sample", "segment", "layer")}
    assert len(schema.SUMMARY_STATS) == 10
