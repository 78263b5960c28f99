"""Triton selective_state_update: one decoding step of the selective scan, state updated in place.

One program per (batch, block of BD channels) holds its (BD, n) slice of the state in registers;
the step is memory-bound (the state is read and written once), so nothing fancier is needed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genomamba.ops.triton.scan import _softplus


@triton.jit
def _state_update_kernel(
    st_ptr,
    x_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    out_ptr,
    d,
    n,
    d_per_group,
    s_sb,
    s_sd,
    s_sn,
    s_xb,
    s_xd,
    s_tb,
    s_td,
    s_zb,
    s_zd,
    s_ob,
    s_od,
    s_Ad,
    s_An,
    s_Bb,
    s_Bg,
    s_Bn,
    s_Cb,
    s_Cg,
    s_Cn,
    wdt_ptr,
    rank,
    s_wd,
    s_wr,
    DT_PROJ: tl.constexpr,
    RB: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    A_IS_LOG: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)
    offs_n = tl.arange(0, BN)
    mask_d = offs_d < d
    mask_n = offs_n < n
    m2 = mask_d[:, None] & mask_n[None, :]
    sp = st_ptr + pid_b * s_sb + offs_d[:, None] * s_sd + offs_n[None, :] * s_sn
    h = tl.load(sp, mask=m2, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_xb + offs_d * s_xd, mask=mask_d, other=0.0).to(tl.float32)
    if DT_PROJ:  # dt_ptr holds the rank-wide input of dt_proj: dt = W_dt @ it, rounded as a matmul would
        offs_r = tl.arange(0, RB)
        mask_r = offs_r < rank
        xr = tl.load(dt_ptr + pid_b * s_tb + offs_r * s_td, mask=mask_r, other=0.0).to(tl.float32)
        wd = tl.load(wdt_ptr + offs_d[:, None] * s_wd + offs_r[None, :] * s_wr,
                     mask=mask_d[:, None] & mask_r[None, :], other=0.0).to(tl.float32)
        dt = tl.sum(wd * xr[None, :], axis=1).to(out_ptr.dtype.element_ty).to(tl.float32)
    else:
        dt = tl.load(dt_ptr + pid_b * s_tb + offs_d * s_td, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=m2, other=0.0).to(tl.float32)
    if A_IS_LOG:  # A_ptr holds log(-A): read at every step, so in-place changes are always seen
        A = -tl.exp(A)
    # channels of one block may span groups here (no tile is shared along l), so index B/C per channel
    grp = offs_d // d_per_group
    Bt = tl.load(B_ptr + pid_b * s_Bb + grp[:, None] * s_Bg + offs_n[None, :] * s_Bn, mask=m2, other=0.0)
    Ct = tl.load(C_ptr + pid_b * s_Cb + grp[:, None] * s_Cg + offs_n[None, :] * s_Cn, mask=m2, other=0.0)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bt.to(tl.float32)
    tl.store(sp, h.to(st_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(h * Ct.to(tl.float32), axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + pid_b * s_zb + offs_d * s_zd, mask=mask_d, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptr + pid_b * s_ob + offs_d * s_od, y.to(out_ptr.dtype.element_ty), mask=mask_d)


def _bc(M):
    if M.dim() == 2:  # (b, n): one group
        return 1, (M.stride(0), 0, M.stride(1))
    return M.shape[1], (M.stride(0), M.stride(1), M.stride(2))


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           a_is_log=False, dt_proj_weight=None):
    """Arguments as :func:`genomamba.ops.selective_state_update` (validated there); with
    ``a_is_log``, ``A`` holds A_log and the kernel uses A = -exp(A_log). With ``dt_proj_weight``
    (d, rank), ``dt`` is dt_proj's input (b, >= rank; its first rank columns are read) and the
    kernel computes dt = dt_proj_weight @ it per channel (rounded to x's dtype, as a matmul's result)."""
    b, d, n = state.shape
    g, sB = _bc(B)
    _g, sC = _bc(C)
    out = torch.empty((b, d), device=x.device, dtype=x.dtype)
    dummy = torch.empty(1, device=x.device, dtype=torch.float32)
    zz = z if z is not None else x
    BD = min(32, triton.next_power_of_2(d))
    BN = triton.next_power_of_2(n)
    _state_update_kernel[(triton.cdiv(d, BD), b)](
        state,
        x,
        dt,
        A,
        B,
        C,
        D if D is not None else dummy,
        zz,
        dt_bias if dt_bias is not None else dummy,
        out,
        d,
        n,
        d // g,
        *state.stride(),
        *x.stride(),
        *dt.stride(),
        *zz.stride(),
        *out.stride(),
        *A.stride(),
        *sB,
        *sC,
        dt_proj_weight if dt_proj_weight is not None else dummy,
        dt_proj_weight.shape[1] if dt_proj_weight is not None else 0,
        *(dt_proj_weight.stride() if dt_proj_weight is not None else (0, 0)),
        DT_PROJ=dt_proj_weight is not None,
        RB=triton.next_power_of_2(dt_proj_weight.shape[1]) if dt_proj_weight is not None else 1,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus),
        A_IS_LOG=bool(a_is_log),
        BD=BD,
        BN=BN,
        num_warps=4,
    )
    return out
