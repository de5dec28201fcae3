"""The weights digest of a recording's provenance (record/guard.py): the same bytes as the plain definition, and
the on-device checksum that guards the GPU digest cache sees every kind of edit."""

from __future__ import annotations

import pytest
import torch

from armt_viz.record.guard import _checksum, weights_sha256
from armt_viz.testing import plain_weights_digest as _plain_digest


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    net.register_buffer("steps", torch.tensor([3], dtype=torch.int64))
    net.register_buffer("empty", torch.zeros(0))
    return net


def test_the_digest_is_the_plain_definition_and_follows_every_edit():
    net = _net()
    assert weights_sha256(net) == _plain_digest(net)
    before = weights_sha256(net)
    with torch.no_grad():
        net[0].weight[2, 3] += 1e-6
    assert weights_sha256(net) != before
    assert weights_sha256(net) == _plain_digest(net)


@pytest.mark.parametrize("edit", ["one value", "two values swapped", "through .data", "a buffer"])
def test_the_checksum_sees_edits(edit):
    net = _net()
    tensors = [t for _, t in sorted({**dict(net.named_parameters()), **dict(net.named_buffers())}.items())]
    before = _checksum(tensors)
    assert _checksum(tensors) == before  # deterministic
    with torch.no_grad():
        w = net[0].weight
        if edit == "one value":
            w[1, 1] = w[1, 1] + 0.5
        elif edit == "two values swapped":
            a, b = w[0, 0].item(), w[0, 1].item()
            w[0, 0], w[0, 1] = b, a
        elif edit == "through .data":
            w.data.mul_(1.0001)
        else:
            net.steps += 1
    assert _checksum(tensors) != before, edit
