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
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "pad_vocab_size_multiple"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MambaConfig.{name}: expected a positive int, got {v!r}")
        if self.d_conv > 4:
            raise ValueError(f"MambaConfig.d_conv: expected 1..4 (causal conv kernel width), got {self.d_conv}")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ValueError(f"MambaConfig.dt_rank: expected 'auto' or a positive int, got {self.dt_rank!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"MambaConfig.dt_min/dt_max: expected 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"MambaConfig.dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if self.dt_init not in ("random", "constant"):
            raise ValueError(f"MambaConfig.dt_init: expected 'random' or 'constant', got {self.dt_init!r}")
        # mamba_ssm keeps Mamba-block options in ssm_cfg; lift the ones we understand
        for key in ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor", "conv_bias", "bias"):
            if key in self.ssm_cfg:
                setattr(self, key, self.ssm_cfg[key])
        layer = self.ssm_cfg.get("layer", "Mamba1")
        if layer not in ("Mamba1", "Mamba"):
            raise ValueError(f"MambaConfig.ssm_cfg.layer: only 'Mamba1' is supported, got {layer!r}")

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
        if not isinstance(d, dict):
            raise ValueError(f"MambaConfig.from_dict: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"MambaConfig: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "MambaConfig":
        """Read JSON or YAML (a top-level ``model:`` section is accepted in YAML)."""
        path = Path(path)
        text = read_text(path)
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
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


