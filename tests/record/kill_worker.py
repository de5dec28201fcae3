"""Subprocess body for the crash tests: record a deterministic stream into a store (optionally resuming)."""

import sys

import torch

import armt_viz as av
from armt_viz.testing import tiny_model


def ids(n_tokens=1600):
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, 32, (2, n_tokens), generator=g)


def main(store, resume, level="writes"):
    m = tiny_model(seed=1)
    x = ids()
    chunks = (x[:, i:i + 50] for i in range(0, x.shape[1], 50))
    av.record(m, chunks, store=store, level=level, keyframe_every=4, chunk_segments=2, resume=resume,
              probes=[(0, 100), (1, 1500)], progress=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "1")
