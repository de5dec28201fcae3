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
import weakref

import numpy as np
import torch

__all__ = ["weights_sha256", "input_fingerprint", "provenance", "skip_tokens"]


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape and bytes, in name order).

    Hashing a GPT-2 137M on an H100 host took 1.8 s of every `record` call (the host copy 0.5 s, a `tobytes` copy
    0.55 s, the hash 0.7 s), longer than recording 262k tokens' statistics. Now the bytes are hashed in place
    (no copy), and a model whose tensors live on a GPU keeps its digest between calls (`_CUDA_DIGESTS`) while
    every tensor is unchanged: same storage and in-place version, and the same on-device checksum of its bits
    (which catches edits that bypass the version counter, such as `p.data.copy_(x)`). CPU models are hashed in
    full each call (a tiny model takes milliseconds; the checksum would cost as much as the hash there)."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    names = sorted(tensors)
    cuda = any(tensors[n].device.type == "cuda" for n in names)
    key = None
    if cuda:
        key = tuple((n, tensors[n].data_ptr(), tensors[n]._version, tensors[n].dtype, tuple(tensors[n].shape),
                     str(tensors[n].device)) for n in names) + (_checksum([tensors[n] for n in names]),)
        hit = _CUDA_DIGESTS.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
    h = hashlib.sha256()
    for name in names:
        t = tensors[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.cpu().contiguous().view(torch.uint8).numpy()))
    digest = h.hexdigest()
    if cuda:
        _CUDA_DIGESTS[model] = (key, digest)
    return digest


_CUDA_DIGESTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
_RAMP: dict = {}


def _checksum(tensors: list[torch.Tensor]) -> tuple[int, int]:
    """Two int64 sums over the raw bits of every tensor (wrapping), one plain and one weighted by the position
    within blocks of 61 words, so a changed or moved value changes them; one host synchronisation in all."""
    plain, weighted = [], []
    for t in tensors:
        t = t.detach().contiguous()
        if t.numel() == 0:
            continue
        b = t.view(-1).view(torch.uint8)
        b = b[: b.numel() // 4 * 4].view(torch.int32).long() if b.numel() >= 4 else b.long()
        n = b.numel() // 61 * 61
        ramp = _RAMP.get(t.device)
        if ramp is None:
            ramp = _RAMP[t.device] = torch.arange(1, 62, device=t.device, dtype=torch.int64)
        plain.append(b.sum())
        weighted.append((b[:n].view(-1, 61) * ramp).sum() + (b[n:] * ramp[: b.numel() - n]).sum())
    if not plain:
        return (0, 0)
    return tuple(int(v) for v in torch.stack([torch.stack(plain).sum(), torch.stack(weighted).sum()]).cpu())


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
