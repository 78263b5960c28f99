"""The whole-model decode step on CUDA (``csrc/model_step``): one persistent kernel per token.

At small batch a decode step is a chain of tiny matrix-vector products; launching the ~7 kernels
per layer of the layered step costs more than their work. :func:`model_step` runs every layer,
the final norm and the LM head of a :class:`~genomamba.models.lm.MambaLM` in one launch (one block
per SM, a grid-wide barrier between the four phases of a layer, the next layer's weights
prefetched into L2 while the current one runs). Its reference twin is the layered step
(``MambaLM.step`` with ``GENOMAMBA_DECODE_STEP=layers``): the first fused step of each dtype and
batch class in a process is checked against it, and a disagreement turns the kernel off for the
process, in one line, with the layered step taking over.

It runs when the model and the step allow it (:func:`unsupported` says why not otherwise): a
model on CUDA in float16, bfloat16 or float32 (all parameters in that dtype, but A_log and D may be
float32), RMSNorm, d_state a power of two up to 32, d_conv up to 4, d_model and d_inner multiples
of 8, batch 1 to 4, no gradients, the scan backend not forced to another one.
``GENOMAMBA_DECODE_STEP=layers`` turns it off (the layered step then runs, e.g. to compare the two).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import torch

MAX_BATCH = 4
MAX_SHARED_BYTES = 200 * 1024
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_VERIFIED: set = set()  # (dtype, batch class, device index) whose first fused step matched the layered one
_OFF: dict = {}  # why the kernel is off for this process (build failure, a failed check), once said


def enabled() -> bool:
    """False when ``GENOMAMBA_DECODE_STEP=layers`` (or the kernel was turned off in this process)."""
    mode = os.environ.get("GENOMAMBA_DECODE_STEP", "model").strip().lower() or "model"
    if mode not in ("model", "layers"):
        raise ValueError(f"GENOMAMBA_DECODE_STEP={mode!r}: expected 'model' or 'layers'")
    return mode == "model" and not _OFF


def unsupported(model, input_ids: torch.Tensor, cache) -> Optional[str]:
    """None if :func:`model_step` can run this step, else why not (one short phrase)."""
    from genomamba.models.mixer import RMSNorm
    from genomamba.ops.dispatch import requested_backend

    if not enabled():
        return "turned off"
    if requested_backend() not in ("auto", "cuda"):
        return f"the scan backend is forced to {requested_backend()}"
    cfg = model.config
    bb = model.backbone
    w = bb.embedding.weight
    if w.dtype not in DTYPES:
        return f"{w.dtype} weights"
    if torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters()):
        return "gradients are on"
    if model.training and cfg.dropout > 0:
        return "dropout in training mode"
    b = input_ids.numel()
    if not 1 <= b <= MAX_BATCH:
        return f"batch {b} (1..{MAX_BATCH})"
    if not isinstance(bb.norm_f, RMSNorm) or any(not isinstance(layer.norm, RMSNorm) for layer in bb.layers):
        return "LayerNorm"
    m = bb.layers[0].mixer
    d, e, n, r, k = cfg.d_model, m.d_inner, m.d_state, m.dt_rank, m.d_conv
    if d % 8 or e % 8:
        return "d_model or d_inner not a multiple of 8"
    if n > 32 or n & (n - 1):
        return f"d_state {n} (a power of two up to 32)"
    if k > 4:
        return f"d_conv {k}"
    if b * max(d, e, r + 2 * n) * 4 > MAX_SHARED_BYTES:
        return "batch x width too large for shared memory"
    # A_log and D may stay in float32 (a model built in half precision keeps them so), all alike
    ad = {id(t) for layer in bb.layers for t in (layer.mixer.A_log, layer.mixer.D)}
    ad_dtypes = {t.dtype for layer in bb.layers for t in (layer.mixer.A_log, layer.mixer.D)}
    if len(ad_dtypes) != 1 or not ad_dtypes <= {w.dtype, torch.float32}:
        return "A_log and D of mixed dtypes"
    for p in model.parameters():
        if (p.dtype != w.dtype and id(p) not in ad) or p.device != w.device or not p.is_contiguous() \
                or p.data_ptr() % 16:
            return "parameters of mixed dtype, device or layout"
    for layer, c in zip(bb.layers, cache.layers):
        if getattr(layer.mixer, "context_parallel", None) is not None:
            return "context parallelism"
        if c.conv_state.dtype != w.dtype or c.ssm_state.dtype != torch.float32:
            return "cache states of another dtype"
        if c.conv_state.shape != (b, e, k - 1) or c.ssm_state.shape != (b, e, n) \
                or not c.conv_state.is_contiguous() or not c.ssm_state.is_contiguous():
            return "cache states of another shape or layout"
    if input_ids.device.type != "cuda" or w.device != input_ids.device:
        return "not on CUDA"
    return None


class _Buffers:
    """What the kernel reads besides the model: the per-layer address table (weights and this
    cache's states), the fp32 workspace and the barrier words. Kept on the cache, so a captured
    graph and its cache share them."""

    def __init__(self, model, cache, b: int, device):
        bb = model.backbone
        rows = [[_address(layer, c, name) for name in LAYER_FIELDS] for layer, c in zip(bb.layers, cache.layers)]
        self.table = torch.tensor(rows, dtype=torch.int64).to(device)
        m = bb.layers[0].mixer
        d, e, xw = model.config.d_model, m.d_inner, m.dt_rank + 2 * m.d_state
        self.workspace = torch.zeros(b * (3 * d + 3 * e + xw), dtype=torch.float32, device=device)
        self.sync = torch.zeros(3, dtype=torch.int32, device=device)


# One row of the kernel's layer table, in the order of ``struct LayerPtrs`` in csrc/model_step/model_step.cu
LAYER_FIELDS = ("norm_w", "in_w", "in_b", "conv_w", "conv_b", "x_w", "dt_w", "dt_b", "a_log", "skip_d", "out_w",
                "out_b", "conv_state", "ssm_state")


def _address(layer, c, name: str) -> int:
    """The device address of field ``name`` of ``layer`` (a Block) and its cache ``c``; 0 for no bias."""
    m = layer.mixer
    t = {"norm_w": layer.norm.weight, "in_w": m.in_proj.weight, "in_b": m.in_proj.bias, "conv_w": m.conv1d.weight,
         "conv_b": m.conv1d.bias, "x_w": m.x_proj.weight, "dt_w": m.dt_proj.weight, "dt_b": m.dt_proj.bias,
         "a_log": m.A_log, "skip_d": m.D, "out_w": m.out_proj.weight, "out_b": m.out_proj.bias,
         "conv_state": c.conv_state, "ssm_state": c.ssm_state}[name]
    return 0 if t is None else t.data_ptr()


class _Verdict:
    """Whether the kernel takes steps on a cache, decided once per state of what it depends on (the
    batch, grad mode, training mode, forced backend, the model's parameters and the cache's states;
    checked per step by a cheap key: the model, where its embedding and the states live)."""

    __slots__ = ("key", "why", "buffers")

    def __init__(self, key, why, buffers):
        self.key, self.why, self.buffers = key, why, buffers


def _quick_key(model, cache, b: int) -> tuple:
    from genomamba.ops.dispatch import requested_backend

    w = model.backbone.embedding.weight
    return (b, torch.is_grad_enabled(), model.training, requested_backend(), id(model), w.data_ptr(), w.dtype,
            model.lm_head.weight.data_ptr(), tuple((c.conv_state.data_ptr(), c.ssm_state.data_ptr())
                                                   for c in cache.layers))


def _verdict(model, ids, cache) -> _Verdict:
    b = ids.numel()
    key = _quick_key(model, cache, b)
    held = cache.extra.get("model_step")
    if held is None or held.key != key:
        why = unsupported(model, ids, cache)
        held = _Verdict(key, why, None if why else _Buffers(model, cache, b, ids.device))
        cache.extra["model_step"] = held
    return held


def model_step(model, input_ids: torch.Tensor, cache) -> Optional[torch.Tensor]:
    """One token through the whole model: logits (b, padded_vocab) in the model's dtype, the cache's
    states advanced in place; None when the kernel cannot run this step (the caller steps layer by
    layer). ``cache.seqlen_offset`` is left to the caller."""
    if not enabled():
        return None
    ids = input_ids.reshape(-1).to(torch.int64).contiguous()
    for c in cache.layers:  # a prefill leaves views of its buffers: the kernel wants dense states
        if c.conv_state.is_cuda and not c.conv_state.is_contiguous():
            c.conv_state = c.conv_state.contiguous()
        if c.ssm_state.is_cuda and not c.ssm_state.is_contiguous():
            c.ssm_state = c.ssm_state.contiguous()
    if _verdict(model, ids, cache).why is not None:
        return None
    from genomamba.ops.cuda.build import step_extension

    try:
        ext = step_extension()
    except Exception as exc:  # no nvcc, a failed build: the layered step serves, said once
        _turn_off(f"could not be built ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return None
    w = model.backbone.embedding.weight
    check = (w.dtype, ids.numel() == 1, w.device.index)
    if check not in _VERIFIED:
        if torch.cuda.is_current_stream_capturing():
            return None  # checked outside a capture first (a captured graph warms up before)
        return _first_step(model, ext, ids, cache, check)
    return _launch(model, ext, ids, cache)


def _launch(model, ext, ids, cache, times: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``times``: an int64 tensor of 8 n_layer + 2 slots for the phase timestamps (ns) of one block."""
    buf = _verdict(model, ids, cache).buffers
    b = ids.numel()
    bb = model.backbone
    m = bb.layers[0].mixer
    logits = torch.empty(b, model.lm_head.weight.shape[0], dtype=model.lm_head.weight.dtype, device=ids.device)
    return ext.model_step(buf.table, ids, bb.embedding.weight, bb.norm_f.weight, model.lm_head.weight,
                          buf.workspace, buf.sync, logits, m.d_inner, m.dt_rank, m.d_state, m.d_conv,
                          float(bb.norm_f.eps), bool(model.config.residual_in_fp32),
                          m.A_log.dtype == torch.float32, times)


def step_kind(cache) -> str:
    """Which step last ran on ``cache``: "model" (the whole-model kernel) or "layers (why)"."""
    if _OFF:
        return f"layers ({_OFF['why']})"
    held = cache.extra.get("model_step")
    if held is None:
        return "layers (not tried)"
    return "model" if held.why is None else f"layers ({held.why})"


def _first_step(model, ext, ids, cache, check) -> Optional[torch.Tensor]:
    """The first fused step of its kind: compared with the layered step from copies of the states."""
    from genomamba.ops.checks import first_mismatch

    ref_cache = cache.clone()
    ref = model.lm_head(model.backbone.step(ids, ref_cache)[:, 0])
    got = _launch(model, ext, ids, cache)
    pairs = [("logits", got, ref)]
    for i, (c, r) in enumerate(zip(cache.layers, ref_cache.layers)):
        pairs += [(f"layer {i} conv_state", c.conv_state, r.conv_state),
                  (f"layer {i} ssm_state", c.ssm_state, r.ssm_state)]
    bad = first_mismatch(pairs, 1e-3 if got.dtype == torch.float32 else 5e-2)
    if bad is not None:
        for c, rc in zip(cache.layers, ref_cache.layers):  # keep the layered step's result
            c.conv_state.copy_(rc.conv_state)
            c.ssm_state.copy_(rc.ssm_state)
        _turn_off(f"gave {bad[0]} values that differ from the layered step (max |diff| {bad[1]:.3g})")
        return ref
    _VERIFIED.add(check)
    return got


def _turn_off(why: str) -> None:
    if not _OFF:
        _OFF["why"] = why
        print(f"genomamba: the whole-model CUDA decode step {why}; decoding layer by layer", file=sys.stderr)
