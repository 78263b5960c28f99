"""AdamW with per-step linear warmup then cosine decay, over ``_no_weight_decay``-tagged groups.

``OptimConfig`` is the one place the optimizer defaults live: the ``optim:`` section of a run
config, and the settings a LightningModule falls back on for any key its ``optim`` dict leaves out.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from genomamba.models.lm import optimizer_param_groups


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.1
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    head_lr_mult: float = 1.0  # classifier only: the head's lr = lr * head_lr_mult


def optim_settings(optim: Optional[dict]) -> dict:
    """``optim`` over the ``OptimConfig`` defaults; unknown keys are refused by name."""
    defaults = dataclasses.asdict(OptimConfig())
    unknown = sorted(set(optim or {}) - set(defaults))
    if unknown:
        raise ValueError(f"optim: unknown key(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **(optim or {})}


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupCosine:
    """The LR multiplier as a picklable object: ``total`` can be re-planned during a run (see
    ``TimeBudget``) and is saved with the scheduler's state in the checkpoint."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = int(warmup), int(total), float(min_ratio)

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup, self.total, self.min_ratio)


def build_optimizer(module: torch.nn.Module, trainer, optim: Optional[dict], groups: Optional[list] = None):
    """AdamW over the ``_no_weight_decay`` tag groups + per-step warmup/cosine LambdaLR.

    ``groups`` (optional) replaces the default grouping of ``module``; a group may carry its own
    ``lr`` (e.g. a classifier head trained faster than its pretrained backbone).
    """
    o = optim_settings(optim)
    if groups is None:
        groups = optimizer_param_groups(module, float(o["weight_decay"]))
    groups = [g for g in groups if g["params"]]
    on_cuda = any(p.is_cuda for g in groups for p in g["params"])
    opt = torch.optim.AdamW(groups, lr=float(o["lr"]), betas=tuple(o["betas"]), eps=float(o["eps"]),
                            foreach=True if on_cuda else None)  # fused AdamW + AMP clipping: Lightning refuses
    total = int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else \
        int(trainer.estimated_stepping_batches)
    warm, floor = int(o["warmup_steps"]), float(o["min_lr_ratio"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warm, total, floor))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
