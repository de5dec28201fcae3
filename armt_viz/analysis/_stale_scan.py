"""The fast scan behind `origin_stale_mass` when the write gate is constant within each head (no per-channel
gating): every layer of a sample advanced together, the segment-independent work done per block.

Same bookkeeping as `origin._LowRankPools` (module docstring of `armt_viz.analysis.origin`), specialised to the
two norms the stale mass needs, so it equals it to float64 rounding (tested):

* The memory is block-diagonal over heads, so every matrix is stored per head: [layer, head, F/H, hidden/H]
  (H times less work than the masked dense layout).
* Only two dense pools are kept: SUP (superseded origins) and OTH (settled "other" origins, eroded only once
  one exists); no-fact origins never enter a stale norm, so they are not tracked (A is rebuilt separately).
* Live origins (a segment holding fact versions not yet all superseded) are (eroded key, value) column pairs,
  eroded on the key side only; a column settles into SUP when its last version is superseded.
* Per block, without a per-segment loop: features phi, the normaliser z before every segment (a cumulative sum),
  the reads phi_t A_{t-1} from a strict-lower Gram matrix of the block's writes (so v-bar, beta v and the erosion
  coefficients beta / D of every segment come from a few large products), and |A_t|_F from the same reads.
  The per-segment loop is left with the erosion of the pools and the live keys (one batched product) and
  the two norms.
"""

from __future__ import annotations

import numpy as np

_SUB = 64  # segments per Gram sub-block (its [rows, rows] Gram matrix stays small)


class StaleScan:
    """State of one sample's scan over every layer (picklable: dask carries it between blocks)."""

    def __init__(self, config, n_layers: int, hidden: int):
        H = config.n_heads
        self.cfg, self.L, self.H = config, n_layers, H
        self.fh, self.dh = config.d_key // H, hidden // H
        self.A = np.zeros((n_layers, H, self.fh, self.dh))
        self.z = np.zeros((n_layers, H, self.fh))
        # one buffer: the pools ([..., :dh] OTH, [..., dh:2dh] SUP) then the live eroded keys (one column per live
        # write), with spare columns, so one product erodes them all (OTH only once something entered it)
        self.X = np.zeros((n_layers, H, self.fh, 2 * self.dh + 64))
        self.n = 0  # live columns
        self.oth_used = np.zeros(1, dtype=bool)
        self.V = np.zeros((n_layers, H, 0, self.dh))  # their values beta v (per head block)
        self.ta = np.zeros(0, dtype=np.int64)
        self.tb = np.zeros(0, dtype=np.int64)
        self.src = np.zeros(0, dtype=np.int64)  # origin segment of each live column
        self.segments = 0

    @property
    def pools(self) -> np.ndarray:
        return self.X[..., : 2 * self.dh]

    @pools.setter
    def pools(self, value) -> None:
        self.X[..., : 2 * self.dh] = value

    @property
    def K(self) -> np.ndarray:
        return self.X[..., 2 * self.dh: 2 * self.dh + self.n]

    @K.setter
    def K(self, value) -> None:
        value = np.asarray(value)
        self.n = 0
        self._reserve(value.shape[-1])
        self.X[..., 2 * self.dh: 2 * self.dh + value.shape[-1]] = value
        self.n = value.shape[-1]

    def _reserve(self, extra: int) -> None:
        need = 2 * self.dh + self.n + extra
        if need > self.X.shape[-1]:
            grown = np.zeros(self.X.shape[:-1] + (max(need, 2 * self.X.shape[-1]),))
            grown[..., : 2 * self.dh + self.n] = self.X[..., : 2 * self.dh + self.n]
            self.X = grown

    # ------------------------------------------------------------------------------------------ per block
    def _reads(self, ph, u, gamma):
        """For segments of a block: den [B, L, J, H] (z before each segment) and PA [B, L, J, H, dh] = phi_t
        A_{t-1} (per head), from the carried (A, z); advances A and z to the block's end."""
        cfg = self.cfg
        B, L, J, H, fh = ph.shape
        den = np.ones((B, L, J, H))
        PA = np.empty((B, L, J, H, self.dh))
        for s0 in range(0, B, _SUB):
            s1 = min(B, s0 + _SUB)
            p, uu = ph[s0:s1], u[s0:s1]  # [b, L, J, H, fh], [b, L, J, H, dh]
            b = s1 - s0
            if cfg.use_denom:
                gz = (gamma[s0:s1, ..., None] * p).sum(2)  # [b, L, H, fh]: each segment's z increment
                Z = self.z[None] + np.cumsum(gz, axis=0) - gz  # z before each segment
                den[s0:s1] = np.einsum("bljhf,blhf->bljh", p, Z) + cfg.eps
                self.z = self.z + gz.sum(0)
            # rows r = (segment, j); per (layer, head): Gram of the rows, strictly earlier segments only
            P = p.transpose(1, 3, 0, 2, 4).reshape(L, H, b * J, fh)
            U = uu.transpose(1, 3, 0, 2, 4).reshape(L, H, b * J, self.dh)
            seg = np.repeat(np.arange(b), J)
            earlier = (seg[:, None] > seg[None, :]).astype(np.float64)
            G = (P @ P.transpose(0, 1, 3, 2)) * earlier
            R = P @ self.A + G @ U  # [L, H, bJ, dh]
            PA[s0:s1] = R.reshape(L, H, b, J, self.dh).transpose(2, 0, 3, 1, 4)
            self.A = self.A + P.transpose(0, 1, 3, 2) @ U
        return den, PA

    def block(self, t0: int, key_phi, u, beta_h, gamma, kind, tau_a, tau_b) -> np.ndarray:
        """Scan segments t0..t0+B-1. key_phi [B, L, J, F] (features), u [B, L, J, hidden], beta_h [B, L, J, H],
        gamma [B, L, J, H]; kind/tau_a/tau_b: the schedule of every origin segment (`segment_schedule`).
        Returns [3, B, L]: |SUP|_F, |SUP + OTH|_F, |A|_F after each segment."""
        cfg = self.cfg
        B, L, J, _ = key_phi.shape
        H, fh, dh = self.H, self.fh, self.dh
        ph = key_phi.reshape(B, L, J, H, fh)
        uh = u.reshape(B, L, J, H, dh)
        A_start = self.A.copy()
        den, PA = self._reads(ph, uh, gamma)
        # |A_t|^2 = |A_{t-1}|^2 + 2 sum_j PA_j.u_j + sum_{j,j'} (phi_j.phi_j')(u_j.u_j')   (per head)
        gram_j = np.einsum("bljhf,blkhf->blhjk", ph, ph) * np.einsum("bljhd,blkhd->blhjk", uh, uh)
        inc = 2 * np.einsum("bljhd,bljhd->bl", PA, uh) + gram_j.sum((2, 3, 4))
        a_sq = np.maximum((A_start * A_start).sum((1, 2, 3))[None] + np.cumsum(inc, axis=0), 0.0)
        # statuses from the current schedule (a growing trace's ledger may have superseded live origins since)
        self.ta, self.tb = np.asarray(tau_a)[self.src], np.asarray(tau_b)[self.src]
        first = self.segments == 0
        erode_all = cfg.delta_rule
        with np.errstate(divide="ignore", invalid="ignore"):  # D = 0 only before any write (eps = 0): unused
            vbar = PA / den[..., None]
            coef = beta_h / den  # [B, L, J, H]
        bv = uh + beta_h[..., None] * vbar if erode_all else uh  # beta v = u + beta v-bar
        if first:  # the first segment of a trace reads an empty memory: v-bar = 0, no erosion
            bv = bv.copy()
            bv[0] = uh[0]
        out = np.zeros((3, B, L))
        out[2] = np.sqrt(a_sq)
        # the loop: per head, phi as [L, H, J, fh]
        phT = ph.transpose(0, 1, 3, 2, 4)  # [B, L, H, J, fh]
        bvT = bv.transpose(0, 1, 3, 2, 4)  # [B, L, H, J, dh]
        cT = coef.transpose(0, 1, 3, 2)[..., None]  # [B, L, H, J, 1]
        D2 = 2 * dh
        for i in range(B):
            t = t0 + i
            p = phT[i]
            pt = p.transpose(0, 1, 3, 2)  # [L, H, fh, J]
            if erode_all and not (first and i == 0):
                X = self.X[..., (0 if self.oth_used[0] else dh): D2 + self.n]
                X -= pt @ ((p @ X) * cT[i])
            k = int(kind[t])
            if k == 0:
                self._reserve(J)
                self.X[..., D2 + self.n: D2 + self.n + J] = pt
                self.n += J
                self.V = np.concatenate([self.V, bvT[i]], axis=-2)
                self.ta = np.r_[self.ta, np.full(J, tau_a[t])]
                self.tb = np.r_[self.tb, np.full(J, tau_b[t])]
                self.src = np.r_[self.src, np.full(J, t)]
            elif k == 2:  # settled "other"
                self.X[..., :dh] += pt @ bvT[i]
                self.oth_used[0] = True
            pools = self.X[..., :D2]
            done = self.tb <= t
            if done.any():
                cols = np.flatnonzero(done)
                settled = self.K[..., cols] @ self.V[..., cols, :]
                self.X[..., dh:D2] += settled  # into SUP
                keep = np.flatnonzero(~done)
                self.X[..., D2: D2 + len(keep)] = self.X[..., D2 + keep]
                self.n = len(keep)
                self.V = self.V[..., keep, :]
                self.ta, self.tb, self.src = self.ta[keep], self.tb[keep], self.src[keep]
            sup = pools[..., dh:]
            out[0, i] = np.einsum("lhfd,lhfd->l", sup, sup)
            so = sup + pools[..., :dh] if self.oth_used[0] else sup  # SUP + OTH
            so_sq = out[0, i] if so is sup else np.einsum("lhfd,lhfd->l", so, so)
            mixed = np.flatnonzero(self.ta <= t)
            if len(mixed):  # |SO + Km Vm|^2 = |SO|^2 + 2 <Km^T SO, Vm> + <Km^T Km, Vm Vm^T>   (per head)
                Km, Vm = self.K[..., mixed], self.V[..., mixed, :]
                KtK = Km.transpose(0, 1, 3, 2) @ Km
                so_sq = (so_sq + 2 * ((Km.transpose(0, 1, 3, 2) @ so) * Vm).sum((1, 2, 3))
                         + (KtK * (Vm @ Vm.transpose(0, 1, 3, 2))).sum((1, 2, 3)))
            out[1, i] = so_sq
        out[:2] = np.sqrt(np.maximum(out[:2], 0.0))
        self.segments += B
        return out


def block_inputs(sub, config):
    """(phi [B, L, J, F], u [B, L, J, hidden], beta per head [B, L, J, H], gamma [B, L, J, H]), float64, from a
    Dataset of one sample's write variables over a block of segments (dims segment, layer, mem_token, ...)."""
    from ._common import feature_map

    sub = sub.load()
    order = ("segment", "layer", "mem_token")
    key = np.asarray(sub["write_key"].transpose(*order, "key_dim").values, dtype=np.float64)
    u = np.asarray(sub["write_delta"].transpose(*order, "hidden").values, dtype=np.float64)
    gamma = np.asarray(sub["write_correction"].transpose(*order, "head").values, dtype=np.float64)
    H, hidden = config.n_heads, u.shape[-1]
    if "write_gate_channel" in sub.variables:
        g = np.asarray(sub["write_gate_channel"].transpose(*order, "gate_channel").values, dtype=np.float64)
        if g.shape[-1] == hidden:
            g = g[..., :: hidden // H]  # constant within a head without per-channel gating
        elif g.shape[-1] == 1:
            g = np.repeat(g, H, axis=-1)
        elif g.shape[-1] != H:
            raise ValueError(f"write_gate_channel has {g.shape[-1]} channels; expected 1, n_heads={H} or "
                             f"hidden={hidden}")
    elif H > 1:
        raise ValueError("the origin decomposition needs the full write gate beta (one per head), but this trace "
                         "stores only its mean (`write_gate`); record it again with this armt_viz version (it adds "
                         "`write_gate_channel`)")
    else:
        g = np.asarray(sub["write_gate"].transpose(*order).values, dtype=np.float64)[..., None]
    if gamma.shape[-1] == 1 and H > 1:
        gamma = np.repeat(gamma, H, axis=-1)
    phi = feature_map(key, H, config.nu, config.normalize_features)
    return phi, u, g, gamma
