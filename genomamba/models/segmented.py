"""Segment-wise training: one window, any length, in the memory of one segment.

A window of L tokens is read in segments of ``segment_len`` tokens that hand their recurrent states
(each layer's conv inputs and SSM state) to the next, as inference does. Nothing but those
boundary states is kept from the forward pass, except the last segment's activations: the backward
starts there, so that segment runs once. The backward visits the segments last to first: it
recomputes a segment from its saved starting states, backpropagates that segment's loss together
with the gradient of the states it handed on, and passes the gradient of its own starting states
to the segment before. The loss and every gradient are those of the whole window in one pass (up
to float rounding); peak activation memory is that of one segment, whatever L is. Each segment's
random-number state is saved with its boundary states, so a model trained with dropout draws the
same masks when the backward recomputes the segment.

    loss, stats = segmented_loss(model, ids, 65536, segment_loss)
    loss.backward()

``segment_loss(logits, start, stop)`` scores the window's positions ``start:stop`` from their
logits ``(b, stop - start, vocab)`` and returns ``(summed loss, *statistics)``: tensors that do not
need gradients (e.g. the number of tokens scored and of correct predictions) may follow. The loss
returned is the summed loss divided by ``normalizer`` (default 1).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from genomamba.models.cache import InferenceCache
from genomamba.models.mixer import LayerCache

SegmentLoss = Callable[[torch.Tensor, int, int], Sequence[torch.Tensor]]


def segment_bounds(length: int, segment_len: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering ``range(length)`` in pieces of ``segment_len`` (the last may be shorter)."""
    if isinstance(segment_len, bool) or not isinstance(segment_len, int) or segment_len < 1:
        raise ValueError(f"segment_len: expected a positive int, got {segment_len!r}")
    return [(s, min(s + segment_len, length)) for s in range(0, length, segment_len)]


def next_token_loss(ids: torch.Tensor) -> SegmentLoss:
    """``segment_loss`` for ``segmented_loss(model, ids[:, :-1], ...)``: the summed next-token cross
    entropy of positions ``start:stop``, whose targets are ``ids[:, start + 1:stop + 1]``."""

    def segment(logits, start, stop):
        return (F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, start + 1:stop + 1].reshape(-1),
                                reduction="sum"),)

    return segment


def _autocast_state(device_type: str):
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return None
    return device_type, torch.get_autocast_dtype(device_type)


def _states(cache: InferenceCache) -> list[torch.Tensor]:
    return [t for c in cache.layers for t in (c.conv_state, c.ssm_state)]


def _cache_of(states: Sequence[torch.Tensor], offset: int) -> InferenceCache:
    it = iter(states)
    return InferenceCache([LayerCache(conv, ssm) for conv, ssm in zip(it, it)], seqlen_offset=offset)


class _Segmented(torch.autograd.Function):
    """Runs ``run(ids[:, start:stop], cache, start, stop) -> (output, *statistics)`` over the segments.

    ``how == "sum"``: the outputs are scalars, summed and divided by ``normalizer``;
    ``how == "cat"``: the outputs are (b, stop - start, ...) tensors, joined along the length.
    """

    @staticmethod
    def forward(ctx, model, run, how, ids, segment_len, normalizer, keep_last, *params):
        b, length = ids.shape
        bounds = segment_bounds(length, segment_len)
        cache = model.allocate_cache(b, device=ids.device)
        starts, outs, stats = [], [], None
        rng = []
        ctx.kept = None
        for k, (start, stop) in enumerate(bounds):
            if keep_last and k == len(bounds) - 1:
                # the last segment keeps its graph: the backward starts there, so it is never recomputed
                leaves = [t.detach().requires_grad_(k > 0) for t in _states(cache)]
                starts.append(leaves)
                rng.append(None)
                with torch.enable_grad():
                    got = run(ids[:, start:stop], _cache_of(leaves, start), start, stop)
                ctx.kept = got[0]
            else:
                starts.append([t.detach().clone() for t in _states(cache)])
                rng.append(_rng_state(ids.device))
                got = run(ids[:, start:stop], cache, start, stop)
            outs.append(got[0].detach())
            rest = [t.detach() for t in got[1:]]
            stats = rest if stats is None else [a + r for a, r in zip(stats, rest)]
        ctx.model, ctx.run, ctx.how, ctx.bounds, ctx.starts, ctx.rng = model, run, how, bounds, starts, rng
        ctx.autocast = _autocast_state(ids.device.type)
        ctx.normalizer = normalizer
        ctx.save_for_backward(ids)
        ctx.mark_non_differentiable(*stats)
        out = torch.stack(outs).sum() / normalizer if how == "sum" else torch.cat(outs, dim=1)
        return (out, *stats)

    @staticmethod
    def backward(ctx, grad_out, *_):
        (ids,) = ctx.saved_tensors
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        grads: list[Optional[torch.Tensor]] = [None] * len(params)
        state_grads = None  # gradient of the states the current segment hands on
        for k in range(len(ctx.bounds) - 1, -1, -1):
            start, stop = ctx.bounds[k]
            first = k == 0
            starts = [t if first else t.requires_grad_(True) for t in ctx.starts[k]]
            ctx.starts[k] = None  # not needed once this segment is done
            kept, ctx.kept = (ctx.kept, None) if k == len(ctx.bounds) - 1 else (None, ctx.kept)
            with torch.enable_grad(), _autocast(ctx.autocast), \
                    _replay_rng(ids.device, ctx.rng[k]) if kept is None else contextlib.nullcontext():
                cache = _cache_of(starts, start)
                out = ctx.run(ids[:, start:stop], cache, start, stop)[0] if kept is None else kept
                g = grad_out / ctx.normalizer if ctx.how == "sum" else grad_out[:, start:stop]
                outputs, grad_outputs = [out], [g]
                for t, gs in zip(_states(cache), state_grads or []):
                    if gs is not None and t.requires_grad:
                        outputs.append(t)
                        grad_outputs.append(gs)
                got = torch.autograd.grad(outputs, params + ([] if first else starts), grad_outputs,
                                          allow_unused=True)
            for i, gp in enumerate(got[:len(params)]):
                if gp is not None:
                    grads[i] = gp if grads[i] is None else grads[i] + gp
            state_grads = None if first else list(got[len(params):])
        ctx.starts = ctx.rng = None
        return (None, None, None, None, None, None, None, *grads)


def _wants_grad(params) -> bool:
    """Whether the backward will run: then the last segment keeps its graph from the forward."""
    return torch.is_grad_enabled() and bool(params)


def _rng_state(device: torch.device):
    """The generator states a segment's forward starts from (CPU, and the tensor's GPU if any)."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextlib.contextmanager
def _replay_rng(device: torch.device, state):
    """Run the block from ``state`` (see :func:`_rng_state`) and leave the generators as they were."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _autocast(state):
    if state is None:
        return contextlib.nullcontext()
    return torch.autocast(state[0], dtype=state[1])


@functools.lru_cache(maxsize=None)
def _warn_unaligned(segment_len: int) -> None:
    # the CUDA kernels load and store 16 bytes at a time only where every row of a (channels, tokens)
    # operand starts 16-byte aligned: a segment of 16-bit values whose length is not a multiple of 8
    # runs them element by element
    near = sorted({max(8, segment_len // 8 * 8), (segment_len // 8 + 1) * 8})
    warnings.warn(f"segment_len={segment_len} is not a multiple of 8: the GPU kernels run without their "
                  f"vector loads on such segments, much slower; {' or '.join(map(str, near))} keeps them",
                  UserWarning, stacklevel=4)


def _check(model, ids, segment_len):
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 1:
        got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"ids: expected a (batch, length >= 1) integer tensor, got {got}")
    segment_bounds(ids.shape[1], segment_len)
    if ids.is_cuda and ids.shape[1] > segment_len and segment_len % 8:
        _warn_unaligned(segment_len)
    layers = getattr(getattr(model, "backbone", model), "layers", [])
    if any(getattr(layer.mixer, "context_parallel", None) is not None for layer in layers):
        raise ValueError("segment_len: segment-wise training does not combine with context parallelism "
                         "(each rank already holds one slice); use one or the other")


def segmented_hidden(backbone, ids: torch.Tensor, segment_len: int) -> torch.Tensor:
    """``backbone(ids)`` (a :class:`~genomamba.models.lm.MixerModel`: final-norm hidden states
    (b, L, d_model)) computed in segments: in training only the boundary states and the output are
    kept, and the backward recomputes one segment at a time. Any loss on the output may follow."""
    _check(backbone, ids, segment_len)
    params = [p for p in backbone.parameters() if p.requires_grad]

    def run(piece, cache, start, stop):
        return (backbone(piece, cache=cache),)

    return _Segmented.apply(backbone, run, "cat", ids, segment_len, 1.0, _wants_grad(params), *params)[0]


def segmented_loss(model, ids: torch.Tensor, segment_len: int, segment_loss: SegmentLoss,
                   normalizer=1.0):
    """The loss of the window ``ids`` (b, L) read in segments of ``segment_len`` tokens, with the
    memory of one segment in training (see the module docstring). Returns ``(loss, statistics)``
    where ``loss = sum of the segments' losses / normalizer`` is differentiable in every
    parameter of ``model`` and ``statistics`` are the segments' other outputs, summed.

    ``model`` is a :class:`~genomamba.models.lm.MambaLM`; a model split over a context-parallel
    group is refused. Only the logits of one segment exist at a time.
    """
    _check(model, ids, segment_len)
    params = [p for p in model.parameters() if p.requires_grad]

    def run(piece, cache, start, stop):
        return segment_loss(model(piece, cache=cache), start, stop)

    out = _Segmented.apply(model, run, "sum", ids, segment_len, normalizer, _wants_grad(params), *params)
    return out[0], list(out[1:])
