"""Inference on one very long record split over the processes of a context-parallel group.

Each process reads the record (token ids are one byte per base), runs the model on its slice only
(``1 / P`` of the activations), and the layers exchange their conv halos and state summaries as in
training; the results are those of one process running the whole record. From a script started
with ``torchrun --nproc-per-node P script.py``::

    import genomamba
    from genomamba.data.fasta import read_fasta
    from genomamba.parallel import embed_long, init_context_parallel, score_long

    cp = init_context_parallel()                  # one group over every process
    model = genomamba.load("runs/pretrain/model", device=cp.device())
    seq = next(read_fasta("chr.fa.gz")).sequence
    emb = embed_long(model, seq, cp)              # (d_model,), the same on every rank
    res = score_long(model, seq, cp)              # log-likelihood and bits per base of the record

``model`` is a ``genomamba.GenomeModel`` (a DNA string is encoded by its tokenizer) or a plain
``MambaLM`` with token ids. Each rank runs its whole slice in one pass (no chunking inside a rank).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from genomamba.parallel.context import ContextParallel, check_slice

POOLINGS = ("mean", "last", "max")


def _unpack(model, seq):
    """(MambaLM, 1-D int64 ids, tokenizer or None) from a GenomeModel or a MambaLM."""
    lm, tok = model, None
    if hasattr(model, "lm") and hasattr(model, "encode"):  # a GenomeModel
        lm, tok = model.lm, model.tokenizer
        if isinstance(seq, (str, bytes)):
            seq = model.encode(seq)
    if isinstance(seq, (str, bytes)):
        raise ValueError("seq: a DNA string needs a GenomeModel (its tokenizer); pass token ids with a MambaLM")
    ids = torch.as_tensor(np.asarray(seq), dtype=torch.int64).reshape(-1)
    return lm, ids, tok


def _slice_run(lm, ids: torch.Tensor, cp: ContextParallel, logits: bool):
    """(start, stop, this rank's (stop - start, ·) hidden states or logits) of the record ``ids``."""
    if cp is None or cp.size == 1:
        start, stop = 0, len(ids)
    else:
        start, stop = cp.bounds(len(ids))
        # the shortest slice, which every rank computes alike: all ranks refuse together, none waits in
        # an exchange for a rank that gave up
        check_slice(len(ids) // cp.size, lm.config.d_conv, f"a record of {len(ids)} tokens over {cp.size} ranks")
    dev = next(lm.parameters()).device
    was_training = lm.training
    lm.eval().set_context_parallel(cp if cp is not None and cp.size > 1 else None)
    try:
        with torch.no_grad():
            part = ids[start:stop].unsqueeze(0).to(dev)
            out = lm(part) if logits else lm.hidden_states(part)
    finally:
        lm.set_context_parallel(None).train(was_training)
    return start, stop, out[0]


def _sum(t: torch.Tensor, cp: Optional[ContextParallel], op=dist.ReduceOp.SUM) -> torch.Tensor:
    if cp is not None and cp.size > 1:
        dist.all_reduce(t, op=op, group=cp.group)
    return t


def embed_long(model, seq, cp: Optional[ContextParallel], pooling: Optional[str] = "mean"):
    """Embedding of one record split over ``cp`` (None: this process alone).

    pooling ``"mean"`` / ``"last"`` / ``"max"``: a (d_model,) float32 array, the same on every rank;
    ``None``: ``(start, array (stop - start, d_model))``, this rank's slice of the per-token states.
    """
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"pooling: expected one of {POOLINGS} or None, got {pooling!r}")
    lm, ids, _ = _unpack(model, seq)
    if len(ids) == 0:
        raise ValueError("seq: empty record")
    start, stop, h = _slice_run(lm, ids, cp, logits=False)
    h = h.double()
    if pooling is None:
        return start, h.float().cpu().numpy()
    if pooling == "mean":
        out = _sum(h.sum(0), cp) / len(ids)
    elif pooling == "max":
        out = _sum(h.max(0).values, cp, dist.ReduceOp.MAX)
    else:  # the last token's state lives on the last rank
        out = _sum(h[-1] if stop == len(ids) else torch.zeros_like(h[0]), cp)
    return out.float().cpu().numpy()


def score_long(model, seq, cp: Optional[ContextParallel], scored_ids: Optional[Sequence[int]] = None) -> dict:
    """Log-likelihood of one record split over ``cp``: every target in ``scored_ids`` (default: the
    tokenizer's A, C, G, T) after the first token, given everything before it. The same dict on
    every rank: ``log_likelihood``, ``n_scored``, ``bits_per_base``, ``length``."""
    lm, ids, tok = _unpack(model, seq)
    if scored_ids is None:
        if tok is None:
            raise ValueError("scored_ids: give the token ids to score (a MambaLM has no tokenizer)")
        scored_ids = [tok.a_id, tok.c_id, tok.g_id, tok.t_id]
    start, stop, logits = _slice_run(lm, ids, cp, logits=True)
    n_pred = min(stop, len(ids) - 1) - start  # the slice's positions that have a next token
    tgt = ids[start + 1:start + 1 + n_pred].to(logits.device)
    logp = torch.log_softmax(logits[:n_pred].float(), -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1).double()
    ok = torch.isin(tgt, torch.as_tensor(list(scored_ids), device=tgt.device))
    tot = _sum(torch.stack([(logp * ok).sum(), ok.sum().double()]), cp)
    ll, n = float(tot[0]), int(tot[1])
    length = len(ids) - int(bool(getattr(model, "add_bos", False)))
    return {"log_likelihood": ll, "n_scored": n, "length": length,
            "bits_per_base": -ll / (n * math.log(2.0)) if n else float("nan")}
