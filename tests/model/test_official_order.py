"""The official-order reference (armt_viz.testing.official_order_reference) computes the same logits as ARMTModel
(else the benchmarks' ratios are meaningless)."""

import torch

from armt_viz.testing import assert_close, official_order_reference, tiny_model


def test_official_order_reference_matches_model():
    m = tiny_model()
    ids = torch.randint(0, 32, (2, 75))
    with torch.no_grad():
        ref = official_order_reference(m)(ids)
        ours = m(ids).logits
        again = m(ids).logits  # the reference leaves the model untouched
    assert_close("official order vs ARMTModel logits", ref, ours, "fp32_reorder")
    assert_close("ARMTModel logits after the reference ran", ours, again, "exact")
