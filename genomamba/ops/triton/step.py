"""Triton ``mamba_step``: one token through a pre-norm Mamba block in a few launches.

Per block and token (``composed``, the default): one kernel for the residual add and RMSNorm,
cuBLAS for in_proj, one kernel for the conv step (state roll, depthwise conv, SiLU), cuBLAS for
x_proj and dt_proj, the selective-state-update kernel (dt softplus with the dt_proj bias,
A = -exp(A_log), D, the z gate) and cuBLAS for out_proj. ``fused`` (``GENOMAMBA_TRITON_STEP=fused``)
runs the same arithmetic in five launches (add + norm + in_proj, conv step, x_proj, dt_proj + state
update, out_proj), for the decode step whose time is mostly launches. conv_state and ssm_state are
updated in place and nothing here syncs with the host, so the step can be captured in a CUDA graph;
A is computed from A_log inside the update at every call, so a replayed graph follows in-place
changes of the weights.

The arguments were validated once by ``genomamba.ops.mamba_step_plan``; nothing is checked here.
Each kernel has a reference twin in :mod:`genomamba.ops.reference` (``add_rms_norm_ref``,
``conv_step_ref``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from genomamba.ops.triton.state_update import selective_state_update


@triton.jit
def _add_rmsnorm_kernel(
    h_ptr,
    r_ptr,
    w_ptr,
    out_ptr,
    rout_ptr,
    dm,
    eps,
    s_hb,
    s_hd,
    s_rb,
    s_rd,
    s_ob,
    s_od,
    s_Rb,
    s_Rd,
    HAS_RES: tl.constexpr,
    STORE_RES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < dm
    r = tl.load(h_ptr + row * s_hb + offs * s_hd, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r += tl.load(r_ptr + row * s_rb + offs * s_rd, mask=mask, other=0.0).to(tl.float32)
        r = r.to(rout_ptr.dtype.element_ty)  # residual' in its own dtype, as torch's add rounds it
    if STORE_RES:
        tl.store(rout_ptr + row * s_Rb + offs * s_Rd, r.to(rout_ptr.dtype.element_ty), mask=mask)
    # the norm reads residual' rounded to the norm weight's dtype, then computes in fp32
    xn = r.to(out_ptr.dtype.element_ty).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xn * xn, axis=0) / dm + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * s_ob + offs * s_od, (xn * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_step_kernel(
    x_ptr,
    st_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    d,
    s_xb,
    s_xd,
    s_sb,
    s_sd,
    s_sw,
    s_wd,
    s_ww,
    s_ob,
    s_od,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BD: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)
    mask = offs < d
    x = tl.load(x_ptr + pid_b * s_xb + offs * s_xd, mask=mask, other=0.0)
    sp = st_ptr + pid_b * s_sb + offs * s_sd
    wp = w_ptr + offs * s_wd
    acc = tl.zeros([BD], dtype=tl.float32)
    # column k of the state is input t - (W - 1) + k; each is loaded before it is overwritten, and
    # one channel's loads and stores share a lane, so the roll needs no barrier
    for k in tl.static_range(W - 1):
        s = tl.load(sp + k * s_sw, mask=mask, other=0.0)
        acc += s.to(tl.float32) * tl.load(wp + k * s_ww, mask=mask, other=0.0).to(tl.float32)
        if k > 0:
            tl.store(sp + (k - 1) * s_sw, s, mask=mask)
    acc += x.to(tl.float32) * tl.load(wp + (W - 1) * s_ww, mask=mask, other=0.0).to(tl.float32)
    if W > 1:
        tl.store(sp + (W - 2) * s_sw, x.to(st_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = acc * tl.sigmoid(acc)
    tl.store(out_ptr + pid_b * s_ob + offs * s_od, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _residual_tile(h_ptr, r_ptr, rout_ptr, rows, ks, m, s_hb, s_hd, s_rb, s_rd, HAS_RES: tl.constexpr):
    # residual' = hidden (+ residual, rounded to residual's dtype as torch's add rounds it), in fp32
    r = tl.load(h_ptr + rows[:, None] * s_hb + ks[None, :] * s_hd, mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        r += tl.load(r_ptr + rows[:, None] * s_rb + ks[None, :] * s_rd, mask=m, other=0.0).to(tl.float32)
        r = r.to(rout_ptr.dtype.element_ty).to(tl.float32)
    return r


@triton.jit
def _norm_in_proj_kernel(
    h_ptr,
    r_ptr,
    nw_ptr,
    w_ptr,
    wb_ptr,
    xz_ptr,
    rout_ptr,
    b,
    dm,
    nout,
    eps,
    s_hb,
    s_hd,
    s_rb,
    s_rd,
    s_Rb,
    s_Rd,
    s_wo,
    s_wk,
    s_xb,
    s_xo,
    HAS_RES: tl.constexpr,
    STORE_RES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    BB: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    # residual add + RMSNorm (as _add_rmsnorm_kernel rounds them) feeding in_proj for BN outputs of
    # BB rows: the norm's statistics in a first pass over the row, the product in a second
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    rows = (pid_b * BB + tl.arange(0, BB)).to(tl.int64)
    mrow = rows < b
    cols = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
    mcol = cols < nout
    ss = tl.zeros([BB], dtype=tl.float32)
    for k0 in range(0, dm, BK):
        ks = (k0 + tl.arange(0, BK)).to(tl.int64)
        m = mrow[:, None] & (ks < dm)[None, :]
        r = _residual_tile(h_ptr, r_ptr, rout_ptr, rows, ks, m, s_hb, s_hd, s_rb, s_rd, HAS_RES)
        xn = r.to(nw_ptr.dtype.element_ty).to(tl.float32)
        ss += tl.sum(xn * xn, axis=1)
    rstd = tl.rsqrt(ss / dm + eps)
    acc = tl.zeros([BB, BN], dtype=tl.float32)
    for k0 in range(0, dm, BK):
        ks = (k0 + tl.arange(0, BK)).to(tl.int64)
        mk = ks < dm
        m = mrow[:, None] & mk[None, :]
        r = _residual_tile(h_ptr, r_ptr, rout_ptr, rows, ks, m, s_hb, s_hd, s_rb, s_rd, HAS_RES)
        if STORE_RES:
            if pid_n == 0:
                tl.store(rout_ptr + rows[:, None] * s_Rb + ks[None, :] * s_Rd, r.to(rout_ptr.dtype.element_ty),
                         mask=m)
        nw = tl.load(nw_ptr + ks, mask=mk, other=0.0).to(tl.float32)
        xn = r.to(nw_ptr.dtype.element_ty).to(tl.float32) * rstd[:, None] * nw[None, :]
        a = xn.to(nw_ptr.dtype.element_ty).to(w_ptr.dtype.element_ty)
        wt = tl.load(w_ptr + cols[None, :] * s_wo + ks[:, None] * s_wk, mask=mk[:, None] & mcol[None, :], other=0.0)
        if IEEE_DOT:
            acc += tl.dot(a, wt, input_precision="ieee")
        else:
            acc += tl.dot(a, wt)
    if HAS_BIAS:
        acc += tl.load(wb_ptr + cols, mask=mcol, other=0.0).to(tl.float32)[None, :]
    tl.store(xz_ptr + rows[:, None] * s_xb + cols[None, :] * s_xo, acc.to(xz_ptr.dtype.element_ty),
             mask=mrow[:, None] & mcol[None, :])


def residual_dtype(hidden: torch.Tensor, residual, residual_in_fp32: bool) -> torch.dtype:
    """The dtype of residual' = hidden + residual, as ``Block`` leaves it."""
    dt = hidden.dtype if residual is None else torch.promote_types(hidden.dtype, residual.dtype)
    return torch.float32 if residual_in_fp32 and dt != torch.float64 else dt


def add_rmsnorm(hidden, residual, weight, eps: float, residual_in_fp32: bool = False):
    """Residual add and RMSNorm, one kernel: hidden, residual (b, d_model) (residual may be None)
    -> (normed (b, d_model) in weight's dtype, residual' (b, d_model)). Twin:
    ``genomamba.ops.reference.add_rms_norm_ref``. Without a residual and without an upcast,
    residual' is ``hidden`` itself."""
    b, dm = hidden.shape
    rdt = residual_dtype(hidden, residual, residual_in_fp32)
    store = residual is not None or rdt != hidden.dtype
    rout = torch.empty((b, dm), device=hidden.device, dtype=rdt) if store else hidden
    out = torch.empty((b, dm), device=hidden.device, dtype=weight.dtype)
    res = residual if residual is not None else hidden
    BLOCK = triton.next_power_of_2(dm)
    _add_rmsnorm_kernel[(b,)](
        hidden, res, weight, out, rout, dm, float(eps),
        *hidden.stride(), *res.stride(), *out.stride(), *rout.stride(),
        HAS_RES=residual is not None, STORE_RES=store, BLOCK=BLOCK,
        num_warps=min(16, max(1, BLOCK // 256)),
    )
    return out, rout


def conv_step(x, conv_state, weight, bias=None):
    """One token of the depthwise causal conv with SiLU, one kernel: x (b, d) (any strides),
    conv_state (b, d, w - 1) rolled left in place with x appended, weight (d, w), bias (d,)
    -> silu(conv) (b, d) in x's dtype, computed in fp32. Twin: ``genomamba.ops.reference.conv_step_ref``."""
    b, d = x.shape
    w = weight.shape[1]
    out = torch.empty((b, d), device=x.device, dtype=x.dtype)
    BD = min(256, triton.next_power_of_2(d))
    s_state = conv_state.stride() if w > 1 else (0, 0, 0)
    _conv_step_kernel[(triton.cdiv(d, BD), b)](
        x, conv_state, weight, bias if bias is not None else weight, out, d,
        *x.stride(), *s_state, *weight.stride(), *out.stride(),
        W=w, HAS_BIAS=bias is not None, BD=BD, num_warps=max(1, BD // 64),
    )
    return out


def _variant() -> str:
    v = os.environ.get(ENV_VARIANT, "composed").strip().lower() or "composed"
    if v not in VARIANTS:
        raise ValueError(f"{ENV_VARIANT}={v!r}: expected one of {', '.join(VARIANTS)}")
    return v


ENV_VARIANT = "GENOMAMBA_TRITON_STEP"
VARIANTS = ("composed", "hybrid", "fused")
VARIANT = _variant()  # read once: the step runs per token, often from a captured graph


def mamba_step(hidden, residual, conv_state, ssm_state, weights):
    """``genomamba.ops.mamba_step`` on the Triton kernels (arguments validated by the plan).

    hidden, residual: (b, 1, d_model) -> (out (b, 1, d_model) in out_proj's dtype, residual');
    conv_state and ssm_state are updated in place. ``composed`` (default): seven launches, the
    matmuls on cuBLAS through torch; ``hybrid`` (``GENOMAMBA_TRITON_STEP=hybrid``): six, as composed
    but with dt_proj computed inside the state-update kernel; ``fused``: five, see
    :func:`mamba_step_fused`.
    """
    if VARIANT == "fused":
        return mamba_step_fused(hidden, residual, conv_state, ssm_state, weights)
    w = weights
    d = conv_state.shape[1]
    n = ssm_state.shape[2]
    rank = w.dt_proj_weight.shape[1]
    normed, res = add_rmsnorm(hidden[:, 0], None if residual is None else residual[:, 0], w.norm_weight,
                              w.norm_eps, w.residual_in_fp32)
    xz = F.linear(normed.to(w.in_proj_weight.dtype), w.in_proj_weight, w.in_proj_bias)  # (b, 2 d)
    x = conv_step(xz[:, :d], conv_state, w.conv_weight, w.conv_bias)
    x_dbl = F.linear(x, w.x_proj_weight)  # (b, rank + 2 n)
    A, a_is_log = (w.A, False) if w.A_log is None else (w.A_log, True)
    if VARIANT == "hybrid":  # dt = dt_proj(x_dbl[:, :rank]) inside the state update
        dt, wdt = x_dbl, w.dt_proj_weight
    else:
        dt, wdt = F.linear(x_dbl[:, :rank], w.dt_proj_weight), None  # the bias goes in as dt_bias
    y = selective_state_update(ssm_state, x, dt, A, x_dbl[:, rank:rank + n], x_dbl[:, rank + n:], w.D,
                               xz[:, d:], w.dt_proj_bias, True, a_is_log=a_is_log, dt_proj_weight=wdt)
    out = F.linear(y, w.out_proj_weight, w.out_proj_bias)
    return out.unsqueeze(1), res.unsqueeze(1)


_BB, _BK = 16, 64  # rows and inputs per tile of the fused norm + in_proj product


def _out_block(b: int, nout: int, device) -> int:
    """Outputs per program of the fused norm + in_proj: the widest tile (64, 32 or 16) that still
    gives every SM a program, since at decode batch sizes the product is a weight read spread over
    the grid."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    blocks = triton.cdiv(b, _BB)
    for bn in (64, 32):
        if triton.cdiv(nout, bn) * blocks >= sms:
            return bn
    return 16


def mamba_step_fused(hidden, residual, conv_state, ssm_state, weights):
    """The same step in five launches: residual add + RMSNorm + in_proj (one Triton kernel), the conv
    step (one), x_proj on cuBLAS, dt_proj + the state update + D + gate (the selective-state-update
    kernel computing dt itself), out_proj on cuBLAS. Products accumulate in fp32 and round as torch's
    matmuls do; fp32 weights multiply in full fp32."""
    w = weights
    h = hidden[:, 0]
    r = None if residual is None else residual[:, 0]
    b, dm = h.shape
    d, n = conv_state.shape[1], ssm_state.shape[2]
    rank = w.dt_proj_weight.shape[1]
    dev, wdt = h.device, w.in_proj_weight.dtype
    ieee = wdt == torch.float32
    dummy = torch.empty(1, device=dev, dtype=torch.float32)

    rdt = residual_dtype(h, r, w.residual_in_fp32)
    store = r is not None or rdt != h.dtype
    rout = torch.empty((b, dm), device=dev, dtype=rdt) if store else h
    src = r if r is not None else h
    xz = torch.empty((b, 2 * d), device=dev, dtype=wdt)
    wi = w.in_proj_weight
    bn = _out_block(b, 2 * d, dev)
    _norm_in_proj_kernel[(triton.cdiv(2 * d, bn), triton.cdiv(b, _BB))](
        h, src, w.norm_weight, wi, w.in_proj_bias if w.in_proj_bias is not None else dummy, xz, rout,
        b, dm, 2 * d, float(w.norm_eps), *h.stride(), *src.stride(), *rout.stride(), *wi.stride(), *xz.stride(),
        HAS_RES=r is not None, STORE_RES=store, HAS_BIAS=w.in_proj_bias is not None, IEEE_DOT=ieee,
        BB=_BB, BN=bn, BK=_BK, num_warps=4,
    )
    x = conv_step(xz[:, :d], conv_state, w.conv_weight, w.conv_bias)
    x_dbl = F.linear(x, w.x_proj_weight)  # (b, rank + 2 n)
    A, a_is_log = (w.A, False) if w.A_log is None else (w.A_log, True)
    y = selective_state_update(ssm_state, x, x_dbl, A, x_dbl[:, rank:rank + n], x_dbl[:, rank + n:], w.D,
                               xz[:, d:], w.dt_proj_bias, True, a_is_log=a_is_log,
                               dt_proj_weight=w.dt_proj_weight)
    out = F.linear(y, w.out_proj_weight, w.out_proj_bias)
    return out.unsqueeze(1), rout.unsqueeze(1)


__all__ = ["add_rmsnorm", "conv_step", "mamba_step", "mamba_step_fused", "residual_dtype"]
