"""Triton residual add + RMSNorm, forward and backward, one pass over the rows each way.

Per row of d features: ``res = hidden + residual`` (rounded to the residual stream's dtype),
``x = res`` read in the norm weight's dtype, ``out = x * rsqrt(mean(x^2) + eps) * weight`` computed in
fp32 and stored in the weight's dtype (or the caller's ``out_dtype``). The forward keeps ``rstd``
(one fp32 per row); the backward recomputes ``x`` from the saved residual stream, so nothing of size
(rows, d) is saved besides it. The weight gradient is summed per program into (programs, d) fp32
partials and reduced on the host (fixed order: deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ROWS = 8  # rows per program


@triton.jit
def _add_rms_fwd_kernel(h_ptr, r_ptr, w_ptr, res_ptr, out_ptr, rstd_ptr, rows, d, eps,
                        HAS_RES: tl.constexpr, RES_DT: tl.constexpr, W_DT: tl.constexpr,
                        BR: tl.constexpr, BD: tl.constexpr):
    offs_r = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    offs_d = tl.arange(0, BD)
    mr = offs_r < rows
    md = offs_d < d
    m = mr[:, None] & md[None, :]
    idx = offs_r[:, None] * d + offs_d[None, :]
    s = tl.load(h_ptr + idx, mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(r_ptr + idx, mask=m, other=0.0).to(tl.float32)
    s = s.to(RES_DT)  # the residual stream's rounding (a no-op in fp32)
    tl.store(res_ptr + idx, s.to(res_ptr.dtype.element_ty), mask=m)
    x = s.to(W_DT).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / d + eps)
    w = tl.load(w_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    tl.store(out_ptr + idx, (x * rstd[:, None] * w[None, :]).to(out_ptr.dtype.element_ty), mask=m)
    tl.store(rstd_ptr + offs_r, rstd, mask=mr)


@triton.jit
def _add_rms_bwd_kernel(res_ptr, w_ptr, rstd_ptr, dout_ptr, dres_ptr, dx_ptr, dx2_ptr, dw_ptr, rows, d,
                        HAS_DRES: tl.constexpr, WRITE_DX: tl.constexpr, WRITE_DX2: tl.constexpr, W_DT: tl.constexpr,
                        BR: tl.constexpr, BD: tl.constexpr):
    # the input gradient (one for hidden and residual alike) is rounded from fp32 into dx's dtype and,
    # where the two inputs' dtypes differ, into dx2's: each read of the rows yields both
    pid = tl.program_id(0).to(tl.int64)  # int64: the partial-sum row pid * d passes 2^31 on long inputs
    offs_r = pid * BR + tl.arange(0, BR)
    offs_d = tl.arange(0, BD)
    mr = offs_r < rows
    md = offs_d < d
    m = mr[:, None] & md[None, :]
    idx = offs_r[:, None] * d + offs_d[None, :]
    x = tl.load(res_ptr + idx, mask=m, other=0.0).to(W_DT).to(tl.float32)
    rstd = tl.load(rstd_ptr + offs_r, mask=mr, other=0.0)
    w = tl.load(w_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    dy = tl.load(dout_ptr + idx, mask=m, other=0.0).to(tl.float32)
    xhat = x * rstd[:, None]
    g = dy * w[None, :]
    c = tl.sum(g * xhat, axis=1) / d
    dx = (g - xhat * c[:, None]) * rstd[:, None]
    if HAS_DRES:
        dx += tl.load(dres_ptr + idx, mask=m, other=0.0).to(tl.float32)
    if WRITE_DX:
        tl.store(dx_ptr + idx, dx.to(dx_ptr.dtype.element_ty), mask=m)
    if WRITE_DX2:
        tl.store(dx2_ptr + idx, dx.to(dx2_ptr.dtype.element_ty), mask=m)
    tl.store(dw_ptr + pid * d + offs_d, tl.sum(dy * xhat, axis=0), mask=md)


_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _launch_shape(d: int):
    BD = triton.next_power_of_2(d)
    BR = max(1, min(ROWS, 8192 // BD))
    warps = 4 if BD * BR <= 4096 else 8
    return BR, BD, warps


class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, residual, weight, eps, res_dtype, promote_dtype, out_dtype):
        d = hidden.shape[-1]
        h2 = hidden.reshape(-1, d).contiguous()
        r2 = residual.reshape(-1, d).contiguous() if residual is not None else h2
        rows = h2.shape[0]
        res = torch.empty((rows, d), device=hidden.device, dtype=res_dtype)
        out = torch.empty((rows, d), device=hidden.device, dtype=out_dtype)
        rstd = torch.empty(rows, device=hidden.device, dtype=torch.float32)
        BR, BD, warps = _launch_shape(d)
        _add_rms_fwd_kernel[(triton.cdiv(rows, BR),)](
            h2, r2, weight, res, out, rstd, rows, d, float(eps),
            HAS_RES=residual is not None, RES_DT=_TL[promote_dtype], W_DT=_TL[weight.dtype],
            BR=BR, BD=BD, num_warps=warps)
        ctx.save_for_backward(res, weight, rstd)
        ctx.shape, ctx.has_residual = hidden.shape, residual is not None
        ctx.dtypes = (hidden.dtype, residual.dtype if residual is not None else None)
        return out.view(hidden.shape), res.view(hidden.shape)

    @staticmethod
    def backward(ctx, dout, dres):
        res, weight, rstd = ctx.saved_tensors
        rows, d = res.shape
        BR, BD, warps = _launch_shape(d)
        grid = triton.cdiv(rows, BR)
        h_dtype, r_dtype = ctx.dtypes
        need_h = ctx.needs_input_grad[0]
        need_r = ctx.has_residual and ctx.needs_input_grad[1]
        dr = torch.empty((rows, d), device=res.device, dtype=r_dtype) if need_r else None
        dh = dr if need_h and need_r and h_dtype == r_dtype else \
            torch.empty((rows, d), device=res.device, dtype=h_dtype) if need_h else None
        first = dr if dr is not None else dh
        second = dh if dh is not None and dh is not first else None
        dw_part = torch.empty((grid, d), device=res.device, dtype=torch.float32)
        dout = dout.reshape(rows, d).contiguous()
        dres = dres.reshape(rows, d).contiguous() if dres is not None else None
        _add_rms_bwd_kernel[(grid,)](
            res, weight, rstd, dout, dres if dres is not None else dout, first if first is not None else dw_part,
            second if second is not None else dw_part, dw_part, rows, d,
            HAS_DRES=dres is not None, WRITE_DX=first is not None, WRITE_DX2=second is not None,
            W_DT=_TL[weight.dtype], BR=BR, BD=BD, num_warps=warps)
        dh = dh.view(ctx.shape) if dh is not None else None
        dr = dr.view(ctx.shape) if dr is not None else None
        dw = dw_part.sum(0).to(weight.dtype) if ctx.needs_input_grad[2] else None
        return dh, dr, dw, None, None, None, None


def add_rms_norm(hidden, residual, weight, eps, residual_in_fp32=False, out_dtype=None):
    """Arguments as :func:`genomamba.ops.add_rms_norm` (validated there)."""
    promote = hidden.dtype if residual is None else torch.promote_types(hidden.dtype, residual.dtype)
    res_dtype = torch.float32 if residual_in_fp32 else promote
    return _AddRMSNorm.apply(hidden, residual, weight, eps, res_dtype, promote, out_dtype or weight.dtype)
