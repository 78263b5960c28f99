"""Task heads on the Mamba backbone: pooling and sequence classification.

A classifier saved with ``save_pretrained`` is a normal LM directory (``config.json`` +
``model.safetensors``) plus ``head.safetensors`` and ``head.json`` (labels, pooling, and the settings
of an audio classifier's spectral front end, whose projection is saved with the head as
``frontend.weight`` / ``frontend.bias``), so the backbone loads by itself as a plain language model
(``MambaLM.from_pretrained``). Its tensors carry mamba_ssm's state-dict names (a tied LM head is
stored once, as the embedding).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from safetensors.torch import save_file

from genomamba.files import atomic_path, read_text, write_text
from genomamba.models.frontend import SpectralFrontEnd
from genomamba.models.io import HEAD_CONFIG, HEAD_WEIGHTS, CheckpointError, read_state_dict
from genomamba.models.lm import MambaLM

POOLINGS = ("last", "mean", "max")
__all__ = ["HEAD_CONFIG", "HEAD_WEIGHTS", "POOLINGS", "SequenceClassifier", "pool", "has_head"]


def pool(hidden: torch.Tensor, mask: Optional[torch.Tensor], how: str) -> torch.Tensor:
    """hidden: (b, l, d); mask: (b, l) bool, True on real tokens (None = all real) -> (b, d).

    ``last`` takes the last real token (the only one that has seen the whole sequence in a causal
    model); ``mean`` / ``max`` ignore padding.
    """
    if how not in POOLINGS:
        raise ValueError(f"pooling: expected one of {POOLINGS}, got {how!r}")
    b, l, _ = hidden.shape
    if mask is None:
        mask = torch.ones(b, l, dtype=torch.bool, device=hidden.device)
    if mask.shape != (b, l):
        raise ValueError(f"mask: expected shape {(b, l)}, got {tuple(mask.shape)}")
    counts = mask.sum(1)
    if bool((counts == 0).any()):
        raise ValueError("mask: every sequence needs at least one real token")
    if how == "last":
        # index of the last True per row (padding may sit on either side)
        pos = torch.arange(l, device=hidden.device).expand(b, l)
        idx = torch.where(mask, pos, torch.full_like(pos, -1)).max(1).values
        return hidden[torch.arange(b, device=hidden.device), idx]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "mean":
        return (hidden * m).sum(1) / counts.unsqueeze(-1).to(hidden.dtype)
    return hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values


class SequenceClassifier(nn.Module):
    """Backbone (a MambaLM, its LM head unused) + pooling + linear head -> logits (b, num_labels).

    With a ``frontend`` (:class:`~genomamba.models.frontend.SpectralFrontEnd`, audio only) the backbone
    reads the front end's frames instead of the token embeddings, and pooling runs over frames."""

    def __init__(self, lm: MambaLM, labels: Sequence[str], pooling: str = "mean", dropout: float = 0.0,
                 frontend: Optional[SpectralFrontEnd] = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
        labels = [str(x) for x in labels]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"labels: expected >= 2 distinct labels, got {labels}")
        self.lm = lm
        self.labels = labels
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(lm.config.d_model, len(labels))
        self.head.bias._no_weight_decay = True
        if frontend is not None and frontend.proj.out_features != lm.config.d_model:
            raise ValueError(f"frontend: projects to {frontend.proj.out_features} features, the backbone's "
                             f"d_model is {lm.config.d_model}")
        self.frontend = frontend

    def forward(self, input_ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.frontend is not None:
            embeds, mask = self.frontend(input_ids, mask)
            hidden = self.lm.backbone(inputs_embeds=embeds)  # (b, frames, d_model)
        else:
            hidden = self.lm.hidden_states(input_ids)  # (b, l, d_model)
        return self.head(self.dropout(pool(hidden, mask, self.pooling)))

    def freeze_backbone(self, freeze: bool = True) -> None:
        for p in self.lm.parameters():
            p.requires_grad_(not freeze)

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        directory = Path(self.lm.save_pretrained(directory))
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        meta = {"labels": self.labels, "pooling": self.pooling}
        if self.frontend is not None:
            proj = self.frontend.proj.state_dict()
            tensors.update({f"frontend.{k}": v.detach().contiguous().cpu() for k, v in proj.items()})
            meta["frontend"] = self.frontend.config()
        with atomic_path(directory / HEAD_WEIGHTS) as tmp:
            save_file(tensors, str(tmp))
        meta = json.dumps(meta, indent=2) + "\n"
        write_text(directory / HEAD_CONFIG, meta)
        return directory

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], device=None) -> "SequenceClassifier":
        directory = Path(directory)
        meta_path = directory / HEAD_CONFIG
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: missing: {directory} holds no classifier head")
        try:
            meta = json.loads(read_text(meta_path))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from None
        labels = meta.get("labels") if isinstance(meta, dict) else None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise CheckpointError(f"{meta_path}: expected a mapping with 'labels': a list of class names")
        head_path = directory / HEAD_WEIGHTS
        state = read_state_dict(head_path)
        front = {k.removeprefix("frontend."): state.pop(k) for k in [k for k in state if k.startswith("frontend.")]}
        missing, unexpected = sorted({"weight", "bias"} - set(state)), sorted(set(state) - {"weight", "bias"})
        if missing or unexpected:
            raise CheckpointError(f"{head_path}: expected a linear head (weight, bias; frontend.weight, frontend.bias "
                                  f"for an audio front end): missing {missing}, unexpected {unexpected}")
        weight, bias = state["weight"], state["bias"]
        if weight.ndim != 2 or tuple(bias.shape) != (weight.shape[0],):
            raise CheckpointError(f"{head_path}: expected weight (classes, d_model) and bias (classes,), got "
                                  f"weight {tuple(weight.shape)}, bias {tuple(bias.shape)}")
        if front and meta.get("frontend") is None:
            raise CheckpointError(f"{head_path}: holds front-end weights ({', '.join(f'frontend.{k}' for k in front)}) "
                                  f"but {meta_path} describes no front end; the two files do not belong together")
        if weight.shape[0] != len(labels):
            raise CheckpointError(f"{meta_path}: lists {len(labels)} labels but {head_path} is a head "
                                  f"for {weight.shape[0]} classes; the two files do not belong together")
        lm = MambaLM.from_pretrained(directory, device=device)
        if weight.shape[1] != lm.config.d_model:
            raise CheckpointError(f"{head_path}: head input width {weight.shape[1]} differs from "
                                  f"the model's d_model {lm.config.d_model}")
        try:
            frontend = None
            if meta.get("frontend") is not None:
                if not isinstance(meta["frontend"], dict):
                    raise ValueError(f"frontend: expected a mapping of settings, got {meta['frontend']!r}")
                frontend = SpectralFrontEnd.from_config(lm.config.d_model, meta["frontend"])
                want = tuple(frontend.proj.weight.shape)
                if sorted(front) != ["bias", "weight"] or tuple(front["weight"].shape) != want \
                        or tuple(front["bias"].shape) != want[:1]:
                    raise ValueError(f"{HEAD_WEIGHTS} holds no front-end projection of shape {want} "
                                     f"(got {sorted(front)})")
                frontend.proj.load_state_dict(front)
            model = cls(lm, labels, meta.get("pooling", "mean"), frontend=frontend)
        except ValueError as exc:
            raise CheckpointError(f"{meta_path}: {exc}") from None
        model.head.load_state_dict(state)
        return model.to(device or "cpu").eval()


def has_head(directory: Union[str, os.PathLike]) -> bool:
    return (Path(directory) / HEAD_CONFIG).exists()
