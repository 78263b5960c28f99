"""Evaluation outside the training loop: a saved species classifier (accuracy, macro-F1, confusion
matrix) and a language model reading whole held-out sequences as streams (optionally adapting as it reads)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_f1_score


def evaluate_classifier(net, dataset, batch_size: int = 32, device=None, rc_tokenizer=None) -> dict:
    """Accuracy, macro-F1, confusion matrix of a SequenceClassifier on (ids, mask, label) windows;
    also the class probabilities (``probs``) and true classes (``targets``) of every window.
    ``rc_tokenizer`` (DNA): a window's probabilities are the mean over both strands, as training's
    evaluation takes them (``head.tta_rc``)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(device).eval()
    ys, probs = [], []
    with torch.no_grad():
        for ids, mask, y in DataLoader(dataset, batch_size=batch_size):
            probs.append(window_probs(net, ids.to(device), mask.to(device), rc_tokenizer).cpu())
            ys.append(y)
    return score_probabilities(torch.cat(probs), torch.cat(ys), net.labels)


def window_probs(net, ids: torch.Tensor, mask=None, rc_tokenizer=None) -> torch.Tensor:
    """Class probabilities (b, classes) of windows (b, L); with ``rc_tokenizer`` (DNA) the mean of each
    window's and its reverse complement's."""
    p = net(ids, mask).float().softmax(-1)
    if rc_tokenizer is None:
        return p
    rc = rc_tokenizer.reverse_complement(ids, mask)
    rc_ids, rc_mask = rc if mask is not None else (rc, None)
    return (p + net(rc_ids, rc_mask).float().softmax(-1)) / 2


def score_probabilities(probs: torch.Tensor, targets: torch.Tensor, labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1 and confusion matrix of the argmax of ``probs`` (n, classes) against ``targets``."""
    p, y, n = probs.argmax(-1), targets.long(), len(labels)
    return {"acc": float((p == y).float().mean()), "f1_macro": float(multiclass_f1_score(p, y, n, average="macro")),
            "confusion": multiclass_confusion_matrix(p, y, n).tolist(), "labels": list(labels),
            "n_windows": int(len(y)), "probs": probs, "targets": y}


def save_confusion_png(cm, labels: Sequence[str], path, title: str = "") -> Path:
    """Confusion matrix (rows: true, columns: predicted) as a PNG with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else cm
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.0 * n + 2))
    ax.imshow(cm, cmap="Blues")
    short = [lab.replace("_", " ") for lab in labels]
    ax.set_xticks(range(n), short, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n), short, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > top / 2 else "black", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stream_bits(model, sequences: Sequence, target_ok: torch.Tensor, chunk_len: int = 8192,
                adapt_lr: float = 0.0, device=None) -> dict:
    """Bits per scored token of each sequence read front to back as one stream.

    Chunks of ``chunk_len`` tokens hand their recurrent states on, so every token is predicted from
    everything before it in its sequence (tiled evaluation windows start each window from a blank
    state instead). ``target_ok`` (vocab,) bool marks the ids that count as targets.

    With ``adapt_lr > 0`` the model also learns while it reads (dynamic evaluation): each chunk is
    scored first and then the weights take one SGD step on that chunk's mean loss, so a token's
    code length only ever comes from weights that have not seen it, as in an adaptive compressor
    (xz, PPM). The weights are restored afterwards. ``device`` (default: the model's) is where the
    model is moved and read.

    Returns ``{"bits": bits per scored token, "tokens": scored tokens, "chunk_len", "adapt_lr"}``.
    """
    if isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 1:
        raise ValueError(f"chunk_len: expected a positive int, got {chunk_len!r}")
    if not (isinstance(adapt_lr, (int, float)) and math.isfinite(adapt_lr) and adapt_lr >= 0):
        raise ValueError(f"adapt_lr: expected a finite learning rate >= 0, got {adapt_lr!r}")
    device = torch.device(device or next(model.parameters()).device)
    model.to(device)  # a trainer leaves its module on the CPU when it is done
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params] if adapt_lr else None
    ok_ids = target_ok.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_sum = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for seq in sequences:
            ids = torch.as_tensor(seq, dtype=torch.long).to(device).view(1, -1)
            cache = model.allocate_cache(1, device=device)
            for start in range(0, ids.shape[1] - 1, chunk_len):
                stop = min(start + chunk_len, ids.shape[1] - 1)
                tgt = ids[:, start + 1:stop + 1]
                with torch.set_grad_enabled(bool(adapt_lr)), (autocast or contextlib.nullcontext()):
                    logits = model(ids[:, start:stop], cache=cache)
                    lg = logits if logits.dtype == torch.float64 else logits.float()
                    nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none")
                    ok = ok_ids[tgt.reshape(-1)]
                    chunk_nll = torch.where(ok, nll, torch.zeros_like(nll)).sum()
                n_ok = ok.sum()
                nll_sum += chunk_nll.detach().double()
                n_sum += n_ok
                if adapt_lr:
                    (chunk_nll / n_ok.clamp_min(1)).backward()
                    with torch.no_grad():
                        for p in params:
                            if p.grad is not None:
                                p.sub_(p.grad, alpha=adapt_lr)
                                p.grad = None
                    cache.detach()
    finally:
        if saved is not None:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
                    p.grad = None
        model.train(was_training)
    n = int(n_sum)
    return {"bits": float(nll_sum) / max(n, 1) / math.log(2.0), "tokens": n, "chunk_len": chunk_len,
            "adapt_lr": float(adapt_lr)}


def stream_test(model, store, splits, target_ok: torch.Tensor, chunk_len: int, adapt_lr: Sequence[float] = (),
                bits_key: str = "bits", device=None) -> dict:
    """:func:`stream_bits` of a corpus's held-out test sequences (``splits.test`` regions of ``store``).

    With learning rates in ``adapt_lr`` the test is also read adaptively, at the rate that scores
    best on the validation sequences (the first rate when there is no validation split). Returns
    ``{"chunk_len", bits_key, "tokens"[, "adaptive": {"lr", bits_key, "val_by_lr", "chosen_on"}]}``.
    """
    test = store.read_regions(splits.test)
    static = stream_bits(model, test, target_ok, chunk_len, device=device)
    out = {"chunk_len": chunk_len, bits_key: round(static["bits"], 4), "tokens": static["tokens"]}
    if adapt_lr:
        val = store.read_regions(splits.val) if splits.val else []
        by_lr = {float(lr): stream_bits(model, val, target_ok, chunk_len, float(lr), device=device)["bits"]
                 for lr in adapt_lr} if val else {}
        # a rate that blew the weights up (inf / nan bits) is never chosen
        lr = min(by_lr, key=lambda r: by_lr[r] if math.isfinite(by_lr[r]) else math.inf) if by_lr \
            else float(adapt_lr[0])
        got = stream_bits(model, test, target_ok, chunk_len, lr, device=device)
        val_by_lr = {str(k): (round(v, 4) if math.isfinite(v) else str(v)) for k, v in by_lr.items()}
        out["adaptive"] = {"lr": lr, bits_key: round(got["bits"], 4), "val_by_lr": val_by_lr,
                           "chosen_on": "validation" if by_lr else "none (no validation split): the first rate"}
    return out
