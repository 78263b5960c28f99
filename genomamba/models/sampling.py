"""Next-token sampling: temperature, top-k and nucleus (top-p), with an optional seeded generator."""

from __future__ import annotations

import torch


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """logits: (b, v) -> token ids (b,). ``temperature <= 0`` is greedy, and so is ``top_k == 1``
    (the one token kept is drawn with probability 1; no random numbers are used)."""
    if top_k < 0:
        raise ValueError(f"top_k: expected >= 0, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: expected 0 < top_p <= 1, got {top_p}")
    logits = logits.float()
    if temperature <= 0 or top_k == 1:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
