"""CPU fast path: the whole segment step as one function over prepacked weights.

On a CPU the HF-wrapped step (`ARMTModel.step`) spends about half its time outside arithmetic:
HF's module calls and mask building, the half-dozen elementwise kernels of `gelu_new`, the DPFP's
eleven small ops, and -- the largest single item -- fp32 matrix products through MKL, which on AMD
CPUs runs its AVX2 code (about 105 GFLOP/s on one Zen 5 core where oneDNN's AVX-512 kernels reach
about 210). `LeanStep` computes the same segment step -- embed, per layer read -> block -> write,
final norm, logits -- directly from the weights:

* every linear map runs the backend chosen for this CPU at run time (`cpu_kernels.choose`): oneDNN inner
  products over weights prepacked once (GELU and residual fused as post-ops) on AVX-512, MKL `addmm` over
  pre-transposed weights (tanh-GELU as y*sigmoid(2u)) on AVX2; `LeanStep.kernels` says which and why;
* the read and the write's v-bar are one product each against [A | z] (numerator and denominator
  together), and a write updates A and z with one `baddbmm` (k^T [delta | gamma]);
* the writes of all layers run together after the last block, as stacked products over a layer axis
  (a layer's write changes only the next segment's memory, so nothing in this segment waits for it):
  about a quarter of the small write ops, and the memory of every layer stays one [layer, b, F, D+1]
  tensor from step to step;
* DPFP is one gather and one multiply (the same products as `memory.dpfp`, so bit-identical), the read's
  query map's q [rows, d_mem] extended to [q, -q] by one negation and one concatenation (cheaper than
  a product against the weight stacked with its negation, and the same values);
* when no observer is attached to any memory hook point, the hook calls and the views they take are skipped;
* attention is `scaled_dot_product_attention(is_causal=True)`; logits only for the segment's tokens.

The memory hook points fire with the same tensors as in `AssociativeBlock`, so every observer (the
recorder at all levels, probes, user hooks) works unchanged; the write points of all layers fire after
the last block instead of after each layer's block. Only the memory
hook points exist on this path: hooks on the HF modules do not fire (they are not called).

Exactness: the same math in another summation order; logits and state match the HF-wrapped step to
about 1e-6 relative in float32 (tested at 1e-5). Eligibility (`LeanStep.why_not`): a GPT-2 backbone
on the CPU in float32, eval mode, no autograd, no autocast, no padding mask, one memory head. Used by
`record(fast=True)` (the default), `fast_stream`, and `model(ids)` / `model.stream(...)` without an explicit
step where exact for the call (`steps.default_step`); `model.step` runs it inside `with use_lean(model):`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from .armt import ARMTModel, MemoryState, SegmentOutput
from . import cpu_kernels
from .gpt2_block import TANH_GELU, GPT2Weights, gpt2_cell

__all__ = ["LeanStep", "use_lean", "lean_eligible"]

_GELU_TANH = TANH_GELU


def _onednn() -> bool:
    return cpu_kernels.onednn_available()


def _Linear(weight_out_in: Tensor, bias: Tensor | None, rows_hint: int, backend: str = "onednn") -> cpu_kernels.Linear:
    """y = x W^T + b (x 2-D), optionally fused with tanh-GELU or a residual add, by the chosen backend
    (`cpu_kernels.Linear`); oneDNN falls back to F.linear where this torch has none."""
    if backend == "onednn" and not _onednn():
        backend = "plain"
    return cpu_kernels.Linear(weight_out_in, bias, rows_hint, backend)


def _matmul_t(x: Tensor, w_t: Tensor, backend: str) -> Tensor:
    """x [rows, k] @ w_t [k, n] for a right factor that changes every call (the memory)."""
    return cpu_kernels.matmul_t(x, w_t, backend if _onednn() else "mkl")


class _PackedLinear:
    """The block products of `gpt2_block` for one cell (one layer), each a `cpu_kernels.Linear` of `backend`
    ("onednn": weights packed once, GELU and residual fused; "mkl": addmm over pre-transposed weights): the
    tanh-GELU fused into "mlp_in", the residual add into "attn_out" and "mlp_out". `attention`: the causal
    attention kernel `gpt2_block` calls for one cell (`cpu_kernels.CausalAttention`)."""

    def __init__(self, w: GPT2Weights, rows_hint: int, backend: str, attention: str = "sdpa"):
        self.w = w
        self.fused_gelu = w.activation in TANH_GELU
        self.lin = {name: [_Linear(w.weight[name][i].t(), w.bias[name][i, 0], rows_hint, backend)
                           for i in range(w.n_layers)] for name in w.weight}
        self.attention = cpu_kernels.CausalAttention(attention)
        self.cells = [_Cell(self, i) for i in range(w.n_layers)]  # `gpt2_cell`'s per-layer view of the above

    def __call__(self, name: str, x: Tensor, layers: slice, act: bool = False, add: Tensor | None = None) -> Tensor:
        lin = self.lin[name][layers.start]
        if act and not self.fused_gelu:
            y = self.w.act(lin(x[0]))
            return (y if add is None else y + add[0]).unsqueeze(0)
        return lin(x[0], gelu=act, add=None if add is None else add[0]).unsqueeze(0)


class _Cell:
    """One layer of `_PackedLinear` as `gpt2_block.gpt2_cell` takes it: the layer's parameters resolved once
    (layer norms as 1-D weight and bias, the attention scale as a float) and its products as 2-D calls."""

    def __init__(self, packed: _PackedLinear, i: int):
        w = packed.w
        self.ln1 = (w.ln1[0][i, 0], w.ln1[1][i, 0])
        self.ln2 = (w.ln2[0][i, 0], w.ln2[1][i, 0])
        self.ln_eps, self.heads, self.head_dim, self.scale = w.ln_eps, w.heads, w.head_dim, w.scales[i]
        self.qkv = packed.lin["qkv"][i]
        self.attention = packed.attention
        self._attn_out, self._mlp_in, self._mlp_out = (packed.lin[k][i] for k in ("attn_out", "mlp_in", "mlp_out"))
        self._act = None if packed.fused_gelu else w.act

    def attn_out(self, x: Tensor, add: Tensor) -> Tensor:
        return self._attn_out(x, add=add)

    def mlp_in(self, x: Tensor) -> Tensor:
        return self._mlp_in(x, gelu=True) if self._act is None else self._act(self._mlp_in(x))

    def mlp_out(self, x: Tensor, add: Tensor) -> Tensor:
        return self._mlp_out(x, add=add)


def _identity(t: Tensor) -> tuple:
    """Same memory, layout and version (in-place edits bump the version shared by views and detached copies)."""
    return t.data_ptr(), t.shape, t.stride(), t._version


def lean_eligible(model: ARMTModel) -> str | None:
    """None if `LeanStep` can run this model, else why not (one sentence)."""
    return LeanStep.why_not(model)


class LeanStep:
    """The segment step of `model` on the CPU (see module docstring). Build once per run: it copies and
    packs the weights, so later weight changes need a new LeanStep."""

    def __init__(self, model: ARMTModel, kernels: str | None = None):
        """kernels: the linear backend, "onednn", "mkl" or "auto" (default: the ARMT_VIZ_CPU_KERNELS environment
        variable, else auto: chosen per CPU, see `cpu_kernels.choose`); the choice and why: `self.kernels`."""
        reason = self.why_not(model)
        if reason:
            raise ValueError(f"LeanStep cannot run this model: {reason}")
        cfg, bb = model.config, model.backbone
        self.model, self.cfg = model, cfg
        rows = cfg.segment_size + cfg.num_mem_tokens
        self.kernels = cpu_kernels.choose(rows, kernels)
        lin = self.kernels.linear
        tr = bb.transformer
        self.wte, self.wpe = tr.wte.weight.detach(), tr.wpe.weight.detach()
        self.ln_f = (tr.ln_f.weight.detach(), tr.ln_f.bias.detach(), tr.ln_f.eps)
        head = bb.lm_head
        self.lm_head = _Linear(head.weight, head.bias, cfg.segment_size, lin)
        # the GPT-2 blocks: the shared functional block (gpt2_block.py) over packed per-layer products
        self.gpt2 = GPT2Weights(model)
        self.linear = _PackedLinear(self.gpt2, rows, lin, self.kernels.attention)
        self.layers = [dict(mq=_Linear(blk.W_mq.weight, None, rows, lin),  # -> q; the read makes [q, -q]
                            hooks=blk.memory) for blk in model.blocks]
        # the writes of all layers run together after the last block (a layer's write feeds only the next
        # segment): W_mk, W_mv, W_mb of every layer as one stacked [layer, d, d_mem + d + gate] product
        self.kvb_w = torch.stack([torch.cat([b.W_mk.weight, b.W_mv.weight, b.W_mb.weight]).detach().t()
                                  for b in model.blocks]).contiguous()
        self.kvb_b = torch.stack([torch.cat([torch.zeros(cfg.d_mem + model.d_model), b.W_mb.bias.detach()])
                                  for b in model.blocks]).unsqueeze(1)
        self._last = None  # (identities of every layer's A and z, stacked [A | z]) of the state last returned
        self._pos_cache: dict[int, Tensor] = {}
        self._roll_idx: dict[int, Tensor] = {}
        self._points = [p for lay in self.layers for p in lay["hooks"].points()]
        self._hooked_now = True
        self._dshape = [model.d_model]

    @staticmethod
    def why_not(model: ARMTModel, state: MemoryState | None = None, ids: Tensor | None = None) -> str | None:
        """None if the lean step can run `model` (and, when given, segment `ids` from `state` now), else why not."""
        cfg = model.config
        if ids is not None:
            if torch.is_grad_enabled() and (any(p.requires_grad for p in model.parameters()) or (
                    state is not None and any(t.requires_grad for t in state.assoc + state.normalizer))):
                return "autograd is on, and the lean step computes no gradients"
            if torch.is_autocast_enabled("cpu"):
                return "CPU autocast is on, and the lean step runs float32 only"
        if model.training:
            return ("the lean step is inference-only (no dropout), but the model is in training mode; call "
                    "model.eval() first")
        if model.adapter.family != "gpt2":
            return f"the lean CPU step implements the GPT-2 backbone, this model's is {model.adapter.family!r}"
        if model.memory.device.type != "cpu":
            return f"the lean step is for the CPU, the model is on {model.memory.device}"
        if model.memory.dtype != torch.float32:
            return f"the lean step runs float32 weights, the model's are {model.memory.dtype}"
        if cfg.n_heads != 1:
            return f"the lean step implements one memory head, the model has n_heads={cfg.n_heads}"
        hf = model.backbone.config
        if getattr(hf, "add_cross_attention", False):
            return "the GPT-2 backbone has cross-attention"
        if hf.activation_function not in _GELU_TANH + ("gelu", "relu", "silu"):
            return f"activation {hf.activation_function!r} is not implemented by the lean step"
        return None

    # ------------------------------------------------------------------ memory math (one head)
    def _features(self, x: Tensor) -> Tensor:
        """DPFP of [rows, d_mem] -> [rows, 2*nu*d_mem] with the products of memory.dpfp in its order
        (bit-identical): x' = relu([x, -x]), then `_features_pm`."""
        return self._features_pm(torch.cat([x, -x], dim=-1))

    def _features_pm(self, x_pm: Tensor) -> Tensor:
        """DPFP from [x, -x] [rows, n] (n = 2 d_mem; the read's query map produces it directly): x' = relu in
        place, then block j of phi is x' * roll(x', j), all nu blocks by one gather of the rolled columns and
        one broadcast multiply."""
        y = x_pm.clamp_min_(0)
        rows, n = y.shape
        idx = self._roll_idx.get(n)
        if idx is None:  # roll(x', j)[i] = x'[(i - j) mod n], j = 1..nu
            idx = self._roll_idx[n] = torch.cat([torch.arange(-j, n - j) % n for j in range(1, self.cfg.nu + 1)])
        rolled = torch.index_select(y, 1, idx).view(rows, -1, n)
        phi = torch.mul(y.unsqueeze(1), rolled).view(rows, -1)
        if self.cfg.normalize_features:
            phi = F.normalize(phi, dim=-1)
        return phi

    def _memories(self, state: MemoryState) -> Tensor:
        """[A | z] of every layer as one [layer, b, F, D+1] tensor ([.., D] without a normalizer): one product
        then gives the numerators and the denominator of a read. Reused from the last step when `state`
        still holds that step's tensors (also detached, unmodified)."""
        ident = tuple(_identity(t) for t in state.assoc + state.normalizer)
        if self._last is not None and self._last[0] == ident:
            return self._last[1]
        if not self.cfg.use_denom:
            return torch.stack([a[:, 0] for a in state.assoc])
        return torch.stack([torch.cat([a[:, 0], z[:, 0, :, None]], dim=-1)
                            for a, z in zip(state.assoc, state.normalizer)])

    def _recall(self, phi: Tensor, Az: Tensor, B: int) -> tuple[Tensor, Tensor]:
        """Numerators A^T phi [B, n, D] and denominators z.phi + eps [B, n, 1] for phi [B*n, F]."""
        cfg = self.cfg
        D = self.model.d_model
        if Az.shape[0] == 1:
            out = _matmul_t(phi, Az[0], self.kernels.linear).reshape(B, -1, Az.shape[-1])
        else:
            out = torch.bmm(phi.reshape(B, -1, phi.shape[-1]), Az)
        num = out[..., :D]
        den = out[..., D:] + cfg.eps if cfg.use_denom else torch.ones_like(out[..., :1])
        return num, den

    def _recall_rows(self, phi: Tensor, Azs: Tensor, i: int, B: int) -> tuple[Tensor, Tensor]:
        """`_recall` of layer i as rows: numerators [B*n, D] and denominators [B*n, 1]."""
        cfg, D = self.cfg, self.model.d_model
        if Azs.shape[1] == 1:
            out = _matmul_t(phi, Azs[i, 0], self.kernels.linear)
        else:
            out = torch.bmm(phi.reshape(B, -1, phi.shape[-1]), Azs[i]).reshape(phi.shape[0], -1)
        return out[:, :D], (out[:, D:] + cfg.eps if cfg.use_denom else torch.ones_like(out[:, :1]))

    def _write_all(self, mem: list[Tensor], Az: Tensor, first: bool, B: int) -> Tensor:
        """Delta-rule writes of every layer at once: mem[l] [B, M, d] are layer l's memory-token outputs,
        Az the stacked [layer, b, F, D+1] memory before them; returns the new stacked [A | z]."""
        cfg = self.cfg
        M, D, dm, nL = cfg.num_mem_tokens, self.model.d_model, cfg.d_mem, len(mem)
        hooks = [lay["hooks"] for lay in self.layers]
        per_layer = lambda x: x.reshape(nL, B, *x.shape[1:])  # noqa: E731  ([layer*B, ...] -> one [B, ...] per layer)
        kvb = torch.baddbmm(self.kvb_b, torch.stack(mem).reshape(nL, B * M, -1), self.kvb_w)  # [layer, B*M, .]
        hooked = self._hooked_now
        if hooked:
            for hk, x in zip(hooks, kvb[..., :dm]):
                hk.hook_write_key(x.reshape(B, M, dm))
        k3 = self._features(kvb[..., :dm].reshape(-1, dm)).reshape(nL * B, M, -1)
        v = kvb[..., dm:dm + D].reshape(nL * B, M, D)
        beta = torch.sigmoid(kvb[..., dm + D:]).reshape(nL * B, M, -1)
        if hooked:
            for hk, v_l, beta_l in zip(hooks, per_layer(v), per_layer(beta)):
                hk.hook_write_value(v_l)
                hk.hook_write_gate(beta_l)
        Az = Az.expand(nL, B, *Az.shape[2:]).reshape(nL * B, *Az.shape[2:])
        if first:
            vbar = torch.zeros_like(v)
            gamma = torch.ones(nL * B, M, 1, dtype=v.dtype)
        else:
            out = torch.bmm(k3, Az)
            den = out[..., D:] + cfg.eps if cfg.use_denom else None
            vbar = out[..., :D] / den if cfg.use_denom else out
            if cfg.use_denom and cfg.correction:
                knorm = (k3 * k3).sum(-1, keepdim=True) + (cfg.eps if cfg.gamma_eps else 0.0)
                gamma = torch.clamp(1 - den / knorm, 0, 1)
            else:
                gamma = torch.ones(nL * B, M, 1, dtype=v.dtype)
            if not cfg.delta_rule:  # the control: u = beta v
                vbar = torch.zeros_like(v)
        delta = beta * (v - vbar)
        if hooked:
            for hk, vbar_l, gamma_l, delta_l in zip(hooks, per_layer(vbar), per_layer(gamma), per_layer(delta)):
                hk.hook_write_prev_value(vbar_l)
                hk.hook_correction(gamma_l)
                hk.hook_write_delta(delta_l)
        # A += sum_j k_j (x) delta_j and z += sum_j gamma_j k_j, as one product: k^T [delta | gamma]
        upd = torch.cat([delta, gamma], dim=-1) if cfg.use_denom else delta
        return torch.baddbmm(Az, k3.transpose(1, 2), upd).reshape(nL, B, *Az.shape[1:])

    def _hooked(self) -> bool:
        """Whether any memory hook point has an observer (else the hook calls and their views are skipped)."""
        return any(p.fns for p in self._points)

    # ------------------------------------------------------------------ the step
    def __call__(self, input_ids: Tensor, state: MemoryState | None, segment: int) -> SegmentOutput:
        D = self.model.d_model
        if state is None:
            state = self.model.init_state(input_ids.shape[0], input_ids.device)
        self._hooked_now = self._hooked()
        # inference mode drops autograd's per-op bookkeeping (~6 % of this step) in the blocks; the logits and
        # the new memory are computed after it, so they are ordinary tensors (hooked tensors of the blocks are
        # inference tensors)
        with torch.inference_mode():
            hs, mem, Azs = self._blocks(input_ids, state)
        with torch.no_grad():  # these produce the outputs, so they are ordinary tensors without a copy
            B, L = input_ids.shape
            logits = self.lm_head(torch.layer_norm(hs, self._dshape, *self.ln_f)).reshape(B, L, -1)
            new_Az = self._write_all(mem, Azs, state.first, B)
        new_A, new_Z = [], []
        hooked = self._hooked_now
        A_all = new_Az[..., :D].unsqueeze(2)  # views of the stacked [A | z]
        Z_all = new_Az[..., D].unsqueeze(2) if self.cfg.use_denom else None
        for i, lay in enumerate(self.layers):
            hk = lay["hooks"]
            a_new = A_all[i]
            if Z_all is not None:
                z_new = Z_all[i]
            else:
                z_new = state.normalizer[i].expand(input_ids.shape[0], 1, -1).clone()
            new_A.append(hk.hook_assoc_matrix(a_new) if hooked else a_new)
            new_Z.append(hk.hook_normalizer(z_new) if hooked else z_new)
        self._last = (tuple(_identity(t) for t in new_A + new_Z), new_Az)
        return SegmentOutput(logits, MemoryState(tuple(new_A), tuple(new_Z), state.segments + 1), segment, input_ids)

    def _blocks(self, input_ids: Tensor, state: MemoryState) -> tuple[Tensor, list[Tensor], Tensor]:
        """Embedding, then per layer read -> block; returns the last hidden states of the L tokens
        [B*L, d], every layer's memory-token outputs [B, M, d] and the stacked memory read."""
        model, cfg = self.model, self.cfg
        B, L = input_ids.shape
        M = cfg.num_mem_tokens
        T = L + M
        x = torch.cat([F.embedding(input_ids, self.wte), self.memory_rows(B)], dim=1) + self._positions(L)
        h = x.reshape(B * T, -1)
        read = not state.first and not model._slot.ablate_read
        Azs = self._memories(state)
        hooked = self._hooked_now
        mem = []
        for i, lay in enumerate(self.layers):
            hk = lay["hooks"]
            if read:
                q = lay["mq"](h)
                phi = self._features_pm(torch.cat([q, q.neg()], dim=1))
                if hooked:
                    hk.hook_read_query(phi.reshape(B, T, 1, -1))
                    num, den = self._recall(phi, Azs[i], B)
                    hk.hook_read_denominator(den)
                    if hk.active("hook_read_out"):
                        h = h + hk.hook_read_out(num / den).reshape(B * T, -1)
                    else:
                        h = torch.addcdiv(h.reshape(B, T, -1), num, den).reshape(B * T, -1)
                else:  # the same products on [B*T, .] rows, without the per-sample views
                    h = torch.addcdiv(h, *self._recall_rows(phi, Azs, i, B))
            h_in = h
            h = gpt2_cell(h, self.linear.cells[i], B, T)
            if hooked and hk.active("hook_mem_input"):
                hk.hook_mem_input(h_in.reshape(B, T, -1)[:, -M:])
            m_out = h.reshape(B, T, -1)[:, -M:]
            mem.append(hk.hook_mem_output(m_out) if hooked else m_out)
        return h.reshape(B, T, -1)[:, :L].reshape(B * L, -1), mem, Azs

    def _positions(self, L: int) -> Tensor:
        """Position embeddings of the L tokens and M memory tokens (cached per L)."""
        pe = self._pos_cache.get(L)
        if pe is None:
            M, P = self.cfg.num_mem_tokens, self.model.mem_position
            pos = torch.arange(L + M) if P is None else torch.cat([torch.arange(L), torch.arange(P, P + M)])
            pe = self._pos_cache[L] = self.wpe[pos]
        return pe

    def memory_rows(self, B: int) -> Tensor:
        return self.model.memory.detach().unsqueeze(0).expand(B, -1, -1)


@contextlib.contextmanager
def use_lean(model: ARMTModel, lean: LeanStep | None = None):
    """Inside the block, `model.step` (and so `stream`, `forward` and `record`) runs the lean CPU step for
    segments it can take (no padding mask, writing, no autograd); others take the HF path as usual."""
    lean = lean or LeanStep(model)
    old = model._slot.lean
    model._slot.lean = lean
    try:
        yield lean
    finally:
        model._slot.lean = old
