"""GPU tests: every test here is marked `gpu` and needs CUDA.

Without CUDA they are skipped with the reason in the summary (`-ra`), so `make test` on a CPU machine stays
green; `make test-gpu` sets ARMT_REQUIRE_GPU=1, which turns a missing GPU into a failure instead (a GPU run
that tested nothing must not pass).
"""

from __future__ import annotations

import os

import pytest


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    cuda = _cuda()
    for item in items:
        if not str(item.fspath).startswith(here):
            continue
        item.add_marker(pytest.mark.gpu)
        if not cuda:
            if os.environ.get("ARMT_REQUIRE_GPU") == "1":
                raise pytest.UsageError("ARMT_REQUIRE_GPU=1 (make test-gpu) but torch sees no CUDA device; run it on a "
                                        "GPU machine with a CUDA build of torch")
            item.add_marker(pytest.mark.skip(reason="needs CUDA (a GPU test; run `make test-gpu` on a GPU machine)"))


@pytest.fixture
def model():
    """A tiny GPT-2 ARMT on the GPU, float32, with a memory that matters."""
    import torch

    from armt_viz.testing import tiny_model

    m = tiny_model(seed=3)
    with torch.no_grad():
        for b in m.blocks:
            b.W_mv.weight.normal_(0, 0.05)
    return m.cuda().eval()
