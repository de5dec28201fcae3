"""Synthetic traces for the analysis tests, built by a tiny numpy reference of the ARMT write rule.

`build_trace` takes explicit write events (pre-feature keys, values W_mv m, scalar gates) and probe queries,
runs the memory math of ARMT_SPEC.md §1.5 with Python loops in float64 (no code shared with armt_viz), and
returns a Dataset that follows `armt_viz.trace.schema` exactly (names, dims, attrs), at level "full" (write
events + A and z after every segment + keyframes), with probes and optionally an embedded ledger.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from armt_viz.config import ARMTConfig, RecordConfig
from armt_viz.trace.schema import SCHEMA, SCHEMA_VERSION


def ref_dpfp(x, nu=3):
    """DPFP of one vector, element by element (ARMT_SPEC.md §1.2)."""
    d = len(x)
    xp = [max(float(v), 0.0) for v in x] + [max(-float(v), 0.0) for v in x]
    n = 2 * d
    return np.array([xp[i] * xp[(i - j) % n] for j in range(1, nu + 1) for i in range(n)])


def ref_features(x, heads, nu, normalize):
    """[d_mem] -> list of per-head feature vectors."""
    per = len(x) // heads
    out = []
    for h in range(heads):
        f = ref_dpfp(x[h * per:(h + 1) * per], nu)
        if normalize:
            f = f / max(np.linalg.norm(f), 1e-12)
        out.append(f)
    return out


def _var(name, data):
    spec = SCHEMA[name]
    return xr.Variable(spec.dims, np.asarray(data), attrs={"long_name": spec.long_name, "units": spec.units})


def build_trace(config: ARMTConfig, keys, values, gates, probes=(), *, ledger=None, storage="float64",
                keyframe_every=2):
    """keys [sample, segment, layer, mem, d_mem]; values [sample, segment, layer, mem, hidden];
    gates [sample, segment, layer, mem]; probes: dicts {sample, segment, position, query [layer, d_mem]}."""
    keys, values, gates = (np.asarray(a, dtype=np.float64) for a in (keys, values, gates))
    S, T, L, M, _ = keys.shape
    hidden = values.shape[-1]
    H, nu, eps = config.n_heads, config.nu, config.eps
    Fh, Dh = 2 * nu * config.d_mem // H, hidden // H
    F = H * Fh
    delta = np.zeros((S, T, L, M, hidden))
    gamma = np.zeros((S, T, L, M, H))
    prev_norm = np.zeros((S, T, L, M))
    assoc = np.zeros((S, T, L, F, hidden))
    norm = np.zeros((S, T, L, F))
    before = {}  # (s, t, l) -> (A per head, z per head) before segment t's write
    for s in range(S):
        for l in range(L):
            A = np.zeros((H, Fh, Dh))
            z = np.zeros((H, Fh))
            for t in range(T):
                before[s, t, l] = (A.copy(), z.copy())
                dA, dz = np.zeros_like(A), np.zeros_like(z)
                for j in range(M):
                    phis = ref_features(keys[s, t, l, j], H, nu, config.normalize_features)
                    vbar_all = np.zeros(hidden)
                    for h in range(H):
                        k = phis[h]
                        v = values[s, t, l, j, h * Dh:(h + 1) * Dh]
                        if t == 0:
                            vbar, g = np.zeros(Dh), 1.0
                        elif config.use_denom:
                            den = z[h] @ k + eps
                            vbar = A[h].T @ k / den
                            if config.correction:
                                g = min(max(1 - den / (k @ k + (eps if config.gamma_eps else 0.0)), 0.0), 1.0)
                            else:
                                g = 1.0
                        else:
                            vbar, g = A[h].T @ k, 1.0
                        if not config.delta_rule:  # the control: u = beta v
                            vbar = np.zeros(Dh)
                        u = gates[s, t, l, j] * (v - vbar)
                        vbar_all[h * Dh:(h + 1) * Dh] = vbar
                        delta[s, t, l, j, h * Dh:(h + 1) * Dh] = u
                        gamma[s, t, l, j, h] = g
                        dA[h] += np.outer(k, u)
                        dz[h] += g * k
                    prev_norm[s, t, l, j] = np.linalg.norm(vbar_all)
                A = A + dA
                if config.use_denom:
                    z = z + dz
                for h in range(H):
                    assoc[s, t, l, h * Fh:(h + 1) * Fh, h * Dh:(h + 1) * Dh] = A[h]
                norm[s, t, l] = z.reshape(-1)
    P = len(probes)
    q_feat = np.zeros((P, L, F))
    read_out = np.zeros((P, L, hidden))
    read_den = np.ones((P, L, H))
    for p, pr in enumerate(probes):
        s, t = pr["sample"], pr["segment"]
        for l in range(L):
            phis = ref_features(np.asarray(pr["query"], dtype=np.float64)[l], H, nu, config.normalize_features)
            q_feat[p, l] = np.concatenate(phis)
            if t == 0:
                continue  # the first segment reads nothing
            A, z = before[s, t, l]
            for h in range(H):
                den = z[h] @ phis[h] + eps if config.use_denom else 1.0
                read_den[p, l, h] = den
                read_out[p, l, h * Dh:(h + 1) * Dh] = A[h].T @ phis[h] / den
    seg_size = config.segment_size
    kf = np.arange(keyframe_every - 1, T, keyframe_every)
    data = {
        "write_key": keys.astype(storage), "write_delta": delta.astype(storage),
        "write_gate": gates.astype(np.float32), "write_correction": gamma.astype(np.float32),
        "write_prev_value_norm": prev_norm.astype(np.float32),
        "assoc_matrix": assoc.astype(np.float32), "normalizer": norm.astype(np.float32),
        "assoc_norm": np.linalg.norm(assoc, axis=(-2, -1)).astype(np.float32),
        "keyframe_segment": kf, "keyframe_assoc": assoc[:, kf].astype(np.float32),
        "keyframe_normalizer": norm[:, kf].astype(np.float32),
        "probe_sample": np.array([p["sample"] for p in probes], dtype=np.int64),
        "probe_segment": np.array([p["segment"] for p in probes], dtype=np.int64),
        "probe_position": np.array([p["position"] for p in probes], dtype=np.int64),
        "probe_token": np.array([p["segment"] * seg_size + p["position"] for p in probes], dtype=np.int64),
        "probe_prediction": np.array([p.get("prediction", -1) for p in probes], dtype=np.int32),
        "read_query": q_feat.astype(np.float32), "read_out": read_out.astype(np.float32),
        "read_denominator": read_den.astype(np.float32),
    }
    coords_names = ("keyframe_segment", "probe_sample", "probe_token", "probe_segment", "probe_position")
    variables = {n: _var(n, v) for n, v in data.items() if n not in coords_names}
    coords = {n: _var(n, data[n]) for n in coords_names}
    coords.update(segment=_var("segment", np.arange(T)), keyframe=_var("keyframe", np.arange(len(kf))),
                  mem_token=np.arange(M))
    ds = xr.Dataset(variables, coords=coords, attrs={
        "armt_config": config.to_json(),
        "record_config": RecordConfig(level="full", keyframe_every=keyframe_every).to_json(),
        "schema_version": SCHEMA_VERSION,
    })
    if ledger is not None:
        ds = embed_ledger(ds, ledger)
    return ds


def embed_ledger(ds, ledger):
    """Add a ledger to a trace as `ledger_*` variables and `ledger_*` attrs (the trace convention)."""
    ds = ds.assign({f"ledger_{k}": v.variable for k, v in ledger.data_vars.items()})
    ds.attrs.update({f"ledger_{k}": v for k, v in ledger.attrs.items()})
    return ds


def ledger_from_events(events, *, segment_size, value_size=1, task="stream"):
    """A ledger from hand-written events: dicts {role, segment, position, fact, value} in stream order.

    Writes give key+value rows, deletes a delete row, queries query+answer rows (answer right after the query
    key and GEN: position+2). Versions, validity and expected answers are derived here.
    """
    from armt_viz.tasks.ledger import make_ledger
    cols = {k: [] for k in ("role", "token", "n_tokens", "fact_id", "version", "valid_from", "value",
                            "expected_answer", "n_superseded", "stale_values", "sample")}
    n_versions, current, since, history = {}, {}, {}, {}

    def row(role, token, n, fact, version, vfrom, value, expected=-1, stale=()):
        for k, v in zip(("role", "token", "n_tokens", "fact_id", "version", "valid_from", "value",
                         "expected_answer", "stale_values", "sample"),
                        (role, token, n, fact, version, vfrom, value, expected, list(stale), 0)):
            cols[k].append(v)
        cols["n_superseded"].append(len(stale))

    for e in events:
        tok = e["segment"] * segment_size + e["position"]
        f = e["fact"]
        if e["role"] in ("write", "delete"):
            ver = n_versions.get(f, 0)
            n_versions[f] = ver + 1
            val = e["value"] if e["role"] == "write" else -1
            current[f], since[f] = val, tok
            history.setdefault(f, []).append(val)
            if e["role"] == "write":
                row("key", tok, 1, f, ver, tok, val)
                row("value", tok + 2, value_size, f, ver, tok, val)
            else:
                row("delete", tok, 1, f, ver, tok, -1)
        else:
            ver = n_versions.get(f, 0) - 1
            cur = current.get(f, -1)
            stale = [v for v in dict.fromkeys(reversed(history.get(f, []))) if v not in (cur, -1)]
            row("query", tok, 1, f, ver, since.get(f, -1), cur, cur, stale)
            row("answer", tok + 2, value_size, f, ver, since.get(f, -1), cur, cur, stale)
    return make_ledger(cols, task=task, params={"value_size": value_size, "key_size": 1}, seed=0,
                       segment_size=segment_size, special_tokens={"SEP": 100, "GEN": 101, "EOS": 102, "NONE": 105})


def random_trace(config: ARMTConfig, *, samples=1, segments=6, layers=2, hidden=8, probes=4, seed=0, **kw):
    """A random trace (all write events random), with `probes` probes in segments >= 1."""
    rng = np.random.default_rng(seed)
    M, d = config.num_mem_tokens, config.d_mem
    keys = rng.normal(size=(samples, segments, layers, M, d))
    values = rng.normal(size=(samples, segments, layers, M, hidden))
    gates = rng.uniform(0.2, 1.0, size=(samples, segments, layers, M))
    pr = [{"sample": int(rng.integers(samples)), "segment": int(rng.integers(1, segments)),
           "position": int(rng.integers(config.segment_size)), "query": rng.normal(size=(layers, d))}
          for _ in range(probes)]
    return build_trace(config, keys, values, gates, pr, **kw)


@pytest.fixture
def small_config():
    return ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8)


def relative_gap(total, norm):
    return abs(float(total) - float(norm)) / max(float(norm), 1e-30)


def dumps(x):
    return json.dumps(x)


# ---------------------------------------------------------------------------------------------- crafted cases
# Keys with hand-known DPFP features (nu=3, d_mem=2): phi([1,1]) = e1 + e8, phi([-1,-1]) = e3 + e10,
# phi([1,-1]) = e0 + e11, each of squared norm 2 and mutually orthogonal; phi(a*k) = a^2 phi(k).
K_A, K_B, K_C = [1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]
EPS = 1e-5
TINY = ARMTConfig(num_mem_tokens=1, d_mem=2, segment_size=8, eps=EPS)
NONE_TOKEN = 105


def _one_layer(rows):
    """[(key, value, gate)] per segment -> keys, values, gates arrays for 1 sample, 1 layer, 1 mem token."""
    keys = np.array([[[[r[0]]] for r in rows]], dtype=np.float64)
    values = np.array([[[[r[1]]] for r in rows]], dtype=np.float64)
    gates = np.array([r[2] for r in rows], dtype=np.float64).reshape(1, len(rows), 1, 1)
    return keys, values, gates


@pytest.fixture
def rewrite_delete_case():
    """f0 written (seg 0), partly rewritten with f2 written beside it (seg 1), queried while f1 is written
    (seg 2), deleted (seg 3), queried again (seg 4).

    Probe 0 asks f0 at the GEN of seg 2 (prediction: the old value 1 -> stale);
    probe 1 asks f0 at the GEN of seg 4 (prediction: NONE -> current).
    """
    rows = [
        (K_A, [1.0, 0.0], 1.0),   # seg 0: f0 = 1
        (K_A, [0.0, 1.0], 0.8),   # seg 1: f0 = 2 (gate 0.8: the old value survives in part), f2 = 3
        (K_B, [1.0, 1.0], 0.5),   # seg 2: query f0; f1 = 7
        (K_A, [0.0, 0.0], 1.0),   # seg 3: delete f0 (writes zero at K_A: erases it)
        (K_C, [0.0, 0.0], 1.0),   # seg 4: query f0 (writes nothing: vbar = 0 at an unseen key)
    ]
    keys, values, gates = _one_layer(rows)
    events = [
        dict(role="write", segment=0, position=0, fact=0, value=1),
        dict(role="write", segment=1, position=0, fact=0, value=2),
        dict(role="write", segment=1, position=4, fact=2, value=3),
        dict(role="query", segment=2, position=0, fact=0),
        dict(role="write", segment=2, position=4, fact=1, value=7),
        dict(role="delete", segment=3, position=0, fact=0),
        dict(role="query", segment=4, position=0, fact=0),
    ]
    ledger = ledger_from_events(events, segment_size=8)
    probes = [dict(sample=0, segment=2, position=1, query=[K_A], prediction=1),
              dict(sample=0, segment=4, position=1, query=[K_A], prediction=NONE_TOKEN)]
    return build_trace(TINY, keys, values, gates, probes, ledger=ledger)


@pytest.fixture
def collision_case():
    """Two facts whose write keys collide: phi([2,2]) = 4 phi([1,1]). f0 = 1 at seg 0, f1 = 5 at seg 1, then
    f0 queried at seg 2 (probe 0, prediction 5: the other fact's value -> other) and f9 (never written) queried
    at seg 2 too (probe 1, not attributed to any fact's current write)."""
    rows = [(K_A, [1.0, 0.0], 1.0), ([2.0, 2.0], [0.0, 1.0], 1.0), (K_C, [0.0, 0.0], 1.0)]
    keys, values, gates = _one_layer(rows)
    events = [
        dict(role="write", segment=0, position=0, fact=0, value=1),
        dict(role="write", segment=1, position=0, fact=1, value=5),
        dict(role="query", segment=2, position=0, fact=0),
        dict(role="query", segment=2, position=4, fact=9),
    ]
    ledger = ledger_from_events(events, segment_size=8)
    probes = [dict(sample=0, segment=2, position=1, query=[K_A], prediction=5),
              dict(sample=0, segment=2, position=5, query=[K_C], prediction=NONE_TOKEN)]
    return build_trace(TINY, keys, values, gates, probes, ledger=ledger)


def tiny_model(vocab_size=32, seed=0, **armt):
    """A random tiny GPT-2 ARMT, every parameter redrawn from N(0, 0.2^2) so W_mv (zero at init) writes."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from armt_viz.model.armt import ARMTModel

    torch.manual_seed(seed)
    backbone = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=vocab_size, n_positions=64,
                                          bos_token_id=None, eos_token_id=None))
    config = ARMTConfig(**{"num_mem_tokens": 4, "d_mem": 16, "segment_size": 16, **armt})
    model = ARMTModel.from_backbone(backbone, config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()
