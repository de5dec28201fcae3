"""Acceptance: on a random tiny GPT-2 ARMT, attribute_read(ds, i, l).sum() == |read_out[i, l]| (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import armt_viz as av  # noqa: E402

from .conftest import tiny_model  # noqa: E402


@pytest.mark.parametrize("armt", [{}, {"n_heads": 2, "normalize_features": True}], ids=["paper", "two-heads"])
def test_attribution_is_complete_on_a_recorded_model(armt):
    model = tiny_model(**armt)
    ids = torch.randint(0, 32, (2, 16 * 6), generator=torch.Generator().manual_seed(1))
    probes = [(0, 5), (1, 17), (0, 40), (1, 63), (0, 95), (1, 80)]
    ds = av.record(model, ids, level="writes", probes=probes, progress=False, keyframe_every=4)
    checked = 0
    for i in range(len(probes)):
        for layer in range(model.n_layers):
            norm = float(np.linalg.norm(ds["read_out"].isel(probe=i, layer=layer).values))
            total = float(av.attribute_read(ds, probe=i, layer=layer).sum())
            if probes[i][1] < 16:
                assert norm == 0.0 == total  # the first segment reads nothing
                continue
            assert norm > 1e-3
            assert abs(total - norm) / norm <= 1e-4, (i, layer, total, norm)
            checked += 1
    assert checked == 10


def test_float16_storage_is_close():
    """Half-precision write events keep the decomposition to ~1e-3 (the storage rounding, not the math)."""
    model = tiny_model()
    ids = torch.randint(0, 32, (1, 16 * 5), generator=torch.Generator().manual_seed(2))
    ds = av.record(model, ids, level="writes", probes=[(0, 70)], progress=False, storage_dtype="float16")
    for layer in range(2):
        norm = float(np.linalg.norm(ds["read_out"].isel(probe=0, layer=layer).values))
        assert abs(float(av.attribute_read(ds, 0, layer).sum()) - norm) / norm < 3e-3
