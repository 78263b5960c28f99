"""Next-token sampling: temperature, top-k and nucleus (top-p), with an optional seeded generator.

A token is drawn by the Gumbel-max rule: with U uniform on [0, 1), argmax(s - log(-log U)) over the
scores s is distributed as softmax(s). The uniform noise is the only randomness and is drawn from
the caller's generator before the draw, so the same draw also runs inside a captured CUDA graph
(``genomamba.models.decode``) with the noise as an input: for one seed, graph and eager decoding
give the same tokens. Top-k keeps the tokens whose score reaches the k-th largest (ties kept; the
temperature does not change which tokens these are), then the scores are divided by the temperature
and top-p keeps the smallest prefix of the remaining tokens, by descending probability, whose mass
reaches p (the top token always stays, however small p is).

A very large temperature draws (near-)uniformly among the tokens that may be drawn, never any other:
the inverse temperature is held at or above ``MIN_INV_TEMP`` so that a score of -inf stays -inf.
"""

from __future__ import annotations

import math

import torch

GREEDY_BELOW = 1e-30  # temperatures below this decode greedily: their limit, and 1 / T would overflow
# the smallest inverse temperature used: 1 / T of a huge T would round to 0 in float32, and -inf * 0 is NaN;
# at this scale every finite score is ~0 next to the Gumbel noise, so the draw is uniform over the finite ones
MIN_INV_TEMP = torch.finfo(torch.float32).tiny


def greedy(temperature: float, top_k: int) -> bool:
    """``temperature <= 0`` is greedy, and so is ``top_k == 1`` (the one token kept is drawn with
    probability 1; no random numbers are used), and a temperature below ``GREEDY_BELOW``."""
    return temperature < GREEDY_BELOW or top_k == 1


def filters(top_k: int, top_p: float, width: int) -> tuple[int, bool]:
    """(k, nucleus) for scores ``width`` wide: k > 0 when the top-k filter drops tokens (a static
    size: ``torch.topk`` takes it as an int), nucleus when the top-p filter is on (it needs a sort)."""
    return (top_k if 0 < top_k < width else 0), top_p < 1.0


def draw(scores: torch.Tensor, noise: torch.Tensor, inv_temp: torch.Tensor, top_p: torch.Tensor, k: int,
         nucleus: bool) -> torch.Tensor:
    """One token per row. ``scores``: (b, v) float32, -inf where a token may not be drawn; ``noise``:
    (b, v) uniform on [0, 1); ``inv_temp`` and ``top_p`` are 0-dim tensors on the scores' device, so one
    captured graph serves any values; ``k`` and ``nucleus`` as :func:`filters` gives them. Every
    operation is a fixed-shape kernel with no host synchronisation."""
    # Tokens are ranked on the unscaled scores: a huge temperature scales them towards 0, where they
    # could tie (or flush to 0 with denormals off) and the top token would be lost.
    if k:
        kth = torch.topk(scores, k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    s = scores * inv_temp
    if nucleus:  # sorting after the top-k mask: mostly -inf rows sort fast
        ranked, idx = torch.sort(scores, dim=-1, descending=True)
        sv = ranked * inv_temp
        probs = torch.softmax(sv, dim=-1)
        drop = probs.cumsum(-1) - probs >= top_p
        drop[:, 0] = False  # the top token stays, even where p rounds to 0 in float32
        sv = sv.masked_fill(drop, float("-inf"))
        s = torch.full_like(s, float("-inf")).scatter(-1, idx, sv)
    return (s - torch.log(-torch.log(noise))).argmax(-1)


def filter_values(temperature: float, top_p: float, device) -> tuple:
    """(inv_temp, top_p) as the 0-dim float32 tensors :func:`draw` takes. The inverse temperature is
    at least ``MIN_INV_TEMP`` (a huge temperature draws uniformly among the tokens that may be drawn)."""
    return (torch.tensor(max(1.0 / temperature, MIN_INV_TEMP), dtype=torch.float32, device=device),
            torch.tensor(min(top_p, 1.0), dtype=torch.float32, device=device))


def fill_uniform(noise: torch.Tensor, generator=None) -> torch.Tensor:
    """``noise`` (b, v) filled with uniform numbers in place: from ``generator`` (the default one when
    None), or row i from ``generator[i]`` when it is a list of generators (one per sequence: a
    sequence's draws then depend on its own seed alone, not on the batch it is decoded in)."""
    if isinstance(generator, (list, tuple)):
        for row, g in zip(noise, generator):
            row.uniform_(0.0, 1.0, generator=g)
        return noise
    return noise.uniform_(0.0, 1.0, generator=generator)


def noise_like(scores: torch.Tensor, generator=None) -> torch.Tensor:
    """The draw's uniform noise for ``scores``, from ``generator`` (see :func:`fill_uniform`)."""
    return fill_uniform(torch.empty_like(scores), generator)


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """logits: (b, v) -> token ids (b,); -inf logits are never drawn. Greedy as :func:`greedy` says;
    otherwise one uniform number per logit is drawn from ``generator`` (the default generator when
    None) and the token follows by :func:`draw`. ``temperature`` must be finite (NaN or infinity:
    ValueError)."""
    if not math.isfinite(temperature):
        raise ValueError(f"temperature: expected a finite number (<= 0: greedy), got {temperature!r}")
    if top_k < 0:
        raise ValueError(f"top_k: expected >= 0, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: expected 0 < top_p <= 1, got {top_p}")
    scores = logits.float()
    if greedy(temperature, top_k):
        return scores.argmax(-1)
    return draw(scores, noise_like(scores, generator), *filter_values(temperature, top_p, scores.device),
                *filters(top_k, top_p, scores.shape[-1]))
