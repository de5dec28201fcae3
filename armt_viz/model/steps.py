"""One contract for every way of running one ARMT segment step, and one function that picks one.

A `SegmentStep` computes exactly what `ARMTModel.step` computes for one segment (logits of its tokens and
the memory after its write), by another route:

    HFStep          the HF-wrapped eager step (`ARMTModel.step`): any backbone, device, dtype, autograd,
                    padding masks. The reference every other step is tested against.
    lean.LeanStep   GPT-2 on the CPU in float32, eval mode, no autograd: one function over prepacked weights.
    fast.GraphedStepper   full segments on CUDA replayed as a CUDA graph (first segment and later ones), with
                    optionally the compiled memory math; `emulate=True` runs it eagerly (tests on the CPU).
    train.CompiledStep    the HF step under `torch.compile` (training on CUDA, with autograd).

    why_not(model, state=None, ids=None) -> str | None
        None if this step can run segment `ids` from `state` of `model`, else why not (one sentence).
        With state and ids left out: whether it can run this model at all.
    __call__(ids, state, segment) -> SegmentOutput
        ids [batch, <=S]; state the memory before (None: empty); segment the index reported in the output.

`ARMTModel.run_segments` (the one segment loop) runs every segment a step accepts through it and the
others through `model.step`. `pick_step(model, device, grad, ...)` returns the step to use and the reason.
Diagonal batching (`diagonal.py`) computes many segments per call and is the one batched variant: it has
its own pipeline, not a step of the loop.

`default_step(model, mask, grad)` is what `model(ids)` (`forward`) and `model.stream(...)` run when no step is
given: `pick_step`'s choice (the one decision whether the lean step or the CUDA graph can run: eval mode, no
autograd needed, float32 or autocast, ...) unless the call needs what only the HF step does (a padding mask, PyTorch
forward hooks on the backbone, custom memory kernels). On the CPU that is the lean step. On CUDA `model(ids)` under
torch.no_grad() replays a CUDA graph (`fast.GraphedStepper`, cached per model for one batch size, autocast mode,
config, read ablation and set of weights; recaptured when any of them changes) when the input has at least
`GRAPH_MIN_SEGMENTS` full segments or a graph for the call is cached: capturing the two graphs costs about six eager
steps. `forward` copies each replayed segment's logits, and the final state, out of the graph's static buffers.
`model.stream` and `generate` (purpose "stream") stay on the HF step on CUDA: a stream hands out every segment's
output, which a replay would overwrite (`fast.fast_stream` is the graph stream with that contract).
`clear_cache(model)` frees the cached steps. ``ARMT_VIZ_FORWARD=hf`` forces
the HF step, and so does `with hf_step(model):` (tests' references). `ARMTModel.explain_executor` gives the reason.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import contextlib
import os
import weakref

import torch
from torch import Tensor

from . import cpu_kernels
from .armt import ARMTModel, MemoryState, SegmentOutput

__all__ = ["SegmentStep", "HFStep", "StepChoice", "pick_step", "explain", "default_step", "hf_step", "FORWARD_ENV",
           "GRAPH_MIN_SEGMENTS", "clear_cache"]


@runtime_checkable
class SegmentStep(Protocol):
    def why_not(self, model: ARMTModel, state: MemoryState | None = None, ids: Tensor | None = None) -> str | None:
        ...

    def __call__(self, ids: Tensor, state: MemoryState | None, segment: int) -> SegmentOutput:
        ...


class HFStep:
    """The HF-wrapped eager step, `model.step` (runs every segment, so `why_not` is always None)."""

    def __init__(self, model: ARMTModel):
        self.model = model

    @staticmethod
    def why_not(model: ARMTModel, state: MemoryState | None = None, ids: Tensor | None = None) -> str | None:
        return None

    def __call__(self, ids: Tensor, state: MemoryState | None, segment: int) -> SegmentOutput:
        return self.model.step(ids, state, segment=segment)


class StepChoice(NamedTuple):
    step: SegmentStep  # what runs the segments
    reason: str  # why this one (and why not the faster ones)


def _graph_why_not(model: ARMTModel, device: torch.device) -> str | None:
    from .fast import GraphedStepper

    if device.type != "cuda":
        return f"the CUDA-graph step needs a CUDA device, the model is on {device}"
    return GraphedStepper.why_not(model)


def pick_step(model: ARMTModel, device=None, grad: bool = False, *, fast: bool = True, batch: int = 1,
              graph: bool = True, build: bool = True, **graph_kw) -> StepChoice:
    """The segment step to run `model` with, and why.

    device: where the segments run (default: the model's device). grad: autograd through the steps (training,
    gradients): only the HF step supports it. fast=False: the HF step. batch: samples per segment (a CUDA graph
    is captured for one batch size). graph_kw go to `GraphedStepper` (extra, hooks, compile_memory, emulate).
    graph=False leaves the CUDA graph out: for callers that observe every segment through hooks (a captured graph
    fires them only while it is captured). build=False returns the choice with `step=None` (no weights packed,
    no graph captured): for explaining.

    Order: the CUDA-graph step on CUDA, the lean step on the CPU, else the HF step.
    """
    if not isinstance(model, ARMTModel):
        raise TypeError(f"pick_step: model must be an armt_viz ARMTModel, got {type(model).__name__}")
    device = torch.device(device) if device is not None else model.memory.device
    if grad:
        also = "; the model is also in training mode (dropout), which only the HF step runs" if model.training else ""
        return StepChoice(HFStep(model) if build else None,
                          "the HF step: autograd is on, and only the HF step keeps the graph through every segment"
                          + also)
    if not fast:
        return StepChoice(HFStep(model) if build else None, "the HF step: fast=False was asked for")
    emulate = graph_kw.get("emulate", False)
    if not graph:
        graph_reason = "the caller observes every segment through hooks, which a replayed graph does not fire"
    else:
        graph_reason = _graph_why_not(model, device) if not emulate else _graph_emulated_why_not(model)
    if graph_reason is None:
        from .fast import GraphedStepper

        what = "emulated CUDA-graph step (eager, same static buffers)" if emulate else "CUDA-graph step"
        return StepChoice(GraphedStepper(model, batch, **graph_kw) if build else None,
                          f"the {what}: full segments replay one captured graph; a partial tail runs the HF step")
    from .lean import LeanStep

    lean_reason = LeanStep.why_not(model) if device.type == "cpu" else f"the lean step is for the CPU, not {device}"
    if lean_reason is None and torch.is_autocast_enabled("cpu"):  # it would refuse every segment (why_not with ids)
        lean_reason = "CPU autocast is on, and the lean step runs float32 only"
    if lean_reason is None:
        step = _cached_lean(model) if build else None
        kernels = step.kernels if step is not None else cpu_kernels.choose(model.config.segment_size + model.config.num_mem_tokens)
        return StepChoice(step, f"the lean CPU step ({kernels}); not a CUDA graph: {graph_reason}")
    return StepChoice(HFStep(model) if build else None,
                      f"the HF step: not a CUDA graph ({graph_reason}); not the lean step ({lean_reason})")


def _graph_emulated_why_not(model: ARMTModel) -> str | None:
    from .fast import GraphedStepper

    return GraphedStepper.why_not(model)


def explain(model: ARMTModel, device=None, grad: bool = False, *, fast: bool = True, batch: int = 1) -> str:
    """`pick_step(...).reason` without building the step."""
    return pick_step(model, device, grad, fast=fast, batch=batch, build=False).reason


# ---------------------------------------------------------------------- the default of forward / stream
FORWARD_ENV = "ARMT_VIZ_FORWARD"
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> (weights fingerprint, LeanStep)
_FORCED_HF: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> nesting depth of hf_step


@contextlib.contextmanager
def hf_step(model: ARMTModel):
    """Inside the block `model(ids)` and `model.stream(...)` without an explicit step run the HF step (a test's
    reference, a comparison), whatever `default_step` would pick."""
    _FORCED_HF[model] = _FORCED_HF.get(model, 0) + 1
    try:
        yield
    finally:
        _FORCED_HF[model] -= 1
        if not _FORCED_HF[model]:
            del _FORCED_HF[model]


def needs_grad(model: ARMTModel) -> bool:
    """Whether autograd would record this call: grad mode is on and some parameter requires grad."""
    return torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters())


def _user_forward_hooks(backbone) -> bool:
    """Whether PyTorch forward (pre-)hooks, module-level or global, observe the backbone's modules (the lean
    step does not call the modules). transformers' output-capturing hooks (installed once a model is called
    with output_hidden_states or output_attentions, inert unless a call asks for those outputs, which the
    segment step never does) are not counted."""
    from torch.nn.modules import module as nn_module

    def user(fns) -> bool:
        return any("output_capturing_hook" not in getattr(fn, "__qualname__", "") for fn in fns)
    if user(nn_module._global_forward_hooks.values()) or user(nn_module._global_forward_pre_hooks.values()):
        return True
    return any(user(m._forward_hooks.values()) or user(m._forward_pre_hooks.values()) for m in backbone.modules())


def _default_why_not(model: ARMTModel, attention_mask, purpose: str) -> str | None:
    """None if `forward`/`stream` may take `pick_step`'s choice for this call, else why the HF step runs instead.

    Only what is particular to the default: the overrides, the stream on CUDA, the padding mask, custom memory
    kernels and PyTorch forward hooks (neither the lean step nor a replayed graph honours these). Whether the lean
    step or a graph can run the model (training mode, autograd, autocast, backbone, dtype, heads) is `pick_step`'s
    decision alone."""
    from .memory import EAGER_KERNELS

    choice = os.environ.get(FORWARD_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "hf"):
        raise ValueError(f"{FORWARD_ENV} must be 'auto' or 'hf', got {choice!r}; unset it for the default")
    if choice == "hf":
        return f"forced by {FORWARD_ENV}=hf"
    if model in _FORCED_HF:
        return "forced by steps.hf_step(model)"
    if model._slot.lean is not None:
        return "a lean step is installed by use_lean (model.step runs it)"
    device = model.memory.device
    if (device.type != "cpu" or _EMULATE_GRAPH) and purpose == "stream":
        return (f"model.stream off the CPU runs the HF step (the model is on {device}): it hands out every segment's "
                "output, which a replayed CUDA graph would overwrite; fast.fast_stream is the graph stream, or pass "
                "step=pick_step(model).step")
    if attention_mask is not None:
        return "an attention_mask was given (neither the lean step nor a CUDA graph takes a padding mask)"
    if model._slot.kernels is not EAGER_KERNELS:
        return "custom memory kernels are active (model.memory_kernels)"
    if _user_forward_hooks(model.backbone):
        return ("PyTorch forward hooks are registered on backbone modules (neither the lean step nor a replayed "
                "graph calls them)")
    return None


def _fingerprint(model: ARMTModel) -> tuple:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


# model(ids) on CUDA: a graph pays for its capture (two graphs, each two warm-up runs and one captured run: about
# six eager steps) only over enough segments; a cached graph for the same call is free
GRAPH_MIN_SEGMENTS = 8
_GRAPHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> (call key, GraphedStepper)
_EMULATE_GRAPH = False  # tests: take the CUDA-graph default on a CPU model, emulated (fast.GraphedStepper(emulate=True))


def clear_cache(model: ARMTModel | None = None) -> None:
    """Drop the cached default steps (the lean step's packed weights, the CUDA graph's static buffers and graphs)
    of `model`, or of every model: frees their memory; the next call rebuilds what it needs."""
    for cache in (_CACHE, _GRAPHS):
        if model is None:
            cache.clear()
        else:
            cache.pop(model, None)


def _graph_key(model: ARMTModel, batch: int) -> tuple:
    dev = model.memory.device.type
    amp = torch.is_autocast_enabled(dev) if dev == "cuda" else False
    # everything a capture bakes in: the batch, autocast, the weights' addresses, the config (segment size:
    # evaluate swaps it per task) and whether reads are ablated (`model.ablate_memory()`); never inference mode,
    # under which `_graph_default` runs the HF step
    return (batch, amp, torch.get_autocast_dtype(dev) if amp else None, _fingerprint(model), repr(model.config),
            model._slot.ablate_read)


def default_step(model: ARMTModel, attention_mask=None, grad: bool = True, *, build: bool = True,
                 input_ids: Tensor | None = None, purpose: str = "forward") -> StepChoice:
    """The step `forward` (purpose "forward", grad=True: the caller's grad mode) or `stream` (purpose "stream",
    its `grad`) runs when none is given: `pick_step`'s choice where it is exact for the call, else the HF step (see
    the module docstring). input_ids: the call's input (forward), for the batch size and the number of segments a
    graph would replay. The lean step and the CUDA graph are cached per model and rebuilt when a parameter was
    replaced or edited in place (they hold copies or addresses of the weights)."""
    reason = _default_why_not(model, attention_mask, purpose)
    if reason is not None:
        return StepChoice(HFStep(model) if build else None, f"the HF step: {reason}")
    emulate = _EMULATE_GRAPH and model.memory.device.type == "cpu"
    batch = int(input_ids.shape[0]) if input_ids is not None and input_ids.ndim == 2 else 1
    # the one decision (the lean step, a CUDA graph or the HF step); autograd counts only where it would record
    choice = pick_step(model, grad=grad and needs_grad(model), build=False, batch=batch,
                       **({"emulate": True} if emulate else {}))
    if choice.reason.startswith("the HF step"):
        return StepChoice(HFStep(model) if build else None, choice.reason)
    if choice.reason.startswith(("the CUDA-graph step", "the emulated CUDA-graph step")):
        return _graph_default(model, choice, batch, input_ids, build, emulate)
    if not build:
        return choice
    return StepChoice(_cached_lean(model), choice.reason)


def _cached_lean(model: ARMTModel):
    """The model's LeanStep, built (weights packed: ~6 ms for the tiny model) once per weights fingerprint and
    shared by `model(ids)` and every `pick_step` caller (the recorder). It reads the config and the read ablation
    per call, so only a weight change needs a new one."""
    fp = _fingerprint(model)
    hit = _CACHE.get(model)
    if hit is None or hit[0] != fp:
        from .lean import LeanStep

        hit = _CACHE[model] = (fp, LeanStep(model))
    return hit[1]


def _graph_default(model: ARMTModel, choice: StepChoice, batch: int, input_ids, build: bool, emulate: bool):
    """`model(ids)`'s CUDA graph, cached per call key, when it pays for its capture (see GRAPH_MIN_SEGMENTS)."""
    if torch.is_inference_mode_enabled():
        return StepChoice(HFStep(model) if build else None,
                          "the HF step: torch.inference_mode is on; model(ids) replays a CUDA graph under torch.no_grad() "
                          "only (a capture inside inference mode is not verified on a GPU)")
    key = _graph_key(model, batch)
    hit = _GRAPHS.get(model)
    cached = hit is not None and hit[0] == key
    full = None if input_ids is None else int(input_ids.shape[-1]) // model.config.segment_size
    if not cached and full is not None and full < GRAPH_MIN_SEGMENTS:
        return StepChoice(HFStep(model) if build else None,
                          f"the HF step: {full} full segment(s), and no CUDA graph is cached for this call (batch "
                          f"{batch}, autocast mode, weights, config, ablation): capturing one costs about six eager steps, so "
                          f"model(ids) replays a graph from {GRAPH_MIN_SEGMENTS} full segments on, or once one is cached")
    why = (f"{choice.reason} (cached per model for batch {batch}, this autocast mode, weights, config and "
           f"ablation; "
           f"model(ids) copies each segment's logits out of its static buffers"
           + ("; replayed from the cache)" if cached else
              f"; captured for inputs of {GRAPH_MIN_SEGMENTS} or more full segments)"))
    if not build:
        return StepChoice(None, why)
    if not cached:
        from .fast import GraphedStepper

        _GRAPHS.pop(model, None)  # free the old graph's buffers before capturing the new one
        hit = _GRAPHS[model] = (key, GraphedStepper(model, batch, emulate=emulate))
    return StepChoice(hit[1], why)
