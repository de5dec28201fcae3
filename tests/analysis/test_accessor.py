"""ds.armt forwards to the analysis functions; analysis imports without torch; numpy DPFP == torch DPFP."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import armt_viz.analysis as analysis
from armt_viz.analysis._common import feature_map


def test_accessor_forwards(rewrite_delete_case):
    ds = rewrite_delete_case
    xr.testing.assert_identical(ds.armt.attribute_read(probe=0, layer=0), analysis.attribute_read(ds, 0, 0))
    xr.testing.assert_identical(ds.armt.attribute_read(0, 0, by="status"), analysis.attribute_read(ds, 0, 0, by="status"))
    xr.testing.assert_identical(ds.armt.stale_mass(), analysis.stale_mass(ds))
    xr.testing.assert_identical(ds.armt.stale_share(), analysis.stale_share(ds))
    xr.testing.assert_identical(ds.armt.recall_shares(), analysis.recall_shares(ds))
    xr.testing.assert_identical(ds.armt.retrieval_snr(), analysis.retrieval_snr(ds))
    xr.testing.assert_identical(ds.armt.answer_status(), analysis.answer_status(ds))
    xr.testing.assert_identical(ds.armt.key_overlap(), analysis.key_overlap(ds))
    xr.testing.assert_identical(ds.armt.correction_distribution(), analysis.correction_distribution(ds))
    xr.testing.assert_identical(ds.armt.memory_spectrum(), analysis.memory_spectrum(ds))
    xr.testing.assert_identical(ds.armt.effective_rank(), analysis.effective_rank(ds))
    xr.testing.assert_identical(ds.armt.fact_lineage(0), analysis.fact_lineage(ds, 0))
    assert ds.armt.config.num_mem_tokens == 1
    assert "role" in ds.armt.ledger
    assert ds.armt is ds.armt  # one cached accessor per Dataset (it keeps the parsed ledger)


def test_accessor_refuses_foreign_datasets():
    with pytest.raises(ValueError, match="armt_config"):
        xr.Dataset({"x": ("t", [1.0])}).armt.stale_mass()


def test_feature_map_matches_torch():
    torch = pytest.importorskip("torch")
    from armt_viz.model.memory import feature_map as torch_feature_map

    x = np.random.default_rng(0).normal(size=(5, 3, 8))
    for heads in (1, 2, 4):
        for normalize in (False, True):
            ref = torch_feature_map(torch.tensor(x), heads, 3, normalize).reshape(5, 3, -1).numpy()
            np.testing.assert_allclose(feature_map(x, heads, 3, normalize), ref, rtol=1e-12, atol=1e-15)


def test_analysis_imports_without_torch():
    code = ("import sys, armt_viz.analysis, armt_viz.distributed; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
