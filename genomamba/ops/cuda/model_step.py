"""The whole-model decode step on CUDA (``csrc/model_step``): one persistent kernel per token.

At small batch a decode step is a chain of tiny matrix-vector products; launching the ~7 kernels
per layer of the layered step costs more than their work. :func:`model_step` runs every layer,
the final norm and the LM head of a :class:`~genomamba.models.lm.MambaLM` in one launch (one block
per SM, grid-wide barriers between the phases of a layer, weights prefetched into L2 ahead of their
phase). Two kernels: batch 1 to 4 on the CUDA cores (``model_step.cu``), and batch 5 to 64 with
the matrix products on the tensor cores (``model_step_mma.cu``, float16 and bfloat16; turned on by
``GENOMAMBA_DECODE_MMA=1``). Their reference twin is the layered step (``MambaLM.step`` with
``GENOMAMBA_DECODE_STEP=layers``): the first fused step of each dtype and batch class in a process
is checked against it, and a disagreement turns that kernel off for the process, in one line, with
the layered step taking over.

A kernel runs when the model and the step allow it (:func:`unsupported` says why not otherwise): a
model on CUDA in float16, bfloat16 or float32 (all parameters in that dtype, but A_log and D may be
float32), RMSNorm, d_state a power of two up to 32, d_conv up to 4, d_model and d_inner multiples
of 8, batch 1 to 4, no gradients, the scan backend not forced to another one; at batch 5 to 64 also
float16 or bfloat16, d_model and d_inner multiples of 32, and the batch's activations fitting in one
SM's shared memory (d_model 768 at batch 64; wider models at smaller batches).
``GENOMAMBA_DECODE_STEP=layers`` turns both off (the layered step then runs, e.g. to compare).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import torch

MAX_BATCH = 4
MMA_MAX_BATCH = 64
MAX_SHARED_BYTES = 200 * 1024
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MMA_DTYPES = (torch.float16, torch.bfloat16)
_VERIFIED: set = set()  # (dtype, batch class, device index) whose first fused step matched the layered one
_OFF: dict = {}  # kernel ("small", "mma", or "all" for both) -> why it is off in this process, said once


def enabled() -> bool:
    """False when ``GENOMAMBA_DECODE_STEP=layers`` (or the kernels were turned off in this process)."""
    mode = os.environ.get("GENOMAMBA_DECODE_STEP", "model").strip().lower() or "model"
    if mode not in ("model", "layers"):
        raise ValueError(f"GENOMAMBA_DECODE_STEP={mode!r}: expected 'model' or 'layers'")
    return mode == "model" and "all" not in _OFF


def mma_enabled() -> bool:
    """``GENOMAMBA_DECODE_MMA=1``: batches of 5 to 64 take the tensor-core kernel (default 0)."""
    raw = os.environ.get("GENOMAMBA_DECODE_MMA", "0").strip() or "0"
    if raw not in ("0", "1"):
        raise ValueError(f"GENOMAMBA_DECODE_MMA={raw!r}: expected 0 or 1")
    return raw == "1"


def kernel_for(b: int) -> str:
    """Which kernel takes a batch of ``b``: "small" (1-4) or "mma" (5-64)."""
    return "small" if b <= MAX_BATCH else "mma"


def _batch_class(b: int) -> str:
    """The kernel specialisation a batch of ``b`` runs (each is checked on its first step)."""
    if b <= MAX_BATCH:
        return "1" if b == 1 else "2-4"
    return "5-16" if b <= 16 else ("17-32" if b <= 32 else "33-64")


def mma_out_slices(d: int, e: int, sms: int) -> int:
    """How many slices of d_inner the tensor-core kernel's out_proj is split into (``out_slices`` in
    csrc/model_step/model_step_mma.cu): enough (4 row tiles, slice) tasks for every SM."""
    groups, kc = (d // 16 + 3) // 4, e // 32
    return max(1, min(kc, sms // groups))


def mma_shared_bytes(b: int, d: int, e: int, r: int, n: int, sms: int) -> int:
    """Shared memory per block of the tensor-core kernel (the formula of ``sizes`` in
    csrc/model_step/model_step_mma.cu): staged activations, the warps' partial tiles, phase C's staging."""
    nt = 2 if b <= 16 else (4 if b <= 32 else 8)
    bp = 8 * nt
    kc, s = e // 32, mma_out_slices(d, e, sms)
    kc_slice = -(-kc // s)

    def stride(k):
        return k + ((32 - k % 64) + 64) % 64

    act = max(bp * stride(d) * 2, bp * stride(32 * kc_slice) * 2)
    total = (act + 15) // 16 * 16 + 16 * 16 * (bp + 8) * 4 + 2 * 16 * bp * 4 + bp * 16 * 2
    x16 = (r + 2 * n + 15) // 16 * 16
    rows = -(-(b * e) // sms) // e + 2
    return max(total, 2 * rows * x16 * 4, (d + 16 + s * d) * 4)


def _shared_limit(device) -> int:
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", 227 * 1024))


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
    kind = kernel_for(b)
    if kind in _OFF:
        return "turned off"
    if not 1 <= b <= MMA_MAX_BATCH or (kind == "mma" and not mma_enabled()):
        return f"batch {b} (1..{MAX_BATCH}; 5..{MMA_MAX_BATCH} with GENOMAMBA_DECODE_MMA=1)"
    if kind == "mma" and w.dtype not in MMA_DTYPES:
        return f"{w.dtype} weights at batch {b}"
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
    if kind == "small" and b * max(d, e, r + 2 * n) * 4 > MAX_SHARED_BYTES:
        return "batch x width too large for shared memory"
    if kind == "mma" and (d % 32 or e % 32):
        return "d_model or d_inner not a multiple of 32"
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
                or not c.conv_state.is_contiguous() or not c.ssm_state.is_contiguous() or c.ssm_state.data_ptr() % 16:
            return "cache states of another shape or layout"
    if input_ids.device.type != "cuda" or w.device != input_ids.device:
        return "not on CUDA"
    if kind == "mma":
        sms = torch.cuda.get_device_properties(w.device).multi_processor_count
        if mma_shared_bytes(b, d, e, r, n, sms) > _shared_limit(w.device):
            return "batch x width too large for shared memory"
    return None


class _Buffers:
    """What the kernel reads besides the model: the per-layer address table (weights and this
    cache's states), the fp32 workspace and the barrier words. Kept on the cache, so a captured
    graph and its cache share them. The tensor-core kernel's workspace is sized by the extension
    (it depends on the GPU's SM count) at the first launch."""

    def __init__(self, model, cache, b: int, device):
        bb = model.backbone
        rows = [[_address(layer, c, name) for name in LAYER_FIELDS] for layer, c in zip(bb.layers, cache.layers)]
        self.table = torch.tensor(rows, dtype=torch.int64).to(device)
        m = bb.layers[0].mixer
        d, e, xw = model.config.d_model, m.d_inner, m.dt_rank + 2 * m.d_state
        self.workspace = None
        if kernel_for(b) == "small":
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
    return (b, torch.is_grad_enabled(), model.training, requested_backend(), mma_enabled(), id(model), w.data_ptr(),
            w.dtype, model.lm_head.weight.data_ptr(),
            tuple((c.conv_state.data_ptr(), c.ssm_state.data_ptr()) for c in cache.layers))


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
    if kernel_for(ids.numel()) in _OFF:
        return None
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
        _turn_off("all", f"could not be built ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return None
    w = model.backbone.embedding.weight
    b = ids.numel()
    check = (w.dtype, _batch_class(b), w.device.index)
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
    if kernel_for(b) == "mma":
        if buf.workspace is None:
            with torch.cuda.device(ids.device):  # sized for the SM count of the model's GPU
                floats = ext.model_step_mma_sizes(b, model.config.d_model, m.d_inner, m.dt_rank, m.d_state)[0]
            buf.workspace = torch.zeros(floats, dtype=torch.float32, device=ids.device)
        return ext.model_step_mma(buf.table, ids, bb.embedding.weight, bb.norm_f.weight, model.lm_head.weight,
                                  buf.workspace, buf.sync, logits, m.d_inner, m.dt_rank, m.d_state, m.d_conv,
                                  float(bb.norm_f.eps), bool(model.config.residual_in_fp32),
                                  m.A_log.dtype == torch.float32, times)
    return ext.model_step(buf.table, ids, bb.embedding.weight, bb.norm_f.weight, model.lm_head.weight,
                          buf.workspace, buf.sync, logits, m.d_inner, m.dt_rank, m.d_state, m.d_conv,
                          float(bb.norm_f.eps), bool(model.config.residual_in_fp32),
                          m.A_log.dtype == torch.float32, times)


def step_kind(cache) -> str:
    """Which step last ran on ``cache``: "model" (the whole-model kernel; "model (tensor cores)" at
    batch 5 to 64) or "layers (why)"."""
    held = cache.extra.get("model_step")
    if held is None:
        return f"layers ({_OFF['all']})" if "all" in _OFF else "layers (not tried)"
    kind = kernel_for(held.key[0])
    for k in ("all", kind):
        if k in _OFF:
            return f"layers ({_OFF[k]})"
    if held.why is not None:
        return f"layers ({held.why})"
    return "model (tensor cores)" if kind == "mma" else "model"


def _first_step(model, ext, ids, cache, check) -> Optional[torch.Tensor]:
    """The first fused step of its kind: compared with the layered step from copies of the states."""
    from genomamba.ops.checks import first_mismatch

    ref_cache = cache.clone()
    ref = model.lm_head(model.backbone.step(ids, ref_cache)[:, 0])
    kind = kernel_for(ids.numel())
    try:
        got = _launch(model, ext, ids, cache)
    except RuntimeError as exc:  # e.g. a launch the GPU refuses: the layered step's result stands
        _keep_states(cache, ref_cache)
        _turn_off(kind, f"could not run ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
        return ref
    pairs = [("logits", got, ref)]
    for i, (c, r) in enumerate(zip(cache.layers, ref_cache.layers)):
        pairs += [(f"layer {i} conv_state", c.conv_state, r.conv_state),
                  (f"layer {i} ssm_state", c.ssm_state, r.ssm_state)]
    bad = first_mismatch(pairs, 1e-3 if got.dtype == torch.float32 else 5e-2)
    if bad is not None:  # keep the layered step's result
        _keep_states(cache, ref_cache)
        _turn_off(kind, f"gave {bad[0]} values that differ from the layered step (max |diff| {bad[1]:.3g})")
        return ref
    _VERIFIED.add(check)
    return got


def _keep_states(cache, ref_cache) -> None:
    """The layered step's states (``ref_cache``) copied into ``cache``, in place."""
    for c, rc in zip(cache.layers, ref_cache.layers):
        c.conv_state.copy_(rc.conv_state)
        c.ssm_state.copy_(rc.ssm_state)


def _turn_off(kind: str, why: str) -> None:
    """Turn kernel ``kind`` ("small", "mma" or "all") off for this process, saying so once."""
    if kind not in _OFF:
        _OFF[kind] = why
        what = {"small": " (batch 1-4)", "mma": " (batch 5-64, tensor cores)"}.get(kind, "")
        print(f"genomamba: the whole-model CUDA decode step{what} {why}; decoding layer by layer", file=sys.stderr)


PHASES = {"small": ("A add+norm+in_proj+conv", "B x_proj", "C dt+state update", "D out_proj"),
          "mma": ("A in_proj+conv+x_proj partials", "C x_proj sums+dt+state update", "D1 out_proj slices",
                  "D2 residual add+norm")}


def profile_step(model, input_ids: torch.Tensor, cache) -> dict:
    """One whole-model step with block 0's phase timestamps: the mean time (us) of each phase and of
    the barrier after it over layers 1.. (the first layer also waits for the launch), the LM head's
    and the whole kernel's. Advances ``cache`` by two tokens (an untimed step, which is also the
    checked first step of its kind in a process, then the timed one). Raises RuntimeError when the
    kernel does not take this step (``step_kind`` says why)."""
    ids = input_ids.reshape(-1).to(torch.int64).contiguous()
    # the first step of its kind is the checked one: it may also turn the kernel off
    if model_step(model, ids, cache) is None or not step_kind(cache).startswith("model"):
        raise RuntimeError(f"the whole-model kernel does not take this step: {step_kind(cache)}")
    from genomamba.ops.cuda.build import step_extension

    n = model.config.n_layer
    times = torch.zeros(8 * n + 2, dtype=torch.int64, device=ids.device)
    _launch(model, step_extension(), ids, cache, times)
    t = times.cpu().double() / 1e3
    names = PHASES[kernel_for(ids.numel())]
    layers = range(1, n) if n > 1 else range(n)
    out = {}
    for j, name in enumerate(names):
        out[name] = sum(t[8 * l + 2 * j + 1] - t[8 * l + 2 * j] for l in layers).item() / len(layers)
        nxt = [t[8 * (l + 1)] if 2 * j + 2 == 8 else t[8 * l + 2 * j + 2] for l in layers]
        out[f"barrier after {name.split()[0]}"] = sum(a - t[8 * l + 2 * j + 1] for a, l in zip(nxt, layers)).item() \
            / len(layers)
    out["LM head"] = (t[8 * n + 1] - t[8 * n]).item()
    out["whole step"] = (t[8 * n + 1] - t[0]).item()
    return {k: round(v, 2) for k, v in out.items()}
