"""Named hook points at the memory math (TransformerLens-style dotted names).

Every wrapped layer i owns a `MemoryHooks` container whose points are named
`layers.{i}.memory.<point>`:

    hook_read_query        phi(W_mq h) for every position        [batch, tokens, heads, key_feature]
    hook_read_denominator  z.phi(q) + eps                         [batch, tokens, heads]
    hook_read_out          A^T phi(q) / den, added to the input   [batch, tokens, hidden]
    hook_mem_input         memory-token input states (post-read)  [batch, mem, hidden]
    hook_mem_output        memory-token block outputs             [batch, mem, hidden]
    hook_write_key         W_mk m, BEFORE the feature map         [batch, mem, d_mem]
    hook_write_value       W_mv m                                 [batch, mem, hidden]
    hook_write_gate        beta = sigmoid(W_mb m)                 [batch, mem, 1 or hidden]
    hook_write_prev_value  v-bar (zeros on the first segment)     [batch, mem, hidden]
    hook_correction        gamma (ones on the first segment)      [batch, mem, heads]
    hook_write_delta       u = beta (v - v-bar)                   [batch, mem, hidden]
    hook_assoc_matrix      A after the write                      [batch, heads, key_feature, hidden/heads]
    hook_normalizer        z after the write                      [batch, heads, key_feature]

A hook is `fn(tensor, *, hook)`; it observes and must return None (values are never
replaced, so a recording run gives the same logits as a plain run). Hooks attach
only inside `with model.hooks([(name_or_filter, fn), ...]):` and are removed on exit,
even on error: hook state is never left behind on the model.

Hook points are plain callables, not nn.Modules: an unhooked point costs one
attribute test, which matters in a segment loop run a million times.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Union

__all__ = ["HookPoint", "MemoryHooks", "HOOK_POINTS", "NamesFilter", "hooks_scope"]

HOOK_POINTS = (
    "hook_read_query",
    "hook_read_denominator",
    "hook_read_out",
    "hook_mem_input",
    "hook_mem_output",
    "hook_write_key",
    "hook_write_value",
    "hook_write_gate",
    "hook_write_prev_value",
    "hook_correction",
    "hook_write_delta",
    "hook_assoc_matrix",
    "hook_normalizer",
)

NamesFilter = Union[str, Iterable[str], Callable[[str], bool]]


class HookPoint:
    """An identity point in the forward pass that calls its observers, if any."""

    __slots__ = ("name", "layer", "fns")

    def __init__(self, name: str, layer: int):
        self.name = name
        self.layer = layer
        self.fns: list[Callable] = []

    def __call__(self, x):
        if self.fns:
            for fn in self.fns:
                if fn(x, hook=self) is not None:
                    raise RuntimeError(
                        f"hook on {self.name!r} returned a value; armt_viz hooks observe only and must return None."
                    )
        return x

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r}, {len(self.fns)} hook(s))"


class MemoryHooks:
    """The hook points of one layer's memory, `layers.{i}.memory.hook_*`."""

    def __init__(self, layer: int):
        for p in HOOK_POINTS:
            setattr(self, p, HookPoint(f"layers.{layer}.memory.{p}", layer))

    def points(self) -> list[HookPoint]:
        return [getattr(self, p) for p in HOOK_POINTS]

    def active(self, point: str) -> bool:
        return bool(getattr(self, point).fns)


def _matcher(names: NamesFilter) -> Callable[[str], bool]:
    if callable(names):
        return names
    if isinstance(names, str):
        return lambda n: n == names
    allowed = set(names)
    return lambda n: n in allowed


@contextlib.contextmanager
def hooks_scope(points: dict[str, HookPoint], hooks: Iterable[tuple[NamesFilter, Callable]]) -> Iterator[None]:
    """Attach `(names, fn)` pairs to matching points for the duration of the block."""
    added: list[tuple[HookPoint, Callable]] = []
    try:
        for names, fn in hooks:
            match = _matcher(names)
            hit = [p for n, p in points.items() if match(n)]
            if not hit and isinstance(names, str):
                raise KeyError(f"no hook point named {names!r}; known points look like {next(iter(points), '')!r}")
            for p in hit:
                p.fns.append(fn)
                added.append((p, fn))
        yield
    finally:
        for p, fn in added:
            p.fns.remove(fn)
