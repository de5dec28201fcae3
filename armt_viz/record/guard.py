"""Provenance of a recording, so a resume continues only the run that wrote the store (issue 16).

``provenance(model, inp, segment_size)`` returns the attrs a resume must match (trace/guard.PROVENANCE_KEYS
lists them; the model and record configs are recorded by the recorder already):

* ``weights_sha256``: SHA-256 over every parameter and buffer of the model (name, dtype, shape and bytes, in
  name order): other weights, or the same checkpoint fine-tuned in memory, differ.
* ``input_fingerprint``: SHA-256 of the first segment's token ids (every sample) and the batch size. The input
  is peeked, not consumed: a stream is re-chained with the chunks read.

The token count so far is checked while a resume skips the committed tokens (``skip_tokens``): a shorter input
is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import torch

__all__ = ["weights_sha256", "input_fingerprint", "provenance", "skip_tokens"]


def weights_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _as_2d(chunk) -> torch.Tensor:
    c = torch.as_tensor(chunk)
    return c.unsqueeze(0) if c.ndim == 1 else c


def input_fingerprint(inp, segment_size: int):
    """``(inp, fingerprint)``: the input (its stream re-chained if it was peeked) and the JSON fingerprint, or
    None when the input holds no token."""
    chunks = iter(inp.chunks)
    seen, n = [], 0
    for c in chunks:
        c = _as_2d(c)
        seen.append(c)
        n += c.shape[1]
        if n >= segment_size:
            break
    inp.chunks = itertools.chain(seen, chunks)
    if not seen or n == 0:
        return inp, None
    first = torch.cat([s for s in seen if s.shape[1]], dim=1)[:, :segment_size]
    ids = np.ascontiguousarray(first.cpu().numpy().astype("<i8"))
    digest = hashlib.sha256(ids.tobytes()).hexdigest()
    return inp, json.dumps({"first_segment_sha256": digest, "batch": int(ids.shape[0]),
                            "first_segment_tokens": int(ids.shape[1])}, sort_keys=True)


def provenance(model, inp, segment_size: int):
    """``(inp, attrs)``: the provenance attrs of this run (see the module docstring)."""
    inp, fp = input_fingerprint(inp, segment_size)
    attrs = {"weights_sha256": weights_sha256(model)}
    if fp is not None:
        attrs["input_fingerprint"] = fp
    return inp, attrs


def skip_tokens(chunks, n: int, *, segment_size: int = 1, store_name: str = "the store"):
    """Drop the first ``n`` tokens (along seq) of a chunk stream (resume); refuse a stream that ends a whole
    segment or more before ``n`` (the last committed segment of a finished run may be partial)."""
    left = n
    for c in chunks:
        c = _as_2d(c)
        if left >= c.shape[1]:
            left -= c.shape[1]
            continue
        yield c[:, left:]
        left = 0
    if left >= segment_size:
        raise ValueError(f"resume=True refused: {store_name!r} holds {n} committed tokens per sample, but the input "
                         f"ends after {n - left}; resume with the same input that wrote it (nothing was written)")
