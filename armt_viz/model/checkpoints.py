"""Checkpoints: the official code's format (ARMT_SPEC.md §2) and our own.

Official (`torch.save(AssociativeRecurrentWrapper.state_dict())`, or accelerate's
de-duplicated `model.safetensors`):

    memory_cell.memory                              -> memory
    memory_cell.model.<backbone path>               -> backbone.<backbone path>
    memory_cell.layers.{i}.<suffix>                 alias of backbone.<layers_attr>.{i}.<suffix>
    armt.<any of the above>                         the 2025 HF wrapper prefix (§1.13)

Ours (`save_pretrained`): `config.json` ({"format": "armt_viz", "armt": ..., "backbone": ...})
and `model.safetensors`. Loading never unpickles code: safetensors, or torch.load with
weights_only=True.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import warnings
from pathlib import Path

import torch

from ..config import ARMTConfig

__all__ = ["load_official", "save_pretrained", "load_pretrained", "read_state_dict", "build_backbone", "file_sha256"]

_IGNORABLE = (
    re.compile(r".*\.attn\.(bias|masked_bias)$"),  # GPT-2 causal-mask buffers of old transformers
    re.compile(r".*rotary_emb\.(inv_freq|original_inv_freq)$"),  # NeoX/Llama rotary buffers
)
_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.bin", "model.pt")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _regular(p: Path, what: str) -> Path:
    """``p`` if it is a regular file (after links); a FIFO or device would block or never end, a loop is named."""
    try:
        st = os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{what} {str(p)!r} is a symlink loop; point it at the real file") from None
        if os.path.islink(p):
            raise FileNotFoundError(f"{what} {str(p)!r} is a dangling symlink (its target "
                                    f"{os.readlink(p)!r} does not exist)") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {str(p)!r} is not a regular file (a FIFO, socket or device); expected the "
                         "weights or config file itself")
    return p


def _resolve_file(path) -> Path:
    p = Path(path)
    if not os.path.lexists(p):
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist; pass a .safetensors/.bin/.pt file or a directory holding one")
    if p.is_dir():
        for name in _WEIGHT_NAMES:
            if os.path.lexists(p / name):
                return _regular(p / name, "checkpoint")
        found = sorted(x.name for x in p.iterdir())
        raise FileNotFoundError(f"no weights in directory {str(p)!r}: expected one of {_WEIGHT_NAMES}, found {found}")
    return _regular(p, "checkpoint")


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
MAX_HEADER_BYTES = 100 * 1024 * 1024


def safetensors_header(path) -> dict[str, torch.Tensor]:
    """The tensors a safetensors file declares, as meta tensors (no data read), after checking the header: its
    length, its JSON, every dtype and shape, and that every tensor's bytes lie inside the file.

    Raises:
        ValueError: naming the file and what is wrong.
    """
    f = _regular(Path(path), "checkpoint")
    size = os.path.getsize(f)

    def bad(why):
        return ValueError(f"{str(f)!r} is not a readable safetensors file ({why}); expected the weights written by "
                          "save_pretrained or safetensors.torch.save_file")

    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise bad("shorter than its 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise bad(f"header length {n:,} bytes exceeds the file ({size:,} bytes) or {MAX_HEADER_BYTES:,}")
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise bad(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    out, data_len = {}, size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = [int(x) for x in info["shape"]]
            lo, hi = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name[:80]!r} has no valid dtype/shape/data_offsets") from None
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if min(shape, default=0) < 0 or not (0 <= lo <= hi <= data_len) or hi - lo != nbytes:
            raise bad(f"tensor {name[:80]!r} declares shape {shape} {info['dtype']} at bytes {lo}-{hi} of "
                      f"{data_len:,} data bytes")
        out[name] = torch.empty(shape, dtype=dtype, device="meta")
    return out


def _check_before_building(cls, bb_cfg, config, declared: dict, source: str, convert=None) -> None:
    """Build the model on the meta device (no memory) and compare its tensors with ``declared`` (from the weights'
    header): a config that declares another (e.g. a far larger) model is refused before anything is allocated."""
    with torch.device("meta"):
        model = cls(build_backbone(bb_cfg, "eager"), config)
    sd = convert(declared, model.adapter.layers_attr) if convert else declared
    _load_checked(model, dict(sd), source, copy=False)


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, never executing pickled code."""
    f = _resolve_file(path)
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(f))
        except Exception as exc:
            raise ValueError(f"{str(f)!r} is not a readable safetensors file ({exc})") from exc
    try:
        sd = torch.load(str(f), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle with code, truncated file, ...
        raise ValueError(
            f"refused to load {str(f)!r}: it is not a plain tensor state_dict loadable with weights_only=True "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Only tensor checkpoints are accepted; "
            "re-save it as safetensors from a trusted environment."
        ) from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{str(f)!r} does not hold a state_dict of tensors (got {type(sd).__name__})")
    return sd


def build_backbone(backbone, attn_implementation: str | None = None):
    """An HF causal LM from a model, a PretrainedConfig, a config dict, or a config.json path."""
    import transformers
    if isinstance(backbone, torch.nn.Module):
        return backbone
    if isinstance(backbone, (str, os.PathLike)):
        p = Path(backbone)
        p = p / "config.json" if p.is_dir() else p
        backbone = _read_json(p, "backbone config")
    if isinstance(backbone, dict):
        d = {k: v for k, v in backbone.items() if k not in _HUB_KEYS}
        model_type = d.pop("model_type", None)
        if model_type is None:
            raise ValueError("backbone config dict has no 'model_type'; expected e.g. {'model_type': 'gpt2', 'n_layer': 2, ...}")
        backbone = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in d.items() if k not in ("architectures", "transformers_version")})
    if not isinstance(backbone, transformers.PretrainedConfig):
        raise TypeError(f"backbone must be an HF model, PretrainedConfig, dict or config path; got {type(backbone).__name__}")
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return transformers.AutoModelForCausalLM.from_config(backbone, **kw)


def _official_to_ours(sd: dict[str, torch.Tensor], layers_attr: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("armt."):
            k = k[len("armt."):]
        if any(r.match(k) for r in _IGNORABLE):
            continue
        if k == "memory_cell.memory":
            out["memory"] = v
        elif k.startswith("memory_cell.model."):
            out["backbone." + k[len("memory_cell.model."):]] = v
        elif k.startswith("memory_cell.layers."):
            aliases[f"backbone.{layers_attr}." + k[len("memory_cell.layers."):]] = v
        else:
            out[k] = v  # unknown: reported as unexpected below
    for k, v in aliases.items():
        out.setdefault(k, v)  # de-duplicated safetensors may have kept either alias
    return out


# HF renamed some modules between transformers 4 and 5: (old key, new key)
_RENAMES = (("backbone.embed_out.weight", "backbone.lm_head.weight"),)


def _load_checked(model, sd: dict[str, torch.Tensor], source: str, *, copy: bool = True) -> None:
    own = model.state_dict()
    for old, new in _RENAMES:
        if old in sd and old not in own and new in own and new not in sd:
            sd[new] = sd.pop(old)
    tied_ok = set()
    out_emb = model.backbone.get_output_embeddings()
    if out_emb is not None and out_emb.weight is model.backbone.get_input_embeddings().weight:
        for k, v in own.items():
            if v.data_ptr() == out_emb.weight.data_ptr():
                tied_ok.add(k)
    missing = [k for k in own if k not in sd]
    if tied_ok and any(k in sd for k in tied_ok):
        missing = [k for k in missing if k not in tied_ok]
    unexpected = [k for k in sd if k not in own]
    bad_shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or bad_shapes:
        hints = []
        if any("wpe" in s for s in bad_shapes):
            hints.append("a position table 'wpe' that is num_mem_tokens rows longer means wrap_pos=True (or the reverse)")
        if any("W_mq" in s or "W_mk" in s for s in bad_shapes):
            hints.append("W_mq/W_mk shapes give d_mem: set ARMTConfig(d_mem=...) to the checkpoint's")
        if any(".W_mb." in s for s in bad_shapes):
            hints.append("W_mb rows give the write gate: n_heads rows (one gate per head) with gating=False, "
                         "hidden-size rows with gating=True; set ARMTConfig(n_heads=..., gating=...) to the checkpoint's")
        if any(s.startswith("memory:") for s in bad_shapes):
            hints.append("memory shape gives num_mem_tokens: set ARMTConfig(num_mem_tokens=...)")
        if missing and all(".W_m" in k or k == "memory" for k in missing):
            hints.append("the checkpoint seems to be a plain backbone; use ARMTModel.from_backbone")
        raise ValueError(
            f"checkpoint {source!r} does not match the model built from the given config:\n"
            f"  missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}\n"
            f"  shape mismatches ({len(bad_shapes)}): {bad_shapes[:20]}\n"
            "Fix: pass backbone= the HF config the checkpoint was trained with and an ARMTConfig with the same "
            "num_mem_tokens, d_mem, wrap_pos, n_heads, gating" + (f". Hints: {'; '.join(hints)}" if hints else "")
        )
    if not copy:
        return
    with torch.no_grad():
        for k, p in own.items():
            if k in sd:
                p.copy_(sd[k].to(p.dtype))


def load_official(cls, path, backbone, config: ARMTConfig | None = None, *, attn_implementation: str | None = None):
    """Load an official-code ARMT checkpoint (file or directory; .bin/.pt/.safetensors)."""
    config = config or ARMTConfig()
    f = _resolve_file(path)
    if f.suffix == ".safetensors" and not isinstance(backbone, torch.nn.Module):
        _check_before_building(cls, _backbone_config(backbone), config, safetensors_header(f), str(path),
                               _official_to_ours)
    sd = read_state_dict(path)
    bb = build_backbone(_backbone_config(backbone) if not isinstance(backbone, torch.nn.Module) else backbone,
                        _local_attn(attn_implementation))
    model = cls(bb, config)
    _load_checked(model, _official_to_ours(sd, model.adapter.layers_attr), str(path))
    model.checkpoint_sha256 = file_sha256(_resolve_file(path))
    return model


def save_pretrained(model, directory) -> None:
    from safetensors.torch import save_model
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "armt_viz",
        "format_version": 1,
        "armt": model.config.to_dict(),
        "backbone": model.backbone.config.to_dict(),
    }
    (d / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    save_model(model, str(d / "model.safetensors"))


_LOCAL_ATTN = ("eager", "sdpa", "flex_attention")
# config keys that make transformers fetch code or kernels from a hub (or run code shipped with a checkpoint)
_HUB_KEYS = ("auto_map", "use_kernels", "kernel_config", "attn_implementation", "_attn_implementation",
             "_attn_implementation_internal", "_experts_implementation")


def _local_attn(name):
    """An attention implementation that runs locally; anything else (a hub kernel such as
    'kernels-community/flash-attn') is ignored with a warning."""
    if name in (None, ""):
        return None
    if name not in _LOCAL_ATTN:
        warnings.warn(f"ignoring attn_implementation={str(name)[:80]!r} from the checkpoint: only {_LOCAL_ATTN} "
                      "are used (others may download kernels from a hub)", UserWarning, stacklevel=3)
        return None
    return name


def _backbone_config(backbone):
    """A backbone config dict/path with the hub-fetching settings removed (see ``_HUB_KEYS``)."""
    if isinstance(backbone, (str, os.PathLike)):
        p = Path(backbone)
        p = p / "config.json" if p.is_dir() else p
        backbone = _read_json(p, "backbone config")
    if isinstance(backbone, dict):
        return {k: v for k, v in backbone.items() if k not in _HUB_KEYS}
    return backbone


def _read_json(p: Path, what: str):
    _regular(p, what)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {str(p)!r} is not valid JSON ({exc}); expected the file written by "
                         "save_pretrained (or an HF config.json)") from None


def load_pretrained(cls, directory):
    d = Path(directory)
    cfg_path = d / "config.json"
    if not os.path.lexists(cfg_path):
        raise FileNotFoundError(f"{str(d)!r} has no config.json; expected a folder written by ARMTModel.save_pretrained")
    meta = _read_json(cfg_path, "model config")
    if not isinstance(meta, dict) or meta.get("format") != "armt_viz":
        fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{str(cfg_path)!r} is not an armt_viz model config (format={fmt!r}); for official checkpoints use ARMTModel.from_official")
    missing_keys = [k for k in ("armt", "backbone") if not isinstance(meta.get(k), dict)]
    if missing_keys:
        raise ValueError(f"{str(cfg_path)!r} has no {' or '.join(repr(k) for k in missing_keys)} object; expected "
                         '{"format": "armt_viz", "armt": {...ARMTConfig...}, "backbone": {...HF config...}} as written '
                         "by ARMTModel.save_pretrained")
    bb_cfg = _backbone_config(dict(meta["backbone"]))
    attn = _local_attn(meta["backbone"].get("_attn_implementation"))
    armt_cfg = ARMTConfig.from_dict(meta["armt"])
    weights = d / "model.safetensors"
    if not os.path.lexists(weights):
        raise FileNotFoundError(f"{str(d)!r} has no model.safetensors; expected the weights written by "
                                "ARMTModel.save_pretrained")
    # the weights' header against the config, on the meta device: nothing is allocated for a config that lies
    try:
        _check_before_building(cls, bb_cfg, armt_cfg, safetensors_header(weights), str(weights))
    except ValueError as exc:
        raise ValueError(f"{str(weights)!r} does not match config.json: {exc}") from None
    model = cls(build_backbone(bb_cfg, attn), armt_cfg)
    from safetensors.torch import load_model
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except Exception as exc:  # not safetensors (e.g. a pickle renamed), truncated, shapes that do not match
        raise ValueError(
            f"{str(weights)!r} is not a readable safetensors file matching config.json "
            f"({type(exc).__name__}: {str(exc)[:200]}); expected the weights written by ARMTModel.save_pretrained. "
            "Save the model again from a trusted copy") from exc
    if missing or unexpected:
        raise ValueError(f"{str(d)!r}: weights do not match config.json: missing {missing}, unexpected {unexpected}")
    model.checkpoint_sha256 = file_sha256(weights)
    model.eval()
    return model
