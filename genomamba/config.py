"""Model configuration: a serializable dataclass whose field names follow mamba_ssm's MambaConfig."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from genomamba.files import read_text


@dataclass
class MambaConfig:
    """Mamba language-model shape. Field names match mamba_ssm so its ``config.json`` loads as-is.

    ``dt_rank="auto"`` means ceil(d_model / 16). ``vocab_size`` is the tokenizer's; the embedding is
    padded up to a multiple of ``pad_vocab_size_multiple`` (``padded_vocab_size``).
    """

    d_model: int = 256
    n_layer: int = 8
    vocab_size: int = 16
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: Union[int, str] = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True
    # training only: dropout on the embedding and on every block's output before it joins the
    # residual stream (0 = none, the mamba_ssm architecture); evaluation and inference never drop
    dropout: float = 0.0
    ssm_cfg: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # free-form metadata (tokenizer name, task, labels, ...)

    def __post_init__(self):
        if self.ssm_cfg is None:  # mamba_ssm reads a null ssm_cfg as no settings
            self.ssm_cfg = {}
        if not isinstance(self.ssm_cfg, dict):
            raise ValueError(f"MambaConfig.ssm_cfg: expected a mapping of Mamba block settings, got {self.ssm_cfg!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"MambaConfig.extra: expected a mapping, got {self.extra!r}")
        for name in _CHECKED_FIELDS:
            setattr(self, name, check_field(name, getattr(self, name)))
        # mamba_ssm keeps the Mamba block's arguments in ssm_cfg; they override the top-level fields
        layer = self.ssm_cfg.get("layer", "Mamba1")
        if layer not in ("Mamba1", "Mamba"):
            raise ValueError(f"MambaConfig.ssm_cfg.layer: genomamba runs Mamba-1 blocks ('Mamba1') only, "
                             f"got {layer!r}")
        unknown = sorted(str(k) for k in set(self.ssm_cfg) - set(SSM_CFG_FIELDS) - set(_SSM_CFG_RUNTIME))
        if unknown:
            raise ValueError(f"MambaConfig.ssm_cfg: unknown key(s) {', '.join(unknown)}; a Mamba-1 block takes "
                             f"{', '.join(SSM_CFG_FIELDS + _SSM_CFG_RUNTIME)}")
        if not isinstance(self.ssm_cfg.get("use_fast_path", True), bool):
            raise ValueError(f"MambaConfig.ssm_cfg.use_fast_path: expected true or false, "
                             f"got {self.ssm_cfg['use_fast_path']!r}")
        for key in SSM_CFG_FIELDS:
            if key in self.ssm_cfg:
                setattr(self, key, check_field(key, self.ssm_cfg[key], f"MambaConfig.ssm_cfg.{key}"))
        if self.dt_min > self.dt_max:
            where = "MambaConfig.ssm_cfg" if {"dt_min", "dt_max"} & set(self.ssm_cfg) else "MambaConfig"
            raise ValueError(f"{where}.dt_min/dt_max: expected 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MambaConfig":
        """Build from a mapping such as a ``config.json``. The fields mamba_ssm 2 added
        (``d_intermediate``, ``attn_layer_idx``, ``attn_cfg``) are accepted where they describe a
        pure Mamba-1 model (no MLP, no attention layers) and refused where they do not."""
        if not isinstance(d, dict):
            got = "null" if d is None else type(d).__name__
            raise ValueError(f"MambaConfig: expected a mapping of model settings, got {got}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(d) - known - set(MAMBA_SSM_V2_FIELDS))
        if unknown:
            raise ValueError(f"MambaConfig: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        _check_mamba_ssm_v2_fields(d)
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "MambaConfig":
        """Read JSON or YAML (a top-level ``model:`` section is accepted in YAML)."""
        path = Path(path)
        text = read_text(path)
        if path.suffix in (".yaml", ".yml"):
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
            if isinstance(data, dict) and "model" in data:
                data = data["model"]
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    def save(self, path: Union[str, os.PathLike]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


_POSITIVE_INTS = ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "pad_vocab_size_multiple")
_NON_NEGATIVE_FLOATS = ("dt_scale", "dt_init_floor", "norm_epsilon", "initializer_range")
_POSITIVE_FLOATS = ("dt_min", "dt_max")
_BOOLS = ("conv_bias", "bias", "rms_norm", "residual_in_fp32", "fused_add_norm", "tie_embeddings",
          "rescale_prenorm_residual")
_CHECKED_FIELDS = _POSITIVE_INTS + ("dt_rank", "dt_init", "dropout") + _POSITIVE_FLOATS + _NON_NEGATIVE_FLOATS + _BOOLS

# mamba_ssm's Mamba-1 block arguments that a config.json may give inside ssm_cfg (they shape or
# initialise the weights), and the ones that only choose how it runs
SSM_CFG_FIELDS = ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor",
                  "conv_bias", "bias")
_SSM_CFG_RUNTIME = ("layer", "use_fast_path")

# fields of mamba_ssm >= 2's MambaConfig that genomamba has no field for: it runs only the values
# that make a pure Mamba-1 model
MAMBA_SSM_V2_FIELDS = ("d_intermediate", "attn_layer_idx", "attn_cfg")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_field(name: str, value: Any, label: Union[str, None] = None) -> Any:
    """``value`` checked for MambaConfig field ``name`` (numbers given as ints become floats where the
    field is a float); a bad one raises ValueError naming ``label`` (default ``MambaConfig.<name>``)."""
    label = label or f"MambaConfig.{name}"
    if name in _POSITIVE_INTS:
        if not _is_int(value) or value < 1:
            raise ValueError(f"{label}: expected a positive int, got {value!r}")
        if name == "d_conv" and value > 4:
            raise ValueError(f"{label}: expected 1..4 (causal conv kernel width), got {value}")
    elif name == "dt_rank":
        if value != "auto" and (not _is_int(value) or value < 1):
            raise ValueError(f"{label}: expected 'auto' or a positive int, got {value!r}")
    elif name == "dt_init":
        if value not in ("random", "constant"):
            raise ValueError(f"{label}: expected 'random' or 'constant', got {value!r}")
    elif name == "dropout":
        if not _is_number(value) or not 0.0 <= value < 1.0:
            raise ValueError(f"{label}: expected a probability in [0, 1), got {value!r}")
        value = float(value)
    elif name in _POSITIVE_FLOATS:
        if not _is_number(value) or value <= 0:
            raise ValueError(f"{label}: expected a positive number, got {value!r}")
        value = float(value)
    elif name in _NON_NEGATIVE_FLOATS:
        if not _is_number(value) or value < 0:
            raise ValueError(f"{label}: expected a finite number >= 0, got {value!r}")
        value = float(value)
    elif name in _BOOLS:
        if not isinstance(value, bool):
            raise ValueError(f"{label}: expected true or false, got {value!r}")
    return value


def _check_mamba_ssm_v2_fields(d: dict[str, Any]) -> None:
    """Refuse mamba_ssm 2 settings that describe blocks genomamba cannot run (an MLP, attention)."""
    inter = d.get("d_intermediate", 0)
    if not _is_int(inter) or inter < 0:
        raise ValueError(f"MambaConfig.d_intermediate: expected an int >= 0, got {inter!r}")
    if inter > 0:
        raise ValueError(f"MambaConfig.d_intermediate: {inter} gives every block an MLP of that width; genomamba "
                         f"runs pure Mamba-1 models only (d_intermediate 0)")
    attn = d.get("attn_layer_idx")
    if attn is not None and not isinstance(attn, list):
        raise ValueError(f"MambaConfig.attn_layer_idx: expected a list of layer indices, got {attn!r}")
    if attn:
        raise ValueError(f"MambaConfig.attn_layer_idx: layers {attn} are attention layers; genomamba runs pure "
                         f"Mamba-1 models only (attn_layer_idx empty)")
    attn_cfg = d.get("attn_cfg")
    if attn_cfg is not None and not isinstance(attn_cfg, dict):
        raise ValueError(f"MambaConfig.attn_cfg: expected a mapping, got {attn_cfg!r}")
