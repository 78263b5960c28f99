"""Triton ``mamba_step``: one token through a pre-norm Mamba block in a few launches.

Per block and token: one kernel for the residual add and RMSNorm, cuBLAS for in_proj, one kernel
for the conv step (state roll, depthwise conv, SiLU), cuBLAS for x_proj and dt_proj, the
selective-state-update kernel (dt softplus with the dt_proj bias, A = -exp(A_log), D, the z gate)
and cuBLAS for out_proj. conv_state and ssm_state are updated in place and nothing here syncs with
the host, so the step can be captured in a CUDA graph; A is computed from A_log inside the update
at every call, so a replayed graph follows in-place changes of the weights.

The arguments were validated once by ``genomamba.ops.mamba_step_plan``; nothing is checked here.
Each kernel has a reference twin in :mod:`genomamba.ops.reference` (``add_rms_norm_ref``,
``conv_step_ref``).
"""

from __future__ import annotations

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


def mamba_step(hidden, residual, conv_state, ssm_state, weights):
    """``genomamba.ops.mamba_step`` on the Triton kernels (arguments validated by the plan).

    hidden, residual: (b, 1, d_model) -> (out (b, 1, d_model) in out_proj's dtype, residual');
    conv_state and ssm_state are updated in place. The matmuls run on cuBLAS through torch.
    """
    w = weights
    d = conv_state.shape[1]
    n = ssm_state.shape[2]
    rank = w.dt_proj_weight.shape[1]
    normed, res = add_rmsnorm(hidden[:, 0], None if residual is None else residual[:, 0], w.norm_weight,
                              w.norm_eps, w.residual_in_fp32)
    xz = F.linear(normed.to(w.in_proj_weight.dtype), w.in_proj_weight, w.in_proj_bias)  # (b, 2 d)
    x = conv_step(xz[:, :d], conv_state, w.conv_weight, w.conv_bias)
    x_dbl = F.linear(x, w.x_proj_weight)  # (b, rank + 2 n)
    dt = F.linear(x_dbl[:, :rank], w.dt_proj_weight)  # the bias goes in as dt_bias
    A, a_is_log = (w.A, False) if w.A_log is None else (w.A_log, True)
    y = selective_state_update(ssm_state, x, dt, A, x_dbl[:, rank:rank + n], x_dbl[:, rank + n:], w.D,
                               xz[:, d:], w.dt_proj_bias, True, a_is_log=a_is_log)
    out = F.linear(y, w.out_proj_weight, w.out_proj_bias)
    return out.unsqueeze(1), res.unsqueeze(1)


__all__ = ["add_rmsnorm", "conv_step", "mamba_step", "residual_dtype"]
