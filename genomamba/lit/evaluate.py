"""Scoring a saved species classifier outside training: accuracy, macro-F1, confusion matrix (+ PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_f1_score


def evaluate_classifier(net, dataset, batch_size: int = 32, device=None) -> dict:
    """Accuracy, macro-F1, confusion matrix of a SequenceClassifier on (ids, mask, label) windows."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(device).eval()
    preds, ys, probs = [], [], []
    with torch.no_grad():
        for ids, mask, y in DataLoader(dataset, batch_size=batch_size):
            logits = net(ids.to(device), mask.to(device)).float()
            probs.append(logits.softmax(-1).cpu())
            preds.append(logits.argmax(-1).cpu())
            ys.append(y)
    p, y = torch.cat(preds), torch.cat(ys)
    n = len(net.labels)
    return {"acc": float((p == y).float().mean()), "f1_macro": float(multiclass_f1_score(p, y, n, average="macro")),
            "confusion": multiclass_confusion_matrix(p, y, n).tolist(), "labels": list(net.labels),
            "n_windows": int(len(y)), "probs": torch.cat(probs)}


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
