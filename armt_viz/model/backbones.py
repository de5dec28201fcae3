"""Per-family backbone adapters: where the decoder blocks live and how positions work.

No HF modeling file is vendored: we wrap the blocks of a stock transformers model
in place (ARMT_SPEC.md §1.1) and only need to know the block list's dotted path,
the input embedding, and (GPT-2 only) the learned position table for `wrap_pos`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["BackboneAdapter", "adapter_for", "get_attr_path", "set_attr_path", "FAMILIES"]


@dataclass(frozen=True)
class BackboneAdapter:
    family: str
    layers_attr: str  # dotted path of the block ModuleList
    positions_attr: str | None  # learned absolute position table (wrap_pos), None for rotary models


FAMILIES = {
    "gpt2": BackboneAdapter("gpt2", "transformer.h", "transformer.wpe"),
    "gpt_neox": BackboneAdapter("gpt_neox", "gpt_neox.layers", None),
    "llama": BackboneAdapter("llama", "model.layers", None),
    "mistral": BackboneAdapter("mistral", "model.layers", None),
    "qwen2": BackboneAdapter("qwen2", "model.layers", None),
}


def get_attr_path(obj, path: str):
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def set_attr_path(obj, path: str, value) -> None:
    *head, last = path.split(".")
    parent = get_attr_path(obj, ".".join(head)) if head else obj
    setattr(parent, last, value)


def adapter_for(backbone: nn.Module, layers_attr: str | None = None) -> BackboneAdapter:
    """Pick the adapter from `backbone.config.model_type`; `layers_attr` overrides the block path."""
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    base = FAMILIES.get(model_type)
    if base is None and layers_attr is None:
        raise ValueError(
            f"unsupported backbone family {model_type!r} ({type(backbone).__name__}); supported: {sorted(FAMILIES)}. "
            "Pass ARMTConfig(layers_attr='path.to.blocks') to wrap another causal LM."
        )
    if base is None:
        base = BackboneAdapter(str(model_type), layers_attr, None)  # type: ignore[arg-type]
    elif layers_attr is not None:
        base = BackboneAdapter(base.family, layers_attr, base.positions_attr)
    try:
        blocks = get_attr_path(backbone, base.layers_attr)
    except (AttributeError, IndexError) as exc:
        raise ValueError(f"backbone {type(backbone).__name__} has no block list at {base.layers_attr!r}") from exc
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{base.layers_attr!r} of {type(backbone).__name__} is a {type(blocks).__name__}, expected nn.ModuleList")
    return base


def extend_positions(backbone: nn.Module, adapter: BackboneAdapter, num_mem_tokens: int) -> int:
    """wrap_pos (GPT-2 only): grow the position table from P to P+M rows; the new rows are N(0,1).

    Returns P, the first memory position. The first P rows are copied (ARMT_SPEC §1.4).
    """
    if adapter.positions_attr is None:
        raise ValueError(f"wrap_pos=True needs a learned position table (GPT-2); the {adapter.family} backbone has none. Use wrap_pos=False.")
    old = get_attr_path(backbone, adapter.positions_attr)
    P, d = old.weight.shape
    new = nn.Embedding(P + num_mem_tokens, d).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight[:P] = old.weight
    set_attr_path(backbone, adapter.positions_attr, new)
    return P
