"""Origin decomposition: stale metrics that are exact under the delta rule (DESIGN.md §4, issue 13).

A segment's writes replace what the memory holds along their keys (ARMT_SPEC.md §1.5). With the pre-segment
memory (A, z), write j's key features phi_j, gate beta_j (a scalar, one per head, or one per hidden channel c),
value v_j (before v-bar is subtracted) and D_j = z.phi_j + eps (per head; 1 with use_denom=False):

    A' = O A + sum_j phi_j (x) beta_j v_j,       O[:, c] = I - sum_j beta_{j,c} phi_j phi_j^T / D_j

(O acts on the key side, one operator per hidden channel when the gate is per channel; block-diagonal over
heads). Unrolled from the empty memory, every write o *injects* beta_o v_o along its key, and every later
segment erodes that key:

    A_S = sum_o C_o(S),     C_o(S)[:, c] = s_o(S)[:, c] beta_{o,c} v_{o,c},     s_o(S)[:, c] = prod_{t>o} O_t[:, c] phi_o

This module computes the C_o from a `writes`-level trace: beta_o v_o = u_o + beta_o v-bar_o, with u_o the stored
delta and v-bar_o = A^T phi_o / D_o from the memory rebuilt by the same recurrence, so sum_o C_o(S) equals the
trace's memory (`memory_at`) to float64 rounding, whatever the storage dtype. Rules of the model: the first
segment of a trace does not erode (v-bar = 0 there) and a trace recorded with `delta_rule=False` never erodes
(u = beta v); `correction` (gamma) enters only through z, which is rebuilt from the stored gamma.

Sets of origins evolve under the same operator, so the running computation keeps one matrix per *group* of
origins whose status can still change (a live fact version), plus one pool per settled status; a write is never
tracked alone unless asked (`origin_contributions`). Status of an origin segment (its memory tokens, every layer,
carry all the fact versions the segment holds: `armt_viz.analysis._ledger`):

    memory-wide, at S:  current     every version the segment holds is still the latest at S
                        superseded  every version it holds is superseded at S (a later write or a delete)
                        other       some of both (the memory tokens read the whole segment, so it cannot be split)
                        no-fact     the segment holds no fact version (filler, queries)
    relative to fact f: current     it holds f's version that is the latest at S
                        superseded  it holds only older versions of f
                        other       it holds versions of other facts only
                        no-fact     it holds no fact version

The per-write view (`attribute_read(by=None)`, `stale_mass(method="write")`) sums what each write *added*
(phi_w (x) u_w); it shows large stale and current terms that cancel, because u = beta (v - v-bar) of a rewrite
carries minus the old value. The origin view shows what each write's value still contributes: the net.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..config import ARMTConfig
from ._common import as_numpy, check_trace, config_of, feature_map, head_mask, named, per_run
from ._ledger import Facts, facts_of, ledger_of

__all__ = ["ORIGIN_STATUS", "memory_by_origin", "origin_contributions", "origin_read", "origin_stale_mass",
           "fact_residual", "attribute_read_origin", "OriginScan", "segment_schedule"]

ORIGIN_STATUS = ("current", "superseded", "other", "no-fact")
_CUR, _SUP, _OTH, _NF = 0, 1, 2, 3
NEVER = np.iinfo(np.int64).max
_NEEDS = ("write_key", "write_delta", "write_gate", "write_correction")


# ------------------------------------------------------------------------------------------------ inputs
def _write_vars(ds: xr.Dataset) -> list[str]:
    return [n for n in _NEEDS + ("write_gate_channel",) if n in ds.variables]


def _select(ds: xr.Dataset, sample: int, layer: int, seg: slice) -> xr.Dataset:
    """The write variables of one (sample, layer) over positions `seg` (lazy if the trace is)."""
    return xr.Dataset({n: ds[n].variable for n in _write_vars(ds)}).isel(sample=sample, layer=layer, segment=seg)


def _writes_from(sub: xr.Dataset, config: ARMTConfig):
    """key [seg, mem, key_dim], u [seg, mem, hidden], beta per hidden channel [seg, mem, hidden], gamma [seg, mem,
    head] (float64) from a `_select`ed Dataset. beta is exact only with the full gate (`write_gate_channel`)."""
    sub = sub.load()
    key = np.asarray(sub["write_key"].transpose("segment", "mem_token", "key_dim").values, dtype=np.float64)
    u = np.asarray(sub["write_delta"].transpose("segment", "mem_token", "hidden").values, dtype=np.float64)
    gamma = np.asarray(sub["write_correction"].transpose("segment", "mem_token", "head").values, dtype=np.float64)
    hidden, heads = u.shape[-1], config.n_heads
    if "write_gate_channel" in sub.variables:
        g = np.asarray(sub["write_gate_channel"].transpose("segment", "mem_token", "gate_channel").values,
                       dtype=np.float64)
        if g.shape[-1] not in (1, heads, hidden):
            raise ValueError(f"write_gate_channel has {g.shape[-1]} channels; expected 1, n_heads={heads} or "
                             f"hidden={hidden}")
        beta = g if g.shape[-1] == hidden else np.repeat(g, hidden // g.shape[-1], axis=-1)
    elif config.gating or heads > 1:
        raise ValueError(
            "the origin decomposition needs the full write gate beta (one per "
            f"{'hidden channel' if config.gating else 'head'}), but this trace stores only its mean (`write_gate`); "
            "record it again with this armt_viz version (it adds `write_gate_channel`)")
    else:
        g = np.asarray(sub["write_gate"].transpose("segment", "mem_token").values, dtype=np.float64)
        beta = np.repeat(g[..., None], hidden, axis=-1)
    return key, u, beta, gamma


def _load_writes(ds: xr.Dataset, config: ARMTConfig, sample: int, layer: int, seg: slice):
    """Write events of one (sample, layer) over positions `seg` (see `_writes_from`)."""
    return _writes_from(_select(ds, sample, layer, seg), config)


# ------------------------------------------------------------------------------------------------ the scan
class OriginScan:
    """The memory of one (sample, layer) rebuilt segment by segment, with tracked groups of origins.

    State: A [key_feature, hidden], z [key_feature], and `groups` [G, key_feature, hidden], each the summed
    C_o(S) of a set of origins. `step` erodes every group by the segment's operator O_t and returns the
    segment's own injection E_t = sum_j phi_j (x) beta_j v_j (masked to the head blocks); the caller adds it to
    the groups it belongs to. The groups a caller keeps summing to A is its own bookkeeping (checked in tests).
    """

    def __init__(self, config: ARMTConfig, hidden: int, capacity: int = 8):
        self.cfg = config
        self.F, self.D, self.H = config.d_key, hidden, config.n_heads
        self.mask = head_mask(config, hidden) if self.H > 1 else None
        self.A = np.zeros((self.F, hidden))
        self.z = np.zeros(self.F)
        self.groups = np.zeros((capacity, self.F, hidden))
        self.segments = 0  # segments scanned so far (the next one is `first` iff 0)

    # -- groups
    def ensure(self, n: int) -> None:
        if n > len(self.groups):
            grown = np.zeros((max(n, 2 * len(self.groups)), self.F, self.D))
            grown[: len(self.groups)] = self.groups
            self.groups = grown

    def _masked(self, x: np.ndarray) -> np.ndarray:
        return x if self.mask is None else x * self.mask

    # -- the recurrence
    def features(self, key: np.ndarray) -> np.ndarray:
        """phi of pre-feature keys [..., key_dim] -> [..., F] (compute a block's at once: cheaper than per segment)."""
        cfg = self.cfg
        return feature_map(key, cfg.n_heads, cfg.nu, cfg.normalize_features)

    def prepare(self, key: np.ndarray, u: np.ndarray, beta: np.ndarray, phi: np.ndarray | None = None):
        """Segment quantities from the pre-segment memory: phi [J, F], coef = beta / D [J, hidden] (None: O = I),
        bv = beta v [J, hidden], and D [J, heads]. `phi` may be passed precomputed (`features`)."""
        cfg = self.cfg
        phi = self.features(key) if phi is None else phi  # [J, F]
        J = phi.shape[0]
        if cfg.use_denom:
            den = (phi.reshape(J, self.H, -1) * self.z.reshape(self.H, -1)).sum(-1) + cfg.eps  # [J, H]
        else:
            den = np.ones((J, self.H))
        if self.segments == 0 or not cfg.delta_rule:
            return phi, None, u, den
        den_c = np.repeat(den, self.D // self.H, axis=1)  # [J, hidden]
        vbar = (phi @ self.A) / den_c
        return phi, beta / den_c, u + beta * vbar, den

    def erode(self, x: np.ndarray, phi: np.ndarray, coef) -> np.ndarray:
        """O_t applied to x [..., F, hidden] (key side, per channel)."""
        if coef is None:
            return x
        p = (phi @ x) * coef  # [..., J, hidden]
        return x - self._masked(phi.T @ p)

    def step(self, key, u, beta, gamma, n_groups: int | None = None, phi=None):
        """Advance one segment: erode the first `n_groups` groups (all if None); return (E_t, phi, coef, bv, den)."""
        phi, coef, bv, den = self.prepare(key, u, beta, phi)
        n = len(self.groups) if n_groups is None else n_groups
        if n and coef is not None:
            self.groups[:n] = self.erode(self.groups[:n], phi, coef)
        inject = self._masked(phi.T @ bv)
        self.A = self.A + self._masked(phi.T @ u)
        if self.cfg.use_denom:
            g = np.repeat(gamma, self.F // self.H, axis=1)  # [J, F]
            self.z = self.z + (g * phi).sum(0)
        self.segments += 1
        return inject, phi, coef, bv, den


# ------------------------------------------------------------------------------------------------ schedules
def segment_schedule(facts: Facts | None, sample: int, n_segments: int, fact: int | None = None):
    """Per origin segment 0..n-1: (kind, tau_a, tau_b) describing its status over time S.

    kind 0 = live: current while S < tau_a, other while tau_a <= S < tau_b, superseded from tau_b on;
    kind 2 = always other; kind 3 = always no-fact. Memory-wide (fact None): tau_a / tau_b = the first / last
    supersession segment of the versions the segment holds (NEVER if never superseded). Relative to `fact`:
    tau_a = tau_b = supersession of the newest version of `fact` the segment holds; other facts -> kind 2.
    """
    kind = np.full(n_segments, _NF, dtype=np.int64)
    tau_a = np.full(n_segments, NEVER, dtype=np.int64)
    tau_b = np.full(n_segments, NEVER, dtype=np.int64)
    if facts is None or n_segments == 0:
        return kind, tau_a, tau_b
    sel = np.flatnonzero((facts.held_sample == sample) & (facts.held_segment < n_segments))
    if not len(sel):
        return kind, tau_a, tau_b
    seg = facts.held_segment[sel]
    sup = facts._superseded_of_held()[sel]
    tau = np.where(sup < 0, NEVER, sup)
    if fact is None:
        kind[seg] = 0
        tau_a[:] = NEVER
        np.minimum.at(tau_a, seg, tau)
        tau_b[seg] = -1
        np.maximum.at(tau_b, seg, tau)
        tau_b[kind != 0] = NEVER
        return kind, tau_a, tau_b
    kind[seg] = 2
    mine = facts.held_fact[sel] == fact
    if mine.any():
        s_m, v_m, t_m = seg[mine], facts.held_version[sel][mine], tau[mine]
        order = np.lexsort((v_m, s_m))  # per segment, the newest version last
        s_m, t_m = s_m[order], t_m[order]
        last = np.r_[s_m[1:] != s_m[:-1], True]
        kind[s_m[last]] = 0
        tau_a[s_m[last]] = t_m[last]
        tau_b[s_m[last]] = t_m[last]
    return kind, tau_a, tau_b


def _status_at(kind, tau_a, tau_b, S: int) -> np.ndarray:
    """Status code of each origin segment at time S (see `segment_schedule`)."""
    live = np.where(S < tau_a, _CUR, np.where(S < tau_b, _OTH, _SUP))
    return np.where(kind == 0, live, np.where(kind == 2, _OTH, _NF))


class _StatusPools:
    """Groups for status bookkeeping: pools 0..3 hold settled origins by status code (0 and 2 stay empty:
    current/other origins are live groups); live groups are keyed by (tau_a, tau_b) from slot 4 on."""

    def __init__(self, scan: OriginScan, kind, tau_a, tau_b):
        self.scan, self.kind, self.tau_a, self.tau_b = scan, kind, tau_a, tau_b
        scan.ensure(8)
        self.live: dict[tuple[int, int], int] = {}
        self.free: list[int] = []
        self.n = 4

    def step(self, t: int, key, u, beta, gamma, phi=None):
        scan = self.scan
        inject, *_ = scan.step(key, u, beta, gamma, n_groups=self.n, phi=phi)
        k = int(self.kind[t])
        if k == 0:
            slot = self._slot((int(self.tau_a[t]), int(self.tau_b[t])))
        else:
            slot = _NF if k == 3 else _OTH
        scan.groups[slot] += inject
        # settle live groups superseded at t
        for key_, s in list(self.live.items()):
            if key_[1] <= t:
                scan.groups[_SUP] += scan.groups[s]
                scan.groups[s] = 0
                del self.live[key_]
                self.free.append(s)

    def _slot(self, key_) -> int:
        s = self.live.get(key_)
        if s is None:
            if self.free:
                s = self.free.pop()
            else:
                s = self.n
                self.n += 1
                self.scan.ensure(self.n)
            self.live[key_] = s
        return s

    def stale_norms(self, S: int) -> tuple[float, float]:
        parts = self.by_status(S)
        return _norms(parts[_SUP]), _norms(parts[_SUP] + parts[_OTH])

    def by_status(self, S: int) -> np.ndarray:
        """[4, F, hidden]: the memory after S split by status (requires the scan to be at S)."""
        out = self.scan.groups[:4].copy()
        for (ta, tb), s in self.live.items():
            out[_CUR if S < ta else (_OTH if S < tb else _SUP)] += self.scan.groups[s]
        return out


class _LowRankPools:
    """The same bookkeeping as `_StatusPools` when the gate is constant within each head (no per-channel gating):
    a live origin o is kept as its eroded key s_o (a column of K [F, R]) and its value beta_o v_o (a row of V
    [R, hidden]), since C_o = s_o (x) beta_o v_o; erosion then costs J*F*R instead of J*F*hidden per group. Settled
    pools (superseded, other, no-fact) stay dense. Same results as `_StatusPools` to rounding (tested)."""

    def __init__(self, scan: OriginScan, kind, tau_a, tau_b):
        self.scan, self.kind, self.tau_a, self.tau_b = scan, kind, tau_a, tau_b
        F, D = scan.F, scan.D
        self.pools = np.zeros((4, F, D))
        self.used = [False] * 4  # pools that received anything (only those are eroded)
        self.K = np.zeros((F, 0))
        self.V = np.zeros((0, D))
        self.ta = np.zeros(0, dtype=np.int64)
        self.tb = np.zeros(0, dtype=np.int64)

    def _outer(self, cols) -> np.ndarray:
        return self.scan._masked(self.K[:, cols] @ self.V[cols])

    def step(self, t: int, key, u, beta, gamma, phi=None):
        scan = self.scan
        phi, coef, bv, den = scan.prepare(key, u, beta, phi)
        if coef is not None:
            for i in (_SUP, _OTH, _NF):
                if self.used[i]:
                    self.pools[i] = scan.erode(self.pools[i], phi, coef)
            if self.K.shape[1]:
                H, Dh = scan.H, scan.D // scan.H
                ch = coef[:, ::Dh]  # [J, H]: constant within a head
                if H == 1:
                    self.K -= phi.T @ ((phi @ self.K) * ch)
                else:
                    ph = phi.reshape(phi.shape[0], H, -1)
                    Kh = self.K.reshape(H, -1, self.K.shape[1])
                    p = np.einsum("jhf,hfr->jhr", ph, Kh) * ch[:, :, None]
                    self.K = (Kh - np.einsum("jhf,jhr->hfr", ph, p)).reshape(self.K.shape)
        # advance A, z exactly as OriginScan.step
        scan.A += scan._masked(phi.T @ u)
        if scan.cfg.use_denom:
            scan.z = scan.z + (np.repeat(gamma, scan.F // scan.H, axis=1) * phi).sum(0)
        scan.segments += 1
        k = int(self.kind[t])
        if k == 0:
            J = phi.shape[0]
            self.K = np.concatenate([self.K, phi.T], axis=1)
            self.V = np.concatenate([self.V, bv], axis=0)
            self.ta = np.r_[self.ta, np.full(J, self.tau_a[t])]
            self.tb = np.r_[self.tb, np.full(J, self.tau_b[t])]
        else:
            self.pools[_NF if k == 3 else _OTH] += scan._masked(phi.T @ bv)
            self.used[_NF if k == 3 else _OTH] = True
        done = self.tb <= t
        if done.any():
            self.pools[_SUP] += self._outer(np.flatnonzero(done))
            self.used[_SUP] = True
            keep = np.flatnonzero(~done)
            self.K, self.V, self.ta, self.tb = self.K[:, keep], self.V[keep], self.ta[keep], self.tb[keep]

    def by_status(self, S: int) -> np.ndarray:
        out = self.pools.copy()
        cur = self.ta > S
        if cur.any():
            out[_CUR] += self._outer(np.flatnonzero(cur))
        if (~cur).any():
            out[_OTH] += self._outer(np.flatnonzero(~cur))
        return out

    def stale_norms(self, S: int) -> tuple[float, float]:
        """(|superseded|_F, |superseded + other|_F) at S without materialising the current part."""
        sup = self.pools[_SUP]
        mixed = np.flatnonzero(self.ta <= S)
        other = self.pools[_OTH] + (self._outer(mixed) if len(mixed) else 0.0)
        return _norms(sup), _norms(sup + other)


def _pools(config: ARMTConfig, hidden: int, kind, tau_a, tau_b):
    """Status bookkeeping: low-rank live origins unless the gate is per channel (then dense groups)."""
    scan = OriginScan(config, hidden, capacity=0 if not config.gating else 8)
    return (_StatusPools if config.gating else _LowRankPools)(scan, kind, tau_a, tau_b)


def _facts(ds, ledger, required=False) -> Facts | None:
    if isinstance(ledger, Facts):
        return ledger
    led = ledger_of(ds, ledger, required=required)
    return None if led is None else facts_of(led)


def _check(ds, segment: int, layer: int, what: str):
    check_trace(ds, _NEEDS, what)
    n_seg = ds.sizes.get("segment", 0)
    if not 0 <= int(segment) < n_seg:
        raise IndexError(f"{what}: segment={segment} is outside the trace's segments [0, {n_seg})")
    if not 0 <= int(layer) < ds.sizes.get("layer", 0):
        raise IndexError(f"{what}: layer={layer} is outside [0, {ds.sizes.get('layer', 0)})")
    seg = as_numpy(ds["segment"]) if "segment" in ds.variables else np.arange(n_seg)
    if not np.array_equal(seg[: int(segment) + 1], np.arange(int(segment) + 1)):
        raise ValueError(f"{what} needs every write from segment 0 (the decomposition unrolls the recurrence from "
                         "the empty memory); do not slice away earlier segments")


# ------------------------------------------------------------------------------------------------ public
@per_run
def memory_by_origin(ds: xr.Dataset, segment: int, layer: int, *, sample: int = 0, fact: int | None = None,
                     ledger=None) -> xr.DataArray:
    """The association matrix after `segment`, split by the status of each part's origin (module docstring).

        M_status = sum_{o: status(o, S) = status} C_o(S),      sum over status = A_S  (`memory_at`)

    Args:
        segment, layer, sample: where (positional indices; the trace must start at segment 0).
        fact: None for the memory-wide statuses, or a fact id for statuses relative to that fact.
        ledger: the task ledger if the trace embeds none; without any ledger every origin is "no-fact".

    Returns:
        DataArray (status, key_feature, hidden), status = current / superseded / other / no-fact; units of A.
        attrs: segment, layer, sample, fact (-1 for memory-wide).
    """
    _check(ds, segment, layer, "memory_by_origin")
    config = config_of(ds)
    facts = _facts(ds, ledger)
    n = int(segment) + 1
    kind, ta, tb = segment_schedule(facts, sample, n, fact)
    key, u, beta, gamma = _load_writes(ds, config, sample, layer, slice(0, n))
    pools = _pools(config, u.shape[-1], kind, ta, tb)
    for t in range(n):
        pools.step(t, key[t], u[t], beta[t], gamma[t])
    out = pools.by_status(n - 1)
    da = xr.DataArray(out, dims=("status", "key_feature", "hidden"), coords={"status": list(ORIGIN_STATUS)})
    return named(da, "memory_by_origin", "association matrix A split by the status of its origins", "1",
                 segment=int(segment), layer=int(layer), sample=int(sample), fact=-1 if fact is None else int(fact))


def origin_contributions(ds: xr.Dataset, segment: int, layer: int, *, sample: int = 0) -> xr.DataArray:
    """C_o(S) of every write event o up to `segment`, densely: dims (write, key_feature, hidden), coords
    write_segment, mem_token and `survival` = |C_o(S)|_F / |phi_o (x) beta_o v_o|_F (the fraction of the injected
    value still in the memory; 1 = untouched, 0 = erased; for a scalar gate |s_o(S)| / |phi_o|). Sums to A_S.
    Costs one [key_feature, hidden] matrix per write: for small traces and tests."""
    _check(ds, segment, layer, "origin_contributions")
    config = config_of(ds)
    n = int(segment) + 1
    key, u, beta, gamma = _load_writes(ds, config, sample, layer, slice(0, n))
    M = key.shape[1]
    scan = OriginScan(config, u.shape[-1], capacity=n * M)
    injected = np.zeros(n * M)
    for t in range(n):
        inject, phi, coef, bv, den = scan.step(key[t], u[t], beta[t], gamma[t], n_groups=t * M)
        for j in range(M):
            c = scan._masked(np.outer(phi[j], bv[j]))
            scan.groups[t * M + j] = c
            injected[t * M + j] = np.linalg.norm(c)
    C = scan.groups[: n * M]
    with np.errstate(invalid="ignore", divide="ignore"):
        surv = np.where(injected > 0, np.linalg.norm(C, axis=(1, 2)) / injected, np.nan)
    da = xr.DataArray(C.copy(), dims=("write", "key_feature", "hidden"), coords={
        "write": np.arange(n * M), "write_segment": ("write", np.repeat(np.arange(n), M)),
        "mem_token": ("write", np.tile(np.arange(M), n)), "survival": ("write", surv)})
    return named(da, "origin_contribution", "what write o's injected value beta_o v_o still contributes to A", "1",
                 segment=int(segment), layer=int(layer), sample=int(sample))


def origin_read(ds: xr.Dataset, read, config: ARMTConfig) -> tuple[np.ndarray, np.ndarray]:
    """Vector contributions of every write event to one recorded read (a `ProbeRead`):

        r = sum_o c_o,    c_o[c] = (Q_o[:, c] . phi_o) beta_{o,c} v_{o,c} / D_read,   Q_o = O_{o+1} ... O_{t-1} q

    (the read uses the memory after segment t-1; the operators are symmetric, so the query is eroded backwards
    once instead of every origin forwards). Returns (c [segment, mem_token, hidden], the rebuilt A_{t-1}^T q / D).
    """
    t = read.segment
    hidden = read.read_out.shape[-1]
    if t == 0:
        return np.zeros((0, config.num_mem_tokens, hidden)), np.zeros(hidden)
    key, u, beta, gamma = _load_writes(ds, config, read.sample, read.layer, slice(0, t))
    scan = OriginScan(config, hidden, capacity=0)
    steps = []
    for s in range(t):
        _, phi, coef, bv, _ = scan.step(key[s], u[s], beta[s], gamma[s], n_groups=0)
        steps.append((phi, coef, bv))
    H = config.n_heads
    den_c = np.repeat(np.asarray(read.denominator, dtype=np.float64).reshape(H), hidden // H)
    Q = scan._masked(np.repeat(read.query[:, None], hidden, axis=1))  # [F, hidden]
    out = np.zeros((t, key.shape[1], hidden))
    for s in range(t - 1, -1, -1):
        phi, coef, bv = steps[s]
        out[s] = (phi @ Q) * bv / den_c  # [J, hidden]
        Q = scan.erode(Q, phi, coef)
    total = (read.query @ scan._masked(scan.A)) / den_c
    return out, total


def _norms(block: np.ndarray) -> np.ndarray:
    return np.sqrt((block * block).sum(axis=(-2, -1)))


def _stale_block(carry, key, u, beta, gamma, t0: int, schedule, config, hidden):
    """Scan segments t0.. of one (sample, layer) from `carry` (None = empty memory); returns
    (carry, [3, n] = |superseded|_F, |superseded + other|_F, |A|_F after each segment)."""
    kind, ta, tb = schedule
    if carry is None:
        pools = _pools(config, hidden, kind, ta, tb)
    else:
        pools = carry
        pools.kind, pools.tau_a, pools.tau_b = kind, ta, tb
    n = key.shape[0]
    out = np.zeros((3, n))
    phi = pools.scan.features(key)  # [n, mem, F], the block's features at once
    for i in range(n):
        t = t0 + i
        pools.step(t, key[i], u[i], beta[i], gamma[i], phi[i])
        out[0, i], out[1, i] = pools.stale_norms(t)
        out[2, i] = _norms(pools.scan.A)
    return pools, out


def _fast_ok(config: ARMTConfig) -> bool:
    """The per-head scan (`_stale_scan`) applies when the gate is constant within each head."""
    return not config.gating


def stale_norms_blocks(ds: xr.Dataset, sample: int, schedule, *, start: int = 0, stop: int | None = None,
                       carry=None, block_segments: int = 512):
    """Eagerly scan one sample from `start` (with `carry` = the state after segment start-1; None when start is 0)
    to `stop`; yields (b0, b1, norms [3, b1 - b0, layer], carry) per block: |superseded|_F, |superseded +
    other|_F and |A|_F after each segment (see `origin_stale_mass`)."""
    config = config_of(ds)
    n_seg, n_layer, hidden = ds.sizes["segment"], ds.sizes["layer"], ds.sizes["hidden"]
    stop = n_seg if stop is None else stop
    if (carry is None) != (start == 0):
        raise ValueError("stale_norms_blocks: pass carry (the state after segment start-1) iff start > 0")
    for b0 in range(start, stop, block_segments):
        b1 = min(stop, b0 + block_segments)
        carry, norms = _norms_block(carry, _load_block(ds, config, sample, b0, b1), b0, schedule, config,
                                    n_layer, hidden)
        yield b0, b1, norms, carry


def _load_block(ds, config, sample, b0, b1):
    sub = xr.Dataset({n: ds[n].variable for n in _write_vars(ds)}).isel(sample=sample, segment=slice(b0, b1))
    return _block_load(sub, config)


def _block_load(sub, config):
    if _fast_ok(config):
        from ._stale_scan import block_inputs
        return block_inputs(sub, config)
    return [_writes_from(sub.isel(layer=layer), config) for layer in range(sub.sizes["layer"])]


def _norms_block(carry, loaded, t0, schedule, config, n_layer, hidden):
    """One block of every layer of a sample -> (carry, [3, n, layer])."""
    kind, ta, tb = schedule
    if _fast_ok(config):
        from ._stale_scan import StaleScan
        scan = StaleScan(config, n_layer, hidden) if carry is None else carry
        out = scan.block(t0, *loaded, kind, ta, tb)
        return scan, out
    carry = [None] * n_layer if carry is None else carry
    outs = []
    for layer in range(n_layer):
        key, u, beta, gamma = loaded[layer]
        carry[layer], o = _stale_block(carry[layer], key, u, beta, gamma, t0, schedule, config, hidden)
        outs.append(o)
    return carry, np.stack(outs, axis=-1)


def _norms_task(carry, sub, t0, schedule, config, n_layer, hidden):
    return _norms_block(carry, _block_load(sub, config), t0, schedule, config, n_layer, hidden)


def stale_value(norms, rule: str, normalize: bool):
    """[3, ...] norms -> the stale mass (or its numerator) for `rule`; works on numpy and dask arrays."""
    num = norms[0 if rule == "all" else 1]
    if not normalize:
        return num
    with np.errstate(invalid="ignore", divide="ignore"):
        den = norms[2]
        if isinstance(den, np.ndarray):
            return num / np.where(den > 0, den, np.nan)
        import dask.array as dsa
        return num / dsa.where(den > 0, den, np.nan)


def _check_rule(rule):
    if rule not in ("any", "all"):
        raise ValueError(f"rule must be 'any' or 'all', got {rule!r}")


def origin_stale_da(ds: xr.Dataset, value, rule: str, normalize: bool) -> xr.DataArray:
    """Label a [sample, segment, layer] value of `origin_stale_mass`."""
    n_seg = ds.sizes["segment"]
    seg_index = as_numpy(ds["segment"]) if "segment" in ds.variables else np.arange(n_seg)
    coords = {"segment": seg_index, "layer": np.arange(ds.sizes["layer"])}
    if "sample" in ds.coords:
        coords["sample"] = ds["sample"].values
    da = xr.DataArray(value, dims=("sample", "segment", "layer"), coords=coords)
    if normalize:
        return named(da, "stale_mass", "surviving superseded fraction of A |sum_superseded C_o|_F / |A|_F "
                     "(origin view)", "1", rule=rule, method="origin")
    return named(da, "stale_assoc_norm", "Frobenius norm of the surviving superseded part |sum_superseded C_o|_F "
                 "(origin view)", "1", rule=rule, method="origin")


def _check_whole(ds, what="stale_mass(method='origin')"):
    n_seg = ds.sizes["segment"]
    seg_index = as_numpy(ds["segment"]) if "segment" in ds.variables else np.arange(n_seg)
    if not np.array_equal(seg_index, np.arange(n_seg)):
        raise ValueError(f"{what} needs the whole trace from segment 0")


@per_run
def origin_stale_mass(ds: xr.Dataset, *, rule: str = "any", normalize: bool = True, ledger=None,
                      block_segments: int = 512, progress=None) -> xr.DataArray:
    """Surviving stale mass over time (dims sample, segment, layer): the part of A that superseded fact versions
    still contribute after the delta rule's erosion (module docstring):

        stale_mass(S) = | sum_{o superseded at S} C_o(S) |_F / | A_S |_F

    rule="any" also counts origins that hold both superseded and current versions ("other" memory-wide), the
    per-write `stale_mass`'s default; rule="all" only those whose versions are all superseded. Units: 1. Range:
    [0, inf); it stays <= 1 unless the superseded part is cancelled by other parts of A. NaN where A_S = 0.
    normalize=False returns the numerator alone (units of A).

    Cost: per segment, two [key_feature, hidden] pools and one column per live fact-version write eroded by the
    segment's M keys, every layer at once (per head when the gate is constant within heads: `_stale_scan`;
    dense per-channel groups with per-channel gating). Lazy on a dask-backed trace: one task per block of
    `block_segments` segments, chained per sample through the carried state, unless `progress` is given:
    then it is computed here block by block, calling progress(done_segments, total_segments) after each block
    (`progress=True`: a tqdm bar). For a trace store, `armt_viz.analysis.stale_cache.cached_origin_norms` keeps
    the result beside the trace and computes only newly committed segments.
    """
    _check_rule(rule)
    check_trace(ds, _NEEDS, "stale_mass(method='origin')")
    _check_whole(ds)
    config = config_of(ds)
    facts = _facts(ds, ledger, required=True)
    n_samples, n_seg, n_layer = ds.sizes["sample"], ds.sizes["segment"], ds.sizes["layer"]
    hidden = ds.sizes["hidden"]
    lazy = ds["write_key"].chunks is not None and progress is None
    if not lazy:
        norms = np.zeros((3, n_samples, n_seg, n_layer))
        report = _progress(progress, n_samples * n_seg)
        done = 0
        for s in range(n_samples):
            schedule = segment_schedule(facts, s, n_seg)
            for b0, b1, out, _ in stale_norms_blocks(ds, s, schedule, block_segments=block_segments):
                norms[:, s, b0:b1] = out
                done += b1 - b0
                report(done)
        report(None)
        return origin_stale_da(ds, stale_value(norms, rule, normalize), rule, normalize)
    import dask
    import dask.array as dsa

    rows = []
    for s in range(n_samples):
        schedule = dask.delayed(segment_schedule(facts, s, n_seg))
        carry, pieces = None, []
        for b0 in range(0, n_seg, block_segments):
            b1 = min(n_seg, b0 + block_segments)
            sub = xr.Dataset({n: ds[n].variable for n in _write_vars(ds)}).isel(sample=s, segment=slice(b0, b1))
            res = dask.delayed(_norms_task, pure=False, nout=2)(carry, sub, b0, schedule, config, n_layer, hidden)
            carry = res[0]
            pieces.append(dsa.from_delayed(res[1], shape=(3, b1 - b0, n_layer), dtype=np.float64))
        rows.append(dsa.concatenate(pieces, axis=1) if pieces else dsa.zeros((3, 0, n_layer)))
    norms = dsa.stack(rows, axis=1)  # [3, sample, segment, layer]
    return origin_stale_da(ds, stale_value(norms, rule, normalize), rule, normalize)


def _progress(progress, total: int):
    """progress: None, True (a tqdm bar) or a callable(done, total); returns report(done | None at the end)."""
    if progress is None or progress is False:
        return lambda done: None
    if progress is True:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="origin stale mass", unit="seg")

        def report(done):
            if done is None:
                bar.close()
            else:
                bar.update(done - bar.n)
        return report
    if not callable(progress):
        raise TypeError(f"progress must be None, True (tqdm) or a callable(done, total), got {type(progress).__name__}")
    return lambda done: progress(total if done is None else done, total)


# ------------------------------------------------------------------------------------------------ per fact
@per_run
def fact_residual(ds: xr.Dataset, layer: int, *, sample: int = 0, at=None, ledger=None) -> xr.Dataset:
    """Per fact and segment: what a read at the fact's own write keys gets from its old versions and from others.

    For fact f at time S, let sigma be the latest segment holding f's current version and phi_j (j = its memory
    tokens) its write keys. Reads of A_S at those keys, r_j = A_S^T phi_j / D_j (D_j = z_S.phi_j + eps), split by
    origin into the current version's part, the old versions' part (superseded versions of f) and the rest:

        residual(f, S)  = sqrt(sum_j |r_j^old|^2)   / sqrt(sum_j |r_j|^2)
        crosstalk(f, S) = sqrt(sum_j |r_j^other|^2) / sqrt(sum_j |r_j|^2)    (other facts and no-fact origins)

    Units: 1 (fractions of the read's norm); range [0, inf), <= 1 unless the parts cancel. NaN before f is
    written, for a zero read, or at S not in `at`. Running state: two matrices per fact (its current version's
    origins, its old versions' origins), so the cost grows with the number of facts, not of writes.

    Returns a Dataset with `residual` and `crosstalk` (dims fact_id, segment) and `n_versions` (versions of f
    written by S), for segments `at` (default every segment).
    """
    check_trace(ds, _NEEDS, "fact_residual")
    config = config_of(ds)
    facts = _facts(ds, ledger, required=True)
    n_seg = ds.sizes["segment"]
    at = np.arange(n_seg) if at is None else np.unique(np.asarray(at, dtype=np.int64))
    if len(at) and (at.min() < 0 or at.max() >= n_seg):
        raise IndexError(f"fact_residual: at= must lie in [0, {n_seg}), got {at.min()}..{at.max()}")
    last = int(at.max()) + 1 if len(at) else 0
    sel = np.flatnonzero((facts.held_sample == sample) & (facts.held_segment < last))
    fact_ids = np.unique(facts.held_fact[sel])
    index = {int(f): i for i, f in enumerate(fact_ids)}
    nF = len(fact_ids)
    # per segment: (fact index, version) pairs it holds
    held = {}
    for r in sel:
        held.setdefault(int(facts.held_segment[r]), []).append((index[int(facts.held_fact[r])], int(facts.held_version[r])))
    key, u, beta, gamma = _load_writes(ds, config, sample, layer, slice(0, last))
    hidden = u.shape[-1]
    scan = OriginScan(config, hidden, capacity=2 * nF)
    cur_version = np.full(nF, -1)
    n_versions = np.zeros(nF, dtype=np.int64)
    keys_of = [None] * nF  # phi of the memory tokens of the latest segment holding the current version
    res = np.full((nF, len(at)), np.nan)
    xt = np.full((nF, len(at)), np.nan)
    nv = np.zeros((nF, len(at)), dtype=np.int64)
    want = {int(s): i for i, s in enumerate(at)}
    H = config.n_heads
    for t in range(last):
        inject, phi, *_ = scan.step(key[t], u[t], beta[t], gamma[t], n_groups=2 * nF)
        for fi, ver in sorted(held.get(t, []), key=lambda p: p[1]):
            if ver > cur_version[fi]:
                if cur_version[fi] >= 0:  # the current version becomes old
                    scan.groups[2 * fi + 1] += scan.groups[2 * fi]
                    scan.groups[2 * fi] = 0
                cur_version[fi] = ver
                n_versions[fi] += 1
        for fi in {p[0] for p in held.get(t, [])}:
            scan.groups[2 * fi] += inject
            keys_of[fi] = phi
        i = want.get(t)
        if i is None:
            continue
        A = scan.A
        for fi in range(nF):
            if keys_of[fi] is None:
                continue
            k = keys_of[fi]
            J = k.shape[0]
            if config.use_denom:
                den = (k.reshape(J, H, -1) * scan.z.reshape(H, -1)).sum(-1) + config.eps
            else:
                den = np.ones((J, H))
            den_c = np.repeat(den, hidden // H, axis=1)
            r = (k @ A) / den_c
            r_old = (k @ scan.groups[2 * fi + 1]) / den_c
            r_other = r - (k @ scan.groups[2 * fi]) / den_c - r_old
            total = np.sqrt((r * r).sum())
            nv[fi, i] = n_versions[fi]
            if total > 0:
                res[fi, i] = np.sqrt((r_old * r_old).sum()) / total
                xt[fi, i] = np.sqrt((r_other * r_other).sum()) / total
    coords = {"fact_id": fact_ids, "segment": at}
    out = xr.Dataset({
        "residual": (("fact_id", "segment"), res, {"long_name": "old versions' share of a read at the fact's write keys", "units": "1"}),
        "crosstalk": (("fact_id", "segment"), xt, {"long_name": "other facts' share of a read at the fact's write keys", "units": "1"}),
        "n_versions": (("fact_id", "segment"), nv, {"long_name": "versions of the fact written so far", "units": "1"}),
    }, coords=coords, attrs={"layer": int(layer), "sample": int(sample)})
    return out


# ------------------------------------------------------------------------------------------------ read attribution
def attribute_read_origin(ds: xr.Dataset, probe: int, layer: int, *, kind: str = "share", ledger=None) -> xr.DataArray:
    """Origin view of one probe's read (`attribute_read(..., by="origin")`): one entry per write event o,

        share:  a_o = <c_o, r> / |r|,   sum_o a_o = |r|;      vector: c_o (dim hidden),   sum_o c_o = r

    with c_o = (q . s_o) beta_o v_o / D from `origin_read`. Coords on `write`: write_segment, mem_token, status
    (of the origin's segment relative to the fact the probe asks about at the read, `segment_schedule`;
    memory-wide statuses when the probe is on no query; all "no-fact" without a ledger).
    """
    from .attribution import _probe_fact, probe_read

    if kind not in ("share", "vector"):
        raise ValueError(f"by='origin' supports kind 'share' or 'vector', got {kind!r}")
    check_trace(ds, _NEEDS + ("read_query", "read_out", "probe_sample", "probe_segment"), "attribute_read(by='origin')")
    config = config_of(ds)
    read = probe_read(ds, probe, layer)
    t = read.segment
    if t > 0:
        _check(ds, t - 1, layer, "attribute_read(by='origin')")
    c, _ = origin_read(ds, read, config)  # [t, mem, hidden]
    M = config.num_mem_tokens
    facts = _facts(ds, ledger)
    fact = None
    if facts is not None:
        f, _v = _probe_fact(facts, read)
        fact = None if f < 0 else f
    kind_, ta, tb = segment_schedule(facts, read.sample, t, fact)
    status = _status_at(kind_, ta, tb, t - 1) if t > 0 else np.zeros(0, np.int64)
    flat = c.reshape(t * M, -1)
    coords = {"write": np.arange(t * M), "write_segment": ("write", np.repeat(np.arange(t), M)),
              "mem_token": ("write", np.tile(np.arange(M), t)),
              "status": ("write", np.asarray(ORIGIN_STATUS, dtype=object)[np.repeat(status, M)])}
    attrs = {"probe": read.probe, "layer": read.layer, "sample": read.sample, "probe_segment": t,
             "read_out_norm": read.norm, "fact_id": -1 if fact is None else int(fact), "view": "origin"}
    if kind == "share":
        da = xr.DataArray(flat @ read.direction, dims=("write",), coords=coords)
        return named(da.assign_coords(probe=read.probe, layer=read.layer), "read_share",
                     "origin share of the read-out <c_o, r>/|r|, c_o = (q.s_o) beta_o v_o / D", "1", **attrs)
    da = xr.DataArray(flat, dims=("write", "hidden"), coords=coords)
    return named(da.assign_coords(probe=read.probe, layer=read.layer), "read_contribution",
                 "origin contribution c_o = (q.s_o) beta_o v_o / D to the read-out", "1", **attrs)
