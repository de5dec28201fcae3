"""The README tour runs as written: its first ```python block is executed verbatim in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tour_code() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Tour"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_tour_runs_verbatim(tmp_path):
    code = tour_code()
    assert "..." not in code  # no placeholders
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error::armt_viz.analysis.attribution.EmptyReadWarning"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    total, norm = (float(v) for v in out.stdout.splitlines()[0].split())
    assert norm > 0 and abs(total - norm) <= 1e-4 * norm  # the shares add up to |read_out| (float32 trace)
    assert "stale" in out.stdout and (tmp_path / "runs" / "edited.zarr").is_dir()


def test_attribute_read_warns_on_an_empty_read(tmp_path):
    import warnings

    import pytest

    from armt_viz.analysis.attribution import EmptyReadWarning, attribute_read

    sys.path.insert(0, str(REPO / "tests" / "viz"))
    from synthetic import make_trace

    ds = make_trace(level="writes")
    first = ds.probe_segment.values
    with pytest.warns(EmptyReadWarning, match="segment 0"):
        ds0 = ds.assign(probe_segment=("probe", first * 0))
        attribute_read(ds0, probe=0, layer=0)
    later = int((first > 0).argmax())
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyReadWarning)
        attribute_read(ds, probe=later, layer=0)
