"""Next-token pretraining as a thin LightningModule around :class:`genomamba.MambaLM`: next base for
DNA, next byte for text, next mu-law sample for audio (the ``adapter`` names the modality and its
metric: ``bpb`` bits per base, ``bits_per_byte``, ``bits_per_sample``).

The module holds the plain ``nn.Module`` (``self.model``) and adds only the step logic, metrics
and optimizer groups. Everything it needs to be rebuilt from a checkpoint is in
its hyperparameters (model shape, optimizer settings, tokenizer), so ``--resume`` needs no
other file.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchmetrics import Metric

from genomamba.adapters import adapter_from_json
from genomamba.config import MambaConfig
from genomamba.lit._pl import pl
from genomamba.lit.optim import build_optimizer
from genomamba.models.lm import MambaLM
from genomamba.models.segmented import segmented_loss
from genomamba.parallel import build_context_parallel
from genomamba.tokenizers.dna import DNATokenizer

LN2 = math.log(2.0)


class LMMetrics(Metric):
    """Summed next-base NLL, correct predictions and scored bases -> loss, perplexity, bits/base, accuracy.

    Sums (not per-batch means) so a padded or N-heavy batch weighs by the bases it actually scores.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, correct: torch.Tensor, n: torch.Tensor) -> None:
        self.nll += nll_sum.detach().double()
        self.correct += correct.detach().long()
        self.n += n.detach().long()

    def compute(self) -> dict:
        n = self.n.clamp_min(1).double()
        loss = self.nll / n
        return {"loss": loss.float(), "ppl": torch.exp(loss).float(), "bpb": (loss / LN2).float(),
                "acc": (self.correct.double() / n).float(), "bases": self.n.float()}


def scored_targets(ids: torch.Tensor, mask: Optional[torch.Tensor], target_ok: torch.Tensor) -> torch.Tensor:
    """(b, L - 1) bool: which next-base targets of ``ids`` (b, L) are scored (a target id that counts,
    and both positions inside ``mask`` when given)."""
    ok = target_ok[ids[:, 1:]]
    if mask is not None:
        ok = ok & mask[:, 1:] & mask[:, :-1]
    return ok


def next_base_loss(logits: torch.Tensor, ids: torch.Tensor, mask: Optional[torch.Tensor], target_ok: torch.Tensor):
    """Causal LM loss on next bases only.

    logits: (b, l, v) for positions 0..l-1; ids, mask: (b, l); target_ok: (V,) bool, True for token
    ids that count as a target (A, C, G, T: never pad, N or specials).
    Returns (mean nll, nll sum, correct count, n scored) over positions whose *target* is scored.
    """
    tgt = ids[:, 1:]
    ok = scored_targets(ids, mask, target_ok)
    lg = logits[:, :-1].float()
    nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none").view_as(tgt)
    nll = torch.where(ok, nll, torch.zeros_like(nll))
    n = ok.sum()
    correct = ((lg.argmax(-1) == tgt) & ok).sum()
    total = nll.sum()
    return total / n.clamp_min(1), total, correct, n


class PretrainModule(pl.LightningModule):
    """Next-base pretraining of a MambaLM.

    Args:
        model: MambaConfig fields (a dict, for the checkpoint's hyperparameters) or a MambaConfig.
        optim: AdamW / schedule settings (``OptimConfig`` fields; the rest default).
        tokenizer: ``DNATokenizer.to_dict()``; the default tokenizer if None.
        gradient_checkpointing: recompute each layer in backward (long context).
        adapter: ``Adapter.to_dict()`` of another modality (text, audio); None is DNA. Its data ids
            (every id but the specials) are the scored targets.
    """

    def __init__(self, model: dict, optim: Optional[dict] = None, tokenizer: Optional[dict] = None,
                 gradient_checkpointing: bool = False, adapter: Optional[dict] = None):
        super().__init__()
        if isinstance(model, MambaConfig):
            model = model.to_dict()
        self.save_hyperparameters()
        self.adapter = adapter_from_json(adapter) if adapter else None
        self.tokenizer = DNATokenizer.from_dict(tokenizer) if tokenizer else DNATokenizer()
        vocab = self.adapter if self.adapter is not None else self.tokenizer
        self.bits_key = self.adapter.bits_key if self.adapter is not None else "bpb"
        cfg = MambaConfig.from_dict(dict(model))
        if cfg.vocab_size < vocab.vocab_size:
            raise ValueError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's "
                             f"{vocab.vocab_size} tokens")
        self.model = MambaLM(cfg)
        self.model.gradient_checkpointing_enable(gradient_checkpointing)
        ok = torch.zeros(cfg.padded_vocab_size, dtype=torch.bool)
        t = self.tokenizer
        ok[[t.a_id, t.c_id, t.g_id, t.t_id] if self.adapter is None else self.adapter.data_ids] = True
        self.register_buffer("target_ok", ok, persistent=False)
        self.train_metrics, self.val_metrics, self.test_metrics = LMMetrics(), LMMetrics(), LMMetrics()
        # Set by SeqLenWarmup: each (b, L) batch is cut into (b * L / l, l) pieces while l < L.
        self.train_seq_len: Optional[int] = None
        # Ranks per sequence (trainer.context_parallel; set before fit, not a hyperparameter: a checkpoint
        # resumes under any layout) and, once the processes run, this rank's group.
        self.context_parallel: int = 1
        self.cp = None
        # trainer.segment_len (set before fit, like context_parallel): windows longer than this are
        # read in segments that carry the recurrent states; exact, with the memory of one segment
        self.segment_len: Optional[int] = None

    def setup(self, stage: str) -> None:
        if self.context_parallel > 1 and self.cp is None:
            self.cp = build_context_parallel(self.context_parallel)
            self.model.set_context_parallel(self.cp)

    def _loss(self, ids, mask):
        """(loss this rank backpropagates, nll sum, correct, n scored) of a (b, L) batch. Split over a
        context-parallel group, the rank scores its slice (its last target is the next slice's first
        base) and scales its loss by P / (bases the group scores): DDP's mean over all ranks then
        gives the gradient of the whole sequence's mean loss."""
        cp = self.cp
        if cp is None and self.segment_len is not None and ids.shape[1] > self.segment_len:
            return self._segmented_loss(ids, mask)
        if cp is None:
            return next_base_loss(self.model(ids), ids, mask, self.target_ok)
        start, stop = cp.bounds(ids.shape[1])
        _, nll, correct, n = self._slice_loss(self.model(ids[:, start:stop]), ids, mask, start, stop)
        group_n = n.detach().clone()
        dist.all_reduce(group_n, group=cp.group)
        return nll * cp.size / group_n.clamp_min(1), nll, correct, n

    def _segmented_loss(self, ids, mask):
        """As ``next_base_loss`` over the whole window, read ``segment_len`` tokens at a time: each
        segment scores the targets its positions predict (its last one is the next segment's first)."""

        def segment(logits, start, stop):
            _, nll, correct, n = self._slice_loss(logits, ids, mask, start, stop)
            return nll, nll.detach(), correct, n

        n_total = scored_targets(ids, mask, self.target_ok).sum().clamp_min(1)
        loss, (nll, correct, n) = segmented_loss(self.model, ids, self.segment_len, segment, n_total)
        return loss, nll, correct, n

    def _slice_loss(self, logits, ids, mask, start, stop):
        """``next_base_loss`` of positions ``start:stop`` of the window ``ids`` (b, L) from their logits:
        the last position's target is the next slice's first base (none at the window's end)."""
        end = min(stop + 1, ids.shape[1])
        if end > stop:
            logits = F.pad(logits, (0, 0, 0, 1))  # a last row that predicts nothing (it is never scored)
        return next_base_loss(logits, ids[:, start:end], None if mask is None else mask[:, start:end], self.target_ok)

    def _world_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over every process (itself in one process)."""
        if self._trainer is None or self.trainer.world_size == 1 or not dist.is_initialized():
            return t
        t = t.detach().clone()
        dist.all_reduce(t)
        return t

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)

    def _split(self, batch):
        ids, mask = batch[0], batch[1] if len(batch) > 1 else None
        return ids, mask

    def training_step(self, batch, batch_idx):
        ids, mask = self._split(batch)
        b, L = ids.shape
        seq = self.train_seq_len
        if seq is not None and seq < L:
            if L % seq:
                raise ValueError(f"sequence-length warmup: window length {L} is not a multiple of {seq}")
            ids = ids.reshape(b * L // seq, seq)  # same tokens per step: the batch grows as l shrinks
            mask = None if mask is None else mask.reshape(b * L // seq, seq)
        loss, nll, correct, n = self._loss(ids, mask)
        self.train_metrics.update(nll, correct, n)
        nf = n.clamp_min(1).float()
        shown, shown_acc = loss, correct.float() / nf
        if self.trainer.world_size > 1:  # the loss of every token of the step, over all ranks
            tot = self._world_sum(torch.stack([nll.detach().double(), correct.double(), n.double()]))
            shown, shown_acc = (tot[0] / tot[2].clamp_min(1)).float(), (tot[1] / tot[2].clamp_min(1)).float()
        self.log_dict({"train/loss": shown, f"train/{self.bits_key}": shown / LN2, "train/acc": shown_acc},
                      on_step=True, on_epoch=False, prog_bar=True, batch_size=ids.shape[0])
        self.log("train/seq_len", float(ids.shape[1]), on_step=True, on_epoch=False, batch_size=ids.shape[0])
        return loss

    def on_train_epoch_end(self):
        self._log_epoch(self.train_metrics, "train_epoch")

    def _eval_step(self, batch, metrics: LMMetrics):
        ids, mask = self._split(batch)
        _, nll, correct, n = self._loss(ids, mask)
        metrics.update(nll, correct, n)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self):
        self._log_epoch(self.val_metrics, "val", prog_bar=True)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_metrics)

    def on_test_epoch_end(self):
        self._log_epoch(self.test_metrics, "test")

    def _log_epoch(self, metrics: LMMetrics, prefix: str, prog_bar: bool = False):
        if int(self._world_sum(metrics.n)) == 0:  # every rank decides alike (compute() syncs them)
            metrics.reset()
            return
        vals = metrics.compute()
        vals[self.bits_key] = vals.pop("bpb")
        if self.adapter is not None:
            vals[f"{self.adapter.unit}s"] = vals.pop("bases")
        self.log_dict({f"{prefix}/{k}": v for k, v in vals.items()}, prog_bar=prog_bar)
        metrics.reset()

    def configure_optimizers(self):
        return build_optimizer(self.model, self.trainer, self.hparams.optim)
