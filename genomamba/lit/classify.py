"""Species classification as a thin LightningModule around :class:`SequenceClassifier`."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from genomamba.config import MambaConfig
from genomamba.files import read_text
from genomamba.lit._pl import pl
from genomamba.lit.evaluate import save_confusion_png
from genomamba.lit.optim import build_optimizer, optim_settings
from genomamba.models.frontend import SpectralFrontEnd, with_adapter
from genomamba.models.heads import HEAD_CONFIG, HEAD_WEIGHTS, POOLINGS, SequenceClassifier, has_head
from genomamba.models.io import read_state_dict
from genomamba.models.lm import MambaLM, optimizer_param_groups
from genomamba.tokenizers.dna import DNATokenizer


def _metrics(n: int) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict({
        "acc": MulticlassAccuracy(n, average="micro"),
        "f1": MulticlassF1Score(n, average="macro"),
        "cm": MulticlassConfusionMatrix(n),
    })


class ClassifierModule(pl.LightningModule):
    """Backbone + pooling + linear head trained with cross-entropy.

    Args:
        labels: class names (index = label id).
        model: MambaConfig fields of the backbone (required when ``init_from`` is None).
        init_from: a ``save_pretrained`` directory of a pretrained LM; its weights initialise the
            backbone (the checkpoint of a resumed run overrides them afterwards).
        pooling: ``last`` (causal: the only token that saw the whole window), ``mean`` or ``max``.
        freeze_backbone: train the head only.
        dropout: on the pooled features.
        optim: AdamW / schedule settings; ``head_lr_mult`` scales the head's learning rate.
        plot_dir: where confusion-matrix PNGs go (default: the logger's directory).
        tta_rc: evaluate (val/test) on both strands: average the class probabilities of each window
            and of its reverse complement (training already sees both strands through ``rc_prob``).
        adapter: ``Adapter.to_dict()`` of the run's adapter; None is DNA with the default tokenizer.
        frontend: settings of a spectral front end (audio only; see
            :class:`~genomamba.models.frontend.SpectralFrontEnd`): the backbone reads normalised log-mel
            frames of the clip instead of its samples. The adapter's sample rate and mu are used.
    """

    def __init__(self, labels: Sequence[str], model: Optional[dict] = None, init_from: Optional[str] = None,
                 pooling: str = "mean", freeze_backbone: bool = False, dropout: float = 0.0,
                 optim: Optional[dict] = None, plot_dir: Optional[str] = None, tta_rc: bool = True,
                 adapter: Optional[dict] = None, frontend: Optional[dict] = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
        if adapter and adapter.get("name") != "dna" and tta_rc:
            raise ValueError(f"tta_rc: reverse complement is DNA-only, not for {adapter.get('name')!r} tokens")
        if init_from is not None:
            lm = MambaLM.from_pretrained(init_from).train()
            model = lm.config.to_dict()
        elif model is None:
            raise ValueError("ClassifierModule: give model (a MambaConfig dict) or init_from (a pretrained dir)")
        else:
            lm = MambaLM(model if isinstance(model, MambaConfig) else MambaConfig.from_dict(dict(model)))
            model = lm.config.to_dict()
        self.save_hyperparameters()
        settings = (adapter or {}).get("settings") or {}
        # the reverse complement of test-time augmentation reads the run's own vocabulary
        self._rc_tokenizer = DNATokenizer(**settings) if (adapter or {}).get("name", "dna") == "dna" else None
        front = None
        if frontend is not None:
            if not adapter or adapter.get("name") != "audio":
                raise ValueError("head.frontend: the spectral front end reads audio clips; this run's adapter is "
                                 f"{(adapter or {}).get('name', 'dna')!r}")
            settings = adapter.get("settings", {})
            try:
                full = with_adapter(frontend, settings.get("sample_rate"), settings.get("mu"))
            except ValueError as e:
                raise ValueError(f"head.{e}") from None
            front = SpectralFrontEnd.from_config(lm.config.d_model, full)
        self.net = SequenceClassifier(lm, list(labels), pooling=pooling, dropout=dropout, frontend=front)
        self.head_from = None
        if init_from is not None and has_head(init_from):
            self.head_from = self._reuse_head(init_from)
        if freeze_backbone:
            self.net.freeze_backbone(True)
        n = len(self.net.labels)
        self.val_metrics, self.test_metrics = _metrics(n), _metrics(n)
        self.last_results: dict = {}

    def _reuse_head(self, init_from) -> Optional[str]:
        """``init_from`` is a fine-tuned classifier (e.g. 1 kb windows -> 16 kb): keep its head too when
        its labels are ours in the same order; otherwise the head starts fresh (and we say why)."""
        meta = json.loads(read_text(Path(init_from) / HEAD_CONFIG))
        if list(meta.get("labels", [])) != self.net.labels:
            warnings.warn(f"init_from={init_from}: its head's labels {meta.get('labels')} differ from "
                          f"{self.net.labels}; the head starts from scratch (the backbone is reused)")
            return None
        self.net.head.load_state_dict(read_state_dict(Path(init_from) / HEAD_WEIGHTS))
        return str(init_from)

    @property
    def labels(self) -> list[str]:
        return self.net.labels

    def forward(self, ids, mask=None):
        return self.net(ids, mask)

    @staticmethod
    def _unpack(batch):
        if len(batch) == 3:
            return batch
        return batch[0], None, batch[1]

    def training_step(self, batch, batch_idx):
        ids, mask, y = self._unpack(batch)
        logits = self.net(ids, mask)
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, on_step=True, prog_bar=True, batch_size=ids.shape[0])
        return loss

    def _eval(self, batch, metrics, prefix):
        ids, mask, y = self._unpack(batch)
        logits = self.net(ids, mask).float()
        if self.hparams.get("tta_rc", False):
            rc = self._rc_tokenizer.reverse_complement(ids, mask)
            rc_ids, rc_mask = rc if mask is not None else (rc, None)
            both = torch.stack([logits.log_softmax(-1), self.net(rc_ids, rc_mask).float().log_softmax(-1)])
            logits = torch.logsumexp(both, 0) - math.log(2.0)  # log of the mean probability
        loss = F.cross_entropy(logits, y)
        pred = logits.argmax(-1)
        for m in metrics.values():
            m.update(pred, y)
        self.log(f"{prefix}/loss", loss, on_epoch=True, batch_size=ids.shape[0])

    def validation_step(self, batch, batch_idx):
        self._eval(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        self._eval(batch, self.test_metrics, "test")

    def on_validation_epoch_end(self):
        self._finish(self.val_metrics, "val")

    def on_test_epoch_end(self):
        self._finish(self.test_metrics, "test")

    def _finish(self, metrics, prefix):
        if metrics["acc"].update_count == 0:
            return
        acc, f1, cm = metrics["acc"].compute(), metrics["f1"].compute(), metrics["cm"].compute()
        self.log_dict({f"{prefix}/acc": acc, f"{prefix}/f1_macro": f1}, prog_bar=True)
        self.last_results[prefix] = {"acc": float(acc), "f1_macro": float(f1), "confusion": cm.cpu().tolist(),
                                     "labels": list(self.labels)}
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            where = self.hparams.plot_dir or (self.trainer.log_dir if self.trainer.loggers else None)
            if where:
                title = f"{prefix}: acc {float(acc):.3f}, macro-F1 {float(f1):.3f} (step {self.global_step})"
                save_confusion_png(cm, self.labels, Path(where) / f"confusion_{prefix}.png", title)
        for m in metrics.values():
            m.reset()

    def configure_optimizers(self):
        o = optim_settings(self.hparams.optim)
        mult = float(o.pop("head_lr_mult", 1.0))
        wd = float(o["weight_decay"])
        groups = optimizer_param_groups(self.net.lm, wd)
        head = optimizer_param_groups(self.net.head, wd)
        for g in head:
            g["lr"] = float(o["lr"]) * mult
        return build_optimizer(self.net, self.trainer, o, groups=groups + head)
