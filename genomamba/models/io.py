"""Save / load without unpickling, plus converters to and from HF transformers' Mamba.

On disk: ``config.json`` (MambaConfig fields, mamba_ssm-compatible) + ``model.safetensors``. A
mamba_ssm directory (``config.json`` + ``pytorch_model.bin``) loads through
``torch.load(weights_only=True)``, which refuses pickled code. An HF ``MambaForCausalLM`` directory
(its ``config.json`` has ``hidden_size``) is converted on the fly. Weights split into shards
(``model.safetensors.index.json`` + ``model-0000k-of-0000n.safetensors``, as HF's
``save_pretrained(max_shard_size=...)`` writes them) are read from safetensors only.

Everything here works on configs and state dicts, never on the model class: ``MambaLM``
(``models/lm.py``) builds ``save_pretrained`` / ``from_pretrained`` / ``from_hf`` / ``to_hf`` on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from genomamba.config import MambaConfig, check_field
from genomamba.errors import UserError
from genomamba.files import atomic_path, read_text, write_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
SHARDED_INDEX_NAME = "model.safetensors.index.json"
LEGACY_SHARDED_INDEX_NAME = "pytorch_model.bin.index.json"
# a sequence classifier's head, saved beside the backbone (genomamba.models.heads)
HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
# safetensors metadata of a genomamba save: the SHA-256 of the config.json written with the weights,
# so that a weights file beside another config (a save interrupted between its two renames, or a
# config edited since) is noticed on load
CONFIG_DIGEST_KEY = "genomamba_config_sha256"


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded safely or does not match its config."""


def write_pretrained(directory: Union[str, os.PathLike], config: MambaConfig,
                     state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (tensors copied to CPU, contiguous).

    The config is serialised before anything is written, so a config that JSON cannot hold changes
    nothing on disk. Over an earlier save, a classifier head left there (``head.safetensors`` /
    ``head.json``) is removed first: it belonged to the weights being replaced (a classifier's own
    ``save_pretrained`` writes its head again afterwards)."""
    directory = Path(directory)
    try:
        text = json.dumps(config.to_dict(), indent=2) + "\n"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{directory / CONFIG_NAME}: the model's config cannot be written as JSON ({exc}); "
                         f"MambaConfig.extra may hold only JSON values (strings, numbers, booleans, None, "
                         f"lists and mappings with string keys)") from None
    directory.mkdir(parents=True, exist_ok=True)
    for stale in (HEAD_WEIGHTS, HEAD_CONFIG):
        (directory / stale).unlink(missing_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", CONFIG_DIGEST_KEY: _digest(json.loads(text))})
    write_text(directory / CONFIG_NAME, text)
    return directory


def run_dir_hint(path: Union[str, os.PathLike]) -> str:
    """"; did you mean RUN/model?" when ``path`` is a training run's directory, else ""."""
    model = Path(path) / "model"
    if (model / CONFIG_NAME).is_file():
        return f"; did you mean {model}? (a training run keeps its model there)"
    return ""


def _digest(config: dict) -> str:
    """SHA-256 of the config's canonical JSON: the same settings give the same digest however the file
    is laid out (line ends, indentation, key order, "1e-5" or "1e-05")."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _stored_digest(weights: Path) -> "str | None":
    """The config digest a genomamba save put into ``weights``' metadata; None for other files."""
    if weights.suffix != ".safetensors":
        return None
    try:
        with safe_open(str(weights), framework="pt") as fh:
            return (fh.metadata() or {}).get(CONFIG_DIGEST_KEY)
    except Exception:  # unreadable: read_state_dict names the file
        return None


def _some(names, n: int = 5) -> str:
    names = list(names)
    return ", ".join(str(k) for k in names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def read_state_dict(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Read weights from safetensors, or from a legacy ``.bin`` with weights_only=True (no code runs)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(_unreadable_bin(path, exc)) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors, got {type(obj).__name__}")
    bad = [repr(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors; not tensors: {_some(bad)}")
    return obj


def refusal(exc: Exception) -> "str | None":
    """What ``torch.load(weights_only=True)``'s restricted unpickler refused (a global's name, an
    instruction), from its error; None if ``exc`` is no such refusal. Only this is worth quoting:
    the rest of torch's message suggests loading the file with ``weights_only=False``."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text) or re.search(r"(unsupported GLOBAL \S+)", text)
    if found:  # a name or an instruction that is not a tensor's
        return re.split(r" was not an allowed global|\. Please | whose module ", found.group(1))[0].strip()
    if "Weights only load failed" in text:  # torch's restricted unpickler refused it, in other words
        return "objects other than tensors"
    return None


def _unreadable_bin(path: Path, exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` could not read ``path``: no PyTorch file at all, one cut
    short or damaged, or one holding more than tensors (which is never unpickled)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if not head:
        return f"{path}: not a readable tensor checkpoint: the file is empty"
    if head != b"PK" and head[:1] != b"\x80":  # neither torch.save's zip archive nor a pickle
        return f"{path}: not a readable tensor checkpoint: not a PyTorch weights file (nor a pickle of tensors)"
    text = str(exc)
    what = refusal(exc)
    if what is not None:
        return (f"{path}: refused to load: the file is not a plain tensor checkpoint ({what}); it is truncated or "
                f"holds objects other than tensors. genomamba never unpickles code; convert it to safetensors "
                f"with a tool you trust.")
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = re.split(r"(?<=\w)\. ", first, maxsplit=1)[0].rstrip(".")
    reason = first if isinstance(exc, RuntimeError) and first else "it ends early or is damaged"
    return f"{path}: not a readable tensor checkpoint: the file is truncated or corrupted ({reason})"


def read_sharded_state_dict(index: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Weights split over safetensors shards. ``index`` is a ``model.safetensors.index.json`` whose
    ``weight_map`` names, for every parameter, the shard file beside it that holds it; each shard
    must hold exactly the parameters mapped to it."""
    index = Path(index)
    try:
        raw = json.loads(read_text(index))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{index}: not valid JSON ({exc})") from None
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: weight_map: expected a non-empty mapping of parameter names to shard "
                              f"file names, got {weight_map!r}")
    shards: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name.endswith(".safetensors") or "/" in name or "\\" in name \
                or name.startswith("."):
            raise CheckpointError(f"{index}: weight_map[{key!r}]: expected the name of a .safetensors file in "
                                  f"{index.parent}, got {name!r}")
        shards.setdefault(name, []).append(key)
    for name, keys in shards.items():
        if not (index.parent / name).is_file():
            raise CheckpointError(f"{index.parent / name}: missing: {index.name} maps {len(keys)} parameter(s) "
                                  f"to it ({_some(keys, 3)})")
    sd: dict[str, torch.Tensor] = {}
    for name, keys in shards.items():
        shard = index.parent / name
        tensors = read_state_dict(shard)
        absent = [k for k in keys if k not in tensors]
        if absent:
            raise CheckpointError(f"{shard}: lacks {_some(absent)}, which {index} maps to it")
        unlisted = sorted(set(tensors) - set(keys))
        if unlisted:
            raise CheckpointError(f"{shard}: holds {_some(unlisted)}, which {index} does not map to it; the "
                                  f"shards and the index do not belong together")
        sd.update(tensors)
    return sd


# ---------------------------------------------------------------------------- HF transformers


def is_hf_config(d: dict) -> bool:
    return "hidden_size" in d and "d_model" not in d


# genomamba field -> (HF MambaConfig field, its default); the first three are required
_HF_FIELDS = {
    "d_model": ("hidden_size", None),
    "n_layer": ("num_hidden_layers", None),
    "vocab_size": ("vocab_size", None),
    "d_state": ("state_size", 16),
    "d_conv": ("conv_kernel", 4),
    "expand": ("expand", 2),
    "dt_rank": ("time_step_rank", "auto"),
    "dt_min": ("time_step_min", 0.001),
    "dt_max": ("time_step_max", 0.1),
    "dt_init": ("time_step_init_scheme", "random"),
    "dt_scale": ("time_step_scale", 1.0),
    "dt_init_floor": ("time_step_floor", 1e-4),
    "conv_bias": ("use_conv_bias", True),
    "bias": ("use_bias", False),
    "norm_epsilon": ("layer_norm_epsilon", 1e-5),
    "residual_in_fp32": ("residual_in_fp32", True),
    "tie_embeddings": ("tie_word_embeddings", True),
    "initializer_range": ("initializer_range", 0.1),
}


def config_from_hf(d: dict) -> MambaConfig:
    """HF ``MambaConfig`` dict -> genomamba MambaConfig (HF's vocab is already the padded size).
    A missing or bad field raises CheckpointError naming it by its HF name."""
    if d.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"hidden_act: only 'silu' is supported, got {d.get('hidden_act')!r}")
    kw: dict[str, Any] = {}
    for name, (hf_name, default) in _HF_FIELDS.items():
        if hf_name not in d and default is None:
            raise CheckpointError(f"{hf_name}: missing (an HF Mamba config has one)")
        try:
            kw[name] = check_field(name, d.get(hf_name, default), hf_name)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    if kw["dt_min"] > kw["dt_max"]:
        raise CheckpointError(f"time_step_min/time_step_max: expected time_step_min <= time_step_max, "
                              f"got {kw['dt_min']}, {kw['dt_max']}")
    # written by config_to_hf: the real vocabulary inside HF's padded one (else every padding row
    # would count as a token, and sampling could draw ids no tokenizer has)
    real, multiple = d.get("genomamba_vocab_size"), d.get("genomamba_pad_vocab_size_multiple")
    if real is not None or multiple is not None:
        try:
            cfg = MambaConfig(**{**kw, "vocab_size": real, "pad_vocab_size_multiple": multiple})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"genomamba_vocab_size / genomamba_pad_vocab_size_multiple: {exc}") from None
        if cfg.padded_vocab_size == kw["vocab_size"]:
            return cfg
        # the embeddings were resized since (HF's resize_token_embeddings): HF's count is what holds
        warnings.warn(f"genomamba_vocab_size: {real} padded to a multiple of {multiple} is {cfg.padded_vocab_size}, "
                      f"but vocab_size is {kw['vocab_size']} (embeddings resized since?); every one of the "
                      f"{kw['vocab_size']} rows counts as a token", UserWarning, stacklevel=3)
    return MambaConfig(pad_vocab_size_multiple=1, **kw)


def config_to_hf(cfg: MambaConfig) -> dict:
    """genomamba MambaConfig -> kwargs for ``transformers.MambaConfig`` (HF's vocab_size is the padded
    one; the real one rides along as ``genomamba_vocab_size``, which ``config_from_hf`` reads back).
    HF's Mamba normalises with RMSNorm only: a LayerNorm model is refused."""
    if not cfg.rms_norm:
        raise ValueError("rms_norm: false; HF transformers' MambaForCausalLM has RMSNorm layers only, so a "
                         "model with LayerNorm cannot be converted")
    return dict(
        genomamba_vocab_size=cfg.vocab_size,
        genomamba_pad_vocab_size_multiple=cfg.pad_vocab_size_multiple,
        vocab_size=cfg.padded_vocab_size,
        hidden_size=cfg.d_model,
        state_size=cfg.d_state,
        num_hidden_layers=cfg.n_layer,
        layer_norm_epsilon=cfg.norm_epsilon,
        expand=cfg.expand,
        conv_kernel=cfg.d_conv,
        use_bias=cfg.bias,
        use_conv_bias=cfg.conv_bias,
        hidden_act="silu",
        residual_in_fp32=cfg.residual_in_fp32,
        time_step_rank=cfg.resolved_dt_rank,
        time_step_min=cfg.dt_min,
        time_step_max=cfg.dt_max,
        time_step_floor=cfg.dt_init_floor,
        tie_word_embeddings=cfg.tie_embeddings,
    )


def state_dict_from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``MambaForCausalLM`` keys -> mamba_ssm / genomamba keys (only the embedding name differs)."""
    out = {}
    for k, v in sd.items():
        out["backbone.embedding.weight" if k == "backbone.embeddings.weight" else k] = v
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        out["backbone.embeddings.weight" if k == "backbone.embedding.weight" else k] = v
    return out


# ---------------------------------------------------------------------------- load


def find_weights(path: Union[str, os.PathLike]) -> Path:
    """The weights file of model directory ``path``: ``model.safetensors``, else the index of its
    safetensors shards, else a legacy ``pytorch_model.bin``. Sharded ``.bin`` files are refused."""
    path = Path(path)
    for name in (WEIGHTS_NAME, SHARDED_INDEX_NAME, LEGACY_WEIGHTS_NAME):
        if (path / name).exists():
            return path / name
    if (path / LEGACY_SHARDED_INDEX_NAME).exists():
        raise CheckpointError(f"{path / LEGACY_SHARDED_INDEX_NAME}: weights sharded as pytorch_model-*.bin files "
                              f"are not read; genomamba reads shards only as safetensors "
                              f"({SHARDED_INDEX_NAME}), e.g. as HF's save_pretrained writes them by default")
    raise FileNotFoundError(f"{path}: no weights found (looked for {WEIGHTS_NAME}, {SHARDED_INDEX_NAME} and "
                            f"{LEGACY_WEIGHTS_NAME})")


def read_pretrained(path: Union[str, os.PathLike]) -> tuple[MambaConfig, dict[str, torch.Tensor], Path, Path]:
    """A saved model directory -> ``(config, state_dict, weights_path, config_path)``.

    Reads genomamba / mamba_ssm directories and HF ``MambaForCausalLM`` ones (config and keys
    converted), whole or sharded (``weights_path`` is then the shard index). Building the model and
    loading the weights is ``MambaLM.from_pretrained``'s job.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: expected a directory holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: missing (a saved genomamba / mamba_ssm model has one)"
                                f"{run_dir_hint(path)}")
    text = read_text(cfg_path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        got = "null" if raw is None else type(raw).__name__
        raise CheckpointError(f"{cfg_path}: expected a JSON object of model settings, got {got}")
    hf = is_hf_config(raw)
    try:
        cfg = config_from_hf(raw) if hf else MambaConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: {exc}") from None
    weights = find_weights(path)
    stored = _stored_digest(weights)
    if stored is not None and stored != _digest(raw):
        warnings.warn(f"{weights} was saved together with another {cfg_path} (the config was edited since, or a "
                      f"save was interrupted between writing the weights and the config); loading with the "
                      f"config on disk", UserWarning, stacklevel=3)
    sd = read_sharded_state_dict(weights) if weights.name == SHARDED_INDEX_NAME else read_state_dict(weights)
    if hf:
        sd = state_dict_from_hf(sd)
    if cfg.tie_embeddings and "lm_head.weight" in sd:
        head, emb = sd.pop("lm_head.weight"), sd.get("backbone.embedding.weight")
        if emb is not None and (head.shape != emb.shape or not torch.equal(head.to(emb.dtype), emb)):
            tie = "tie_word_embeddings" if hf else "tie_embeddings"
            warnings.warn(f"{weights}: lm_head.weight differs from the embedding, but {cfg_path} ties them "
                          f"({tie}: true): the embedding serves as the LM head and lm_head.weight is ignored",
                          UserWarning, stacklevel=2)
    return cfg, sd, weights, cfg_path


def check_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], weights: Path, cfg_path: Path,
                     strict: bool = True) -> None:
    """Raise CheckpointError if ``sd`` does not fit ``expected`` (names when strict, shapes always)."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if strict and (missing or unexpected):
        raise CheckpointError(f"{weights}: state dict does not match {cfg_path}: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    for k, v in sd.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            want = tuple(expected[k].shape)
            raise CheckpointError(f"{weights}: {k} has shape {tuple(v.shape)}, config expects {want}")
