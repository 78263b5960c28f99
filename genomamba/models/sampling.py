"""Next-token sampling: temperature, top-k and nucleus (top-p), with an optional seeded generator.

A token is drawn by the Gumbel-max rule: with U uniform on [0, 1), argmax(s - log(-log U)) over the
scores s is distributed as softmax(s). The uniform noise is the only randomness and is drawn from
the caller's generator before the draw, so the same draw also runs inside a captured CUDA graph
(``genomamba.models.decode``) with the noise as an input: for one seed, graph and eager decoding
give the same tokens. The filters are applied on the scores divided by the temperature: top-k keeps
the tokens whose score reaches the k-th largest (ties kept), then top-p keeps the smallest prefix of
the remaining tokens, by descending probability, whose mass reaches p (the top token always stays).
"""

from __future__ import annotations

import torch

OFF_TOP_P = 2.0  # a top_p filter value that keeps every token


GREEDY_BELOW = 1e-30  # temperatures below this decode greedily: their limit, and 1 / T would overflow


def greedy(temperature: float, top_k: int) -> bool:
    """``temperature <= 0`` is greedy, and so is ``top_k == 1`` (the one token kept is drawn with
    probability 1; no random numbers are used), and a temperature below ``GREEDY_BELOW``."""
    return temperature < GREEDY_BELOW or top_k == 1


def filters_sort(top_k: int, top_p: float, width: int) -> bool:
    """Whether the top-k / top-p filters do anything for scores ``width`` wide (they need a sort)."""
    return 0 < top_k < width or top_p < 1.0


def draw(scores: torch.Tensor, noise: torch.Tensor, inv_temp: torch.Tensor, top_k: torch.Tensor,
         top_p: torch.Tensor, sort: bool) -> torch.Tensor:
    """One token per row. ``scores``: (b, v) float32, -inf where a token may not be drawn; ``noise``:
    (b, v) uniform on [0, 1); ``inv_temp``, ``top_k`` (int64, >= v: off) and ``top_p`` (> 1: off) are
    0-dim tensors on the scores' device, so one captured graph serves any values; ``sort``: whether
    the filters run at all (see :func:`filters_sort`). Every operation is a fixed-shape kernel with no
    host synchronisation."""
    s = scores * inv_temp
    if sort:
        v = s.shape[-1]
        sv, idx = torch.sort(s, dim=-1, descending=True)
        kth = sv.gather(-1, (top_k - 1).clamp(0, v - 1).expand(s.shape[0], 1))
        sv = sv.masked_fill(sv < kth, float("-inf"))
        probs = torch.softmax(sv, dim=-1)
        sv = sv.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf"))
        s = torch.full_like(s, float("-inf")).scatter(-1, idx, sv)
    return (s - torch.log(-torch.log(noise))).argmax(-1)


def filter_values(temperature: float, top_k: int, top_p: float, width: int, device) -> tuple:
    """(inv_temp, top_k, top_p) as the 0-dim tensors :func:`draw` takes, filters off where they keep
    every token."""
    k = top_k if 0 < top_k < width else width
    p = top_p if top_p < 1.0 else OFF_TOP_P
    return (torch.tensor(1.0 / temperature, dtype=torch.float32, device=device),
            torch.tensor(k, dtype=torch.long, device=device),
            torch.tensor(p, dtype=torch.float32, device=device))


def noise_like(scores: torch.Tensor, generator=None) -> torch.Tensor:
    """The draw's uniform noise for ``scores``, from ``generator`` (the default one when None)."""
    return torch.empty_like(scores).uniform_(0.0, 1.0, generator=generator)


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """logits: (b, v) -> token ids (b,); -inf logits are never drawn. Greedy as :func:`greedy` says;
    otherwise one uniform number per logit is drawn from ``generator`` (the default generator when
    None) and the token follows by :func:`draw`."""
    if top_k < 0:
        raise ValueError(f"top_k: expected >= 0, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: expected 0 < top_p <= 1, got {top_p}")
    scores = logits.float()
    if greedy(temperature, top_k):
        return scores.argmax(-1)
    width = scores.shape[-1]
    return draw(scores, noise_like(scores, generator), *filter_values(temperature, top_k, top_p, width, scores.device),
                filters_sort(top_k, top_p, width))
