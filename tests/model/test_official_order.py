"""The benchmark's official-order reference computes the same logits as ARMTModel (else ratios are meaningless)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2]))
from bench.official_order import OfficialOrderARMT  # noqa: E402

from armt_viz.testing import tiny_model  # noqa: E402


def test_official_order_reference_matches_model():
    m = tiny_model()
    ids = torch.randint(0, 32, (2, 75))
    with torch.no_grad():
        ref = OfficialOrderARMT(m)(ids)
        ours = m(ids).logits
        again = m(ids).logits  # the reference leaves the model untouched
    torch.testing.assert_close(ref, ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, ours, rtol=0, atol=0)
