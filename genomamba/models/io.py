"""Save / load without unpickling, plus converters to and from HF transformers' Mamba.

On disk: ``config.json`` (MambaConfig fields, mamba_ssm-compatible) + ``model.safetensors``. A
mamba_ssm directory (``config.json`` + ``pytorch_model.bin``) loads through
``torch.load(weights_only=True)``, which refuses pickled code. An HF ``MambaForCausalLM`` directory
(its ``config.json`` has ``hidden_size``) is converted on the fly.

Everything here works on configs and state dicts, never on the model class: ``MambaLM``
(``models/lm.py``) builds ``save_pretrained`` / ``from_pretrained`` / ``from_hf`` / ``to_hf`` on it.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Union

import torch
from safetensors.torch import load_file, save_file

from genomamba.config import MambaConfig
from genomamba.errors import UserError
from genomamba.files import atomic_path, read_text, write_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded safely or does not match its config."""


def write_pretrained(directory: Union[str, os.PathLike], config: MambaConfig,
                     state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (tensors copied to CPU, contiguous)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text(directory / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
    return directory


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
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as exc:
        raise CheckpointError(
            f"{path}: refused to load: the file is not a plain tensor checkpoint (weights_only=True rejected it: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). genomamba never unpickles code; "
            f"convert it to safetensors with a tool you trust."
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors")
    return obj


# ---------------------------------------------------------------------------- HF transformers


def is_hf_config(d: dict) -> bool:
    return "hidden_size" in d and "d_model" not in d


def config_from_hf(d: dict) -> MambaConfig:
    """HF ``MambaConfig`` dict -> genomamba MambaConfig (HF's vocab is already the padded size)."""
    if d.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"HF config hidden_act={d.get('hidden_act')!r}: only 'silu' is supported")
    if d.get("time_step_init_scheme", "random") not in ("random", "constant"):
        raise CheckpointError(f"HF config time_step_init_scheme={d.get('time_step_init_scheme')!r} unsupported")
    return MambaConfig(
        d_model=d["hidden_size"],
        n_layer=d["num_hidden_layers"],
        vocab_size=d["vocab_size"],
        d_state=d.get("state_size", 16),
        d_conv=d.get("conv_kernel", 4),
        expand=d.get("expand", 2),
        dt_rank=d.get("time_step_rank", "auto"),
        dt_min=d.get("time_step_min", 0.001),
        dt_max=d.get("time_step_max", 0.1),
        dt_init_floor=d.get("time_step_floor", 1e-4),
        conv_bias=d.get("use_conv_bias", True),
        bias=d.get("use_bias", False),
        norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
        residual_in_fp32=d.get("residual_in_fp32", True),
        pad_vocab_size_multiple=1,
        tie_embeddings=d.get("tie_word_embeddings", True),
        initializer_range=d.get("initializer_range", 0.1),
    )


def config_to_hf(cfg: MambaConfig) -> dict:
    """genomamba MambaConfig -> kwargs for ``transformers.MambaConfig``."""
    return dict(
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


def read_pretrained(path: Union[str, os.PathLike]) -> tuple[MambaConfig, dict[str, torch.Tensor], Path, Path]:
    """A saved model directory -> ``(config, state_dict, weights_path, config_path)``.

    Reads genomamba / mamba_ssm directories and HF ``MambaForCausalLM`` ones (config and keys
    converted). Building the model and loading the weights is ``MambaLM.from_pretrained``'s job.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: expected a directory holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: missing (a saved genomamba / mamba_ssm model has one)")
    try:
        raw = json.loads(read_text(cfg_path))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from None
    hf = is_hf_config(raw)
    if hf:
        cfg = config_from_hf(raw)
    else:
        try:
            cfg = MambaConfig.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{cfg_path}: {exc}") from None
    weights = path / WEIGHTS_NAME
    if not weights.exists():
        weights = path / LEGACY_WEIGHTS_NAME
    if not weights.exists():
        raise FileNotFoundError(f"{path}: neither {WEIGHTS_NAME} nor {LEGACY_WEIGHTS_NAME} found")
    sd = read_state_dict(weights)
    if hf:
        sd = state_dict_from_hf(sd)
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
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
