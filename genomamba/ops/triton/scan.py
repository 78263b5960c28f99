"""Triton selective scan, forward and backward (mamba_ssm ``selective_scan_fn`` semantics).

Layout of the work. A program owns a (BD channels x BN states) tile of the fp32 state and walks
a chunk of the sequence in blocks of BL tokens; inside a block the recurrence
h_t = a_t * h_{t-1} + b_t is a ``tl.associative_scan`` over (a, b) pairs along l. Long sequences
are cut into chunks so that b * ceil(d / BD) * nchunks programs fill the GPU (b=1, d=256 too):

forward   K1 ``_fwd_kernel(MODE=0)``  per chunk: end state from a zero start and sum(delta)
          K2 ``_pass_fwd_kernel``     sequential over chunks: the true state at each chunk start
          K3 ``_fwd_kernel(MODE=1)``  per chunk: outputs from the true chunk-start state
backward  K1 ``_bwd_carry_kernel``    per chunk: the gradient carry a_first * dh_first from zero
          K2 ``_pass_bwd_kernel``     sequential over chunks (reversed): the carry entering each chunk
          K3 ``_bwd_kernel``          per chunk: recompute states (forward), then walk blocks backward

With one chunk, K1 and K2 are skipped. States are recomputed in the backward (nothing of size
(b, d, l, n) is ever stored); the only saved extra is the (b, nchunks, d, n) chunk-start states.
Determinism: no atomics. dA/dD/dbias partials per (b, chunk) and dB/dC partials per
(b, d-block) are written to scratch and summed by torch in a fixed order.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# Tunables. BD channels x BN (= next_pow2(n)) states x BL tokens is the register tile.
CONFIG = {
    # from a sweep of tile sizes on Hopper GPUs: small tiles win, the 3-D scan
    # tile otherwise spills; bwd BD=4 rather than the marginally faster 1-2 bounds the dB/dC
    # partials ((b, d / BD, n, l) fp32 each)
    "fwd": {"BD": 2, "BL": 32, "num_warps": 2},
    "bwd": {"BD": 4, "BL": 32, "num_warps": 4},
    # programs to aim for (x number of SMs) when choosing how many chunks to cut l into
    "programs_per_sm": 4,
    # tests force small chunks (in blocks) to exercise the multi-chunk paths on tiny inputs
    "force_chunk_blocks": None,
}


# ----------------------------------------------------------------------------- jit helpers


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 * (a1 * h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # torch's softplus (threshold 20); log1p via Goldberg's trick so small exp(x) keeps its precision
    e = tl.exp(x)
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _load_delta(dt_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta tile in fp32 after bias and softplus; exactly 0 where masked (so a = 1, b = 0)."""
    raw = tl.load(dt_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    return tl.where(mask, dt, 0.0), raw


@triton.jit
def _last_col(x, BL: tl.constexpr):
    """x[..., BL - 1] of a (BD, BN, BL) tile."""
    cols = tl.arange(0, BL)
    return tl.sum(tl.where((cols == BL - 1)[None, None, :], x, 0.0), axis=2)


@triton.jit
def _first_col(x, BL: tl.constexpr):
    cols = tl.arange(0, BL)
    return tl.sum(tl.where((cols == 0)[None, None, :], x, 0.0), axis=2)


# ----------------------------------------------------------------------------- forward


@triton.jit
def _fwd_kernel(
    u_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    hin_ptr,
    out_ptr,
    hend_ptr,
    dsum_ptr,
    final_ptr,
    d,
    n,
    l,
    chunk_len,
    nchunks,
    n_dblk,
    d_per_group,
    s_ub,
    s_ud,
    s_ul,
    s_tb,
    s_td,
    s_tl,
    s_zb,
    s_zd,
    s_zl,
    s_ob,
    s_od,
    s_ol,
    s_Bb,
    s_Bg,
    s_Bn,
    s_Bl,
    s_Cb,
    s_Cg,
    s_Cn,
    s_Cl,
    s_Ad,
    s_An,
    MODE: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_HIN: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
    BL: tl.constexpr,
):
    # MODE 0: chunk summary from a zero state (hend, dsum). MODE 1: outputs from hin, final state.
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_d = pid % n_dblk
    pid_c = pid // n_dblk
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)  # d * l may pass 2**31
    offs_n = tl.arange(0, BN).to(tl.int64)  # offs_n * stride reaches n * l
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    # A scaled by log2(e) so that exp(delta * A) is one exp2
    A2 = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn, other=0.0)
    A2 = A2.to(tl.float32) * 1.4426950408889634
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    g = ((pid_d * BD) // d_per_group).to(tl.int64)  # one group per d-block (host guarantees); g * n * l is large
    Bp = B_ptr + pid_b * s_Bb + g * s_Bg
    Cp = C_ptr + pid_b * s_Cb + g * s_Cg
    up = u_ptr + pid_b * s_ub
    tp = dt_ptr + pid_b * s_tb
    zp = z_ptr + pid_b * s_zb
    op = out_ptr + pid_b * s_ob
    dn_off = (pid_b * nchunks + pid_c) * d * n + offs_d[:, None] * n + offs_n[None, :]

    h = tl.zeros([BD, BN], dtype=tl.float32)
    if MODE == 1:
        if HAS_HIN:
            h = tl.load(hin_ptr + dn_off, mask=mask_dn, other=0.0)
    dsum = tl.zeros([BD], dtype=tl.float32)
    t0 = pid_c * chunk_len
    t1 = tl.minimum(t0 + chunk_len, l)
    for start in range(t0, t1, BL):
        offs_l = start + tl.arange(0, BL)
        mask_l = offs_l < l
        mask_dl = mask_d[:, None] & mask_l[None, :]
        mask_nl = mask_n[:, None] & mask_l[None, :]
        dt, _raw = _load_delta(
            tp, offs_d[:, None] * s_td + offs_l[None, :] * s_tl, mask_dl, bias, HAS_BIAS, SOFTPLUS
        )
        u = tl.load(up + offs_d[:, None] * s_ud + offs_l[None, :] * s_ul, mask=mask_dl, other=0.0).to(
            tl.float32
        )
        Bt = tl.load(Bp + offs_n[:, None] * s_Bn + offs_l[None, :] * s_Bl, mask=mask_nl, other=0.0).to(
            tl.float32
        )
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])  # (BD, BN, BL)
        bb = (dt * u)[:, None, :] * Bt[None, :, :]
        sa, sb = tl.associative_scan((a, bb), 2, _combine)
        hs = sa * h[:, :, None] + sb
        h = _last_col(hs, BL)
        if MODE == 0:
            dsum += tl.sum(dt, axis=1)
        else:
            Ct = tl.load(Cp + offs_n[:, None] * s_Cn + offs_l[None, :] * s_Cl, mask=mask_nl, other=0.0)
            y = tl.sum(hs * Ct.to(tl.float32)[None, :, :], axis=1)  # (BD, BL)
            if HAS_D:
                y += u * Dv[:, None]
            if HAS_Z:
                zz = tl.load(
                    zp + offs_d[:, None] * s_zd + offs_l[None, :] * s_zl, mask=mask_dl, other=0.0
                ).to(tl.float32)
                y = y * (zz * tl.sigmoid(zz))
            tl.store(
                op + offs_d[:, None] * s_od + offs_l[None, :] * s_ol,
                y.to(out_ptr.dtype.element_ty),
                mask=mask_dl,
            )
    if MODE == 0:
        tl.store(hend_ptr + dn_off, h, mask=mask_dn)
        tl.store(dsum_ptr + (pid_b * nchunks + pid_c) * d + offs_d, dsum, mask=mask_d)
    else:
        if pid_c == nchunks - 1:
            tl.store(final_ptr + pid_b * d * n + offs_d[:, None] * n + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _pass_fwd_kernel(
    A_ptr,
    h0_ptr,
    hend_ptr,
    dsum_ptr,
    hin_ptr,
    d,
    n,
    nchunks,
    s_Ad,
    s_An,
    HAS_H0: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
):
    # state entering chunk c = exp(A * sum delta over c-1) * state entering c-1 + end state of c-1 from 0
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)  # d * l may pass 2**31
    offs_n = tl.arange(0, BN).to(tl.int64)  # offs_n * stride reaches n * l
    mask_d = offs_d < d
    mask_dn = mask_d[:, None] & (offs_n < n)[None, :]
    A2 = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn, other=0.0)
    A2 = A2.to(tl.float32) * 1.4426950408889634
    dn = offs_d[:, None] * n + offs_n[None, :]
    h = tl.zeros([BD, BN], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * d * n + dn, mask=mask_dn, other=0.0).to(tl.float32)
    for c in range(0, nchunks):
        base = (pid_b * nchunks + c) * d * n
        tl.store(hin_ptr + base + dn, h, mask=mask_dn)
        ds = tl.load(dsum_ptr + (pid_b * nchunks + c) * d + offs_d, mask=mask_d, other=0.0)
        he = tl.load(hend_ptr + base + dn, mask=mask_dn, other=0.0)
        h = tl.exp2(ds[:, None] * A2) * h + he


# ----------------------------------------------------------------------------- backward


@triton.jit
def _bwd_block_common(
    tp,
    zp,
    gp,
    Cp,
    offs_d,
    offs_n,
    offs_l,
    mask_d,
    mask_n,
    l,
    bias,
    A2,
    s_td,
    s_tl,
    s_zd,
    s_zl,
    s_gd,
    s_gl,
    s_Cn,
    s_Cl,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BL: tl.constexpr,
):
    """Per block: delta, alpha = a_{t+1} (1 at the block's last column and past l), dy, C."""
    mask_l = offs_l < l
    mask_dl = mask_d[:, None] & mask_l[None, :]
    dt, raw = _load_delta(
        tp, offs_d[:, None] * s_td + offs_l[None, :] * s_tl, mask_dl, bias, HAS_BIAS, SOFTPLUS
    )
    # delta at t + 1: a second (cached) load, because registers cannot be shifted along l
    cols = tl.arange(0, BL)
    mask_nx = mask_d[:, None] & ((offs_l + 1) < l)[None, :] & (cols < BL - 1)[None, :]
    dtn, _r = _load_delta(
        tp, offs_d[:, None] * s_td + (offs_l + 1)[None, :] * s_tl, mask_nx, bias, HAS_BIAS, SOFTPLUS
    )
    alpha = tl.exp2(dtn[:, None, :] * A2[:, :, None])
    dout = tl.load(gp + offs_d[:, None] * s_gd + offs_l[None, :] * s_gl, mask=mask_dl, other=0.0).to(
        tl.float32
    )
    zz = tl.zeros_like(dout)
    if HAS_Z:
        zz = tl.load(zp + offs_d[:, None] * s_zd + offs_l[None, :] * s_zl, mask=mask_dl, other=0.0).to(
            tl.float32
        )
        dy = dout * (zz * tl.sigmoid(zz))
    else:
        dy = dout
    mask_nl = mask_n[:, None] & mask_l[None, :]
    Ct = tl.load(Cp + offs_n[:, None] * s_Cn + offs_l[None, :] * s_Cl, mask=mask_nl, other=0.0).to(tl.float32)
    return dt, raw, alpha, dout, zz, dy, Ct, mask_dl, mask_nl


@triton.jit
def _bwd_carry_kernel(
    dt_ptr,
    A_ptr,
    C_ptr,
    z_ptr,
    bias_ptr,
    gout_ptr,
    lc_ptr,
    dsum_ptr,
    d,
    n,
    l,
    chunk_len,
    nchunks,
    n_dblk,
    d_per_group,
    s_tb,
    s_td,
    s_tl,
    s_zb,
    s_zd,
    s_zl,
    s_gb,
    s_gd,
    s_gl,
    s_Cb,
    s_Cg,
    s_Cn,
    s_Cl,
    s_Ad,
    s_An,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
    BL: tl.constexpr,
):
    # the carry this chunk hands to the one before it, had nothing come from later chunks
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_d = pid % n_dblk
    pid_c = pid // n_dblk
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)  # d * l may pass 2**31
    offs_n = tl.arange(0, BN).to(tl.int64)  # offs_n * stride reaches n * l
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A2 = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn, other=0.0)
    A2 = A2.to(tl.float32) * 1.4426950408889634
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    g = ((pid_d * BD) // d_per_group).to(tl.int64)
    Cp = C_ptr + pid_b * s_Cb + g * s_Cg
    tp = dt_ptr + pid_b * s_tb
    zp = z_ptr + pid_b * s_zb
    gp = gout_ptr + pid_b * s_gb
    G = tl.zeros([BD, BN], dtype=tl.float32)
    dsum = tl.zeros([BD], dtype=tl.float32)
    t0 = pid_c * chunk_len
    nblk = (tl.minimum(t0 + chunk_len, l) - t0 + BL - 1) // BL
    for i in range(0, nblk):
        offs_l = t0 + (nblk - 1 - i) * BL + tl.arange(0, BL)
        dt, raw, alpha, dout, zz, dy, Ct, mask_dl, mask_nl = _bwd_block_common(
            tp,
            zp,
            gp,
            Cp,
            offs_d,
            offs_n,
            offs_l,
            mask_d,
            mask_n,
            l,
            bias,
            A2,
            s_td,
            s_tl,
            s_zd,
            s_zl,
            s_gd,
            s_gl,
            s_Cn,
            s_Cl,
            HAS_Z,
            HAS_BIAS,
            SOFTPLUS,
            BL,
        )
        cc = Ct[None, :, :] * dy[:, None, :]
        pa, S = tl.associative_scan((alpha, cc), 2, _combine, reverse=True)
        dh0 = _first_col(S + pa * G[:, :, None], BL)
        dt0 = tl.sum(tl.where((tl.arange(0, BL) == 0)[None, :], dt, 0.0), axis=1)
        G = tl.exp2(dt0[:, None] * A2) * dh0
        dsum += tl.sum(dt, axis=1)
    dn_off = (pid_b * nchunks + pid_c) * d * n + offs_d[:, None] * n + offs_n[None, :]
    tl.store(lc_ptr + dn_off, G, mask=mask_dn)
    tl.store(dsum_ptr + (pid_b * nchunks + pid_c) * d + offs_d, dsum, mask=mask_d)


@triton.jit
def _pass_bwd_kernel(
    A_ptr,
    gfin_ptr,
    lc_ptr,
    dsum_ptr,
    gin_ptr,
    dh0_ptr,
    d,
    n,
    nchunks,
    s_Ad,
    s_An,
    HAS_GFIN: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
):
    # carry entering chunk c from the right; what leaves chunk 0 is d(initial_state)
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)  # d * l may pass 2**31
    offs_n = tl.arange(0, BN).to(tl.int64)  # offs_n * stride reaches n * l
    mask_d = offs_d < d
    mask_dn = mask_d[:, None] & (offs_n < n)[None, :]
    A2 = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn, other=0.0)
    A2 = A2.to(tl.float32) * 1.4426950408889634
    dn = offs_d[:, None] * n + offs_n[None, :]
    G = tl.zeros([BD, BN], dtype=tl.float32)
    if HAS_GFIN:
        G = tl.load(gfin_ptr + pid_b * d * n + dn, mask=mask_dn, other=0.0).to(tl.float32)
    for i in range(0, nchunks):
        c = nchunks - 1 - i
        base = (pid_b * nchunks + c) * d * n
        tl.store(gin_ptr + base + dn, G, mask=mask_dn)
        ds = tl.load(dsum_ptr + (pid_b * nchunks + c) * d + offs_d, mask=mask_d, other=0.0)
        lc = tl.load(lc_ptr + base + dn, mask=mask_dn, other=0.0)
        G = tl.exp2(ds[:, None] * A2) * G + lc
    tl.store(dh0_ptr + pid_b * d * n + dn, G, mask=mask_dn)


@triton.jit
def _bwd_kernel(
    u_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    gout_ptr,
    hin_ptr,
    gin_ptr,
    scratch_ptr,
    du_ptr,
    ddt_ptr,
    dz_ptr,
    dA_ptr,
    dD_ptr,
    dbias_ptr,
    dB_ptr,
    dC_ptr,
    dh0_ptr,
    d,
    n,
    l,
    chunk_len,
    nchunks,
    n_dblk,
    d_per_group,
    nblk_total,
    s_ub,
    s_ud,
    s_ul,
    s_tb,
    s_td,
    s_tl,
    s_zb,
    s_zd,
    s_zl,
    s_gb,
    s_gd,
    s_gl,
    s_Bb,
    s_Bg,
    s_Bn,
    s_Bl,
    s_Cb,
    s_Cg,
    s_Cn,
    s_Cl,
    s_Ad,
    s_An,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_HIN: tl.constexpr,
    HAS_GIN: tl.constexpr,
    WRITE_DH0: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
    BL: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_d = pid % n_dblk
    pid_c = pid // n_dblk
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)  # d * l may pass 2**31
    offs_n = tl.arange(0, BN).to(tl.int64)  # offs_n * stride reaches n * l
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn, other=0.0).to(
        tl.float32
    )
    A2 = A * 1.4426950408889634
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    g = ((pid_d * BD) // d_per_group).to(tl.int64)
    Bp = B_ptr + pid_b * s_Bb + g * s_Bg
    Cp = C_ptr + pid_b * s_Cb + g * s_Cg
    up = u_ptr + pid_b * s_ub
    tp = dt_ptr + pid_b * s_tb
    zp = z_ptr + pid_b * s_zb
    gp = gout_ptr + pid_b * s_gb
    # gradients of (b, d, l) tensors are written contiguous
    dup = du_ptr + pid_b * d * l
    ddtp = ddt_ptr + pid_b * d * l
    dzp = dz_ptr + pid_b * d * l
    # dB/dC partials: (b, n_dblk, n, l) fp32, one slice per d-block, summed on the host
    dBp = dB_ptr + (pid_b * n_dblk + pid_d) * n * l
    dCp = dC_ptr + (pid_b * n_dblk + pid_d) * n * l
    dn_off = (pid_b * nchunks + pid_c) * d * n + offs_d[:, None] * n + offs_n[None, :]
    t0 = pid_c * chunk_len
    nblk = (tl.minimum(t0 + chunk_len, l) - t0 + BL - 1) // BL
    blk0 = t0 // BL
    # scratch: (b, d, nblk_total, n) fp32 states at every block start of this program's chunk
    scr = scratch_ptr + pid_b * d * nblk_total * n + offs_d[:, None] * (nblk_total * n) + offs_n[None, :]

    # phase A: forward over the chunk, storing the state at each block start
    h = tl.zeros([BD, BN], dtype=tl.float32)
    if HAS_HIN:
        h = tl.load(hin_ptr + dn_off, mask=mask_dn, other=0.0)
    for i in range(0, nblk):
        tl.store(scr + (blk0 + i) * n, h, mask=mask_dn)
        offs_l = t0 + i * BL + tl.arange(0, BL)
        mask_l = offs_l < l
        mask_dl = mask_d[:, None] & mask_l[None, :]
        mask_nl = mask_n[:, None] & mask_l[None, :]
        dt, _raw = _load_delta(
            tp, offs_d[:, None] * s_td + offs_l[None, :] * s_tl, mask_dl, bias, HAS_BIAS, SOFTPLUS
        )
        u = tl.load(up + offs_d[:, None] * s_ud + offs_l[None, :] * s_ul, mask=mask_dl, other=0.0).to(
            tl.float32
        )
        Bt = tl.load(Bp + offs_n[:, None] * s_Bn + offs_l[None, :] * s_Bl, mask=mask_nl, other=0.0).to(
            tl.float32
        )
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])
        bb = (dt * u)[:, None, :] * Bt[None, :, :]
        sa, sb = tl.associative_scan((a, bb), 2, _combine)
        h = _last_col(sa * h[:, :, None] + sb, BL)
    # the stores above and the loads below may map elements to different threads
    tl.debug_barrier()

    # phase B: blocks in reverse, carrying G = dL/dh at the block end from everything after it
    G = tl.zeros([BD, BN], dtype=tl.float32)
    if HAS_GIN:
        G = tl.load(gin_ptr + dn_off, mask=mask_dn, other=0.0)
    dA_acc = tl.zeros([BD, BN], dtype=tl.float32)
    dD_acc = tl.zeros([BD], dtype=tl.float32)
    db_acc = tl.zeros([BD], dtype=tl.float32)
    for i in range(0, nblk):
        j = nblk - 1 - i
        offs_l = t0 + j * BL + tl.arange(0, BL)
        dt, raw, alpha, dout, zz, dy, Ct, mask_dl, mask_nl = _bwd_block_common(
            tp,
            zp,
            gp,
            Cp,
            offs_d,
            offs_n,
            offs_l,
            mask_d,
            mask_n,
            l,
            bias,
            A2,
            s_td,
            s_tl,
            s_zd,
            s_zl,
            s_gd,
            s_gl,
            s_Cn,
            s_Cl,
            HAS_Z,
            HAS_BIAS,
            SOFTPLUS,
            BL,
        )
        u = tl.load(up + offs_d[:, None] * s_ud + offs_l[None, :] * s_ul, mask=mask_dl, other=0.0).to(
            tl.float32
        )
        Bt = tl.load(Bp + offs_n[:, None] * s_Bn + offs_l[None, :] * s_Bl, mask=mask_nl, other=0.0).to(
            tl.float32
        )
        h0 = tl.load(scr + (blk0 + j) * n, mask=mask_dn, other=0.0)
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])
        bb = (dt * u)[:, None, :] * Bt[None, :, :]
        sa, sb = tl.associative_scan((a, bb), 2, _combine)
        hs = sa * h0[:, :, None] + sb
        if HAS_Z:
            y = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                y += u * Dv[:, None]
            sz = tl.sigmoid(zz)
            dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(
                dzp + offs_d[:, None] * l + offs_l[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask_dl
            )
        cc = Ct[None, :, :] * dy[:, None, :]
        pa, S = tl.associative_scan((alpha, cc), 2, _combine, reverse=True)
        dh = S + pa * G[:, :, None]
        G = _first_col(a * dh, BL)
        ah = hs - bb  # a_t * h_{t-1}, without a shifted copy of h
        ddt = tl.sum(dh * (ah * A[:, :, None] + Bt[None, :, :] * u[:, None, :]), axis=1)
        dA_acc += tl.sum(dh * ah * dt[:, None, :], axis=2)
        du = tl.sum(dh * Bt[None, :, :], axis=1) * dt
        if HAS_D:
            du += dy * Dv[:, None]
            dD_acc += tl.sum(dy * u, axis=1)
        dBt = tl.sum(dh * (dt * u)[:, None, :], axis=0)  # (BN, BL)
        dCt = tl.sum(hs * dy[:, None, :], axis=0)
        tl.store(dBp + offs_n[:, None] * l + offs_l[None, :], dBt, mask=mask_nl)
        tl.store(dCp + offs_n[:, None] * l + offs_l[None, :], dCt, mask=mask_nl)
        if SOFTPLUS:
            ddt = tl.where(raw > 20.0, ddt, ddt * tl.sigmoid(raw))
        ddt = tl.where(mask_dl, ddt, 0.0)
        db_acc += tl.sum(ddt, axis=1)
        tl.store(dup + offs_d[:, None] * l + offs_l[None, :], du.to(du_ptr.dtype.element_ty), mask=mask_dl)
        tl.store(ddtp + offs_d[:, None] * l + offs_l[None, :], ddt.to(ddt_ptr.dtype.element_ty), mask=mask_dl)
    tl.store(dA_ptr + dn_off, dA_acc, mask=mask_dn)
    dd_off = (pid_b * nchunks + pid_c) * d + offs_d
    tl.store(dD_ptr + dd_off, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + dd_off, db_acc, mask=mask_d)
    if WRITE_DH0:
        tl.store(dh0_ptr + pid_b * d * n + offs_d[:, None] * n + offs_n[None, :], G, mask=mask_dn)


# ----------------------------------------------------------------------------- host side


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _pow2_divisor(x: int, cap: int) -> int:
    p = 1
    while p * 2 <= cap and x % (p * 2) == 0:
        p *= 2
    return p


def _bc_view(M: torch.Tensor):
    """(b, n, l) or (b, g, n, l) -> (tensor, g, strides b, g, n, l)."""
    if M.dim() == 3:
        return M, 1, (M.stride(0), 0, M.stride(1), M.stride(2))
    return M, M.shape[1], (M.stride(0), M.stride(1), M.stride(2), M.stride(3))


def _plan(b: int, d: int, n: int, l: int, g: int, device, which: str, chunk_len: int | None = None):
    """Tile sizes and chunking. The backward reuses the forward's chunk boundaries (its saved
    chunk-start states), with its own tile sizes where its BL divides the chunk length."""
    cfg = CONFIG[which]
    BL = cfg["BL"]
    if chunk_len is not None and chunk_len % BL:
        BL = CONFIG["fwd"]["BL"]
    dpg = d // g
    BD = cfg["BD"] if g == 1 else _pow2_divisor(dpg, cfg["BD"])
    BD = min(BD, triton.next_power_of_2(d))
    if g == 1:
        dpg = d  # one group: a d-block never straddles groups
    BN = triton.next_power_of_2(n)
    n_dblk = triton.cdiv(d, BD)
    nblk = triton.cdiv(l, BL)
    forced = CONFIG["force_chunk_blocks"] or os.environ.get("GENOMAMBA_TRITON_CHUNK_BLOCKS")
    if chunk_len is not None:
        per = chunk_len // BL
    elif forced:
        per = int(forced)
    else:
        target = CONFIG["programs_per_sm"] * _num_sms(device)
        nchunks = max(1, min(nblk, triton.cdiv(target, b * n_dblk)))
        per = triton.cdiv(nblk, nchunks)
    nchunks = triton.cdiv(nblk, per)
    return dict(
        BD=BD,
        BN=BN,
        BL=BL,
        n_dblk=n_dblk,
        nchunks=nchunks,
        chunk_len=per * BL,
        nblk=nblk,
        dpg=dpg,
        num_warps=cfg["num_warps"],
    )


def _fwd(u, delta, A, B, C, D, z, delta_bias, softplus, h0, chunk_plan=None):
    b, d, l = u.shape
    n = A.shape[1]
    Bv, g, sB = _bc_view(B)
    Cv, _g, sC = _bc_view(C)
    p = chunk_plan or _plan(b, d, n, l, g, u.device, "fwd")
    dev = u.device
    out = torch.empty((b, d, l), device=dev, dtype=u.dtype)
    final = torch.empty((b, d, n), device=dev, dtype=torch.float32)
    nch = p["nchunks"]
    dummy = torch.empty(1, device=dev, dtype=torch.float32)
    zz = z if z is not None else u
    hin = None
    if nch > 1:
        hend = torch.empty((b, nch, d, n), device=dev, dtype=torch.float32)
        dsum = torch.empty((b, nch, d), device=dev, dtype=torch.float32)
        hin = torch.empty((b, nch, d, n), device=dev, dtype=torch.float32)
    elif h0 is not None:
        hin = h0.float().contiguous().view(b, 1, d, n)
    grid = (p["n_dblk"] * nch, b)
    common = (d, n, l, p["chunk_len"], nch, p["n_dblk"], p["dpg"], *u.stride(), *delta.stride(), *zz.stride())
    tail = (*sB, *sC, *A.stride())
    flags = dict(
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(softplus),
        BD=p["BD"],
        BN=p["BN"],
        BL=p["BL"],
        num_warps=p["num_warps"],
    )
    Dp = D if D is not None else dummy
    bp = delta_bias if delta_bias is not None else dummy
    if nch > 1:
        _fwd_kernel[grid](
            u,
            delta,
            A,
            Bv,
            Cv,
            Dp,
            zz,
            bp,
            dummy,
            out,
            hend,
            dsum,
            dummy,
            *common,
            *out.stride(),
            *tail,
            MODE=0,
            HAS_HIN=False,
            **flags,
        )
        h0c = h0.float().contiguous() if h0 is not None else dummy
        _pass_fwd_kernel[(p["n_dblk"], b)](
            A, h0c, hend, dsum, hin, d, n, nch, *A.stride(), HAS_H0=h0 is not None, BD=p["BD"], BN=p["BN"]
        )
    _fwd_kernel[grid](
        u,
        delta,
        A,
        Bv,
        Cv,
        Dp,
        zz,
        bp,
        hin if hin is not None else dummy,
        out,
        dummy,
        dummy,
        final,
        *common,
        *out.stride(),
        *tail,
        MODE=1,
        HAS_HIN=hin is not None,
        **flags,
    )
    return out, final, hin, p


def _bwd(u, delta, A, B, C, D, z, delta_bias, softplus, hin, dout, dfinal, p):
    b, d, l = u.shape
    n = A.shape[1]
    dev = u.device
    Bv, g, sB = _bc_view(B)
    Cv, _g, sC = _bc_view(C)
    nch = p["nchunks"]
    dummy = torch.empty(1, device=dev, dtype=torch.float32)
    zz = z if z is not None else u
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    gin = None
    dh0 = torch.empty((b, d, n), device=dev, dtype=torch.float32)
    if dfinal is not None:
        dfinal = dfinal.float().contiguous()
    flags = dict(
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(softplus),
        BD=p["BD"],
        BN=p["BN"],
        BL=p["BL"],
        num_warps=p["num_warps"],
    )
    bp = delta_bias if delta_bias is not None else dummy
    grid = (p["n_dblk"] * nch, b)
    if nch > 1:
        lc = torch.empty((b, nch, d, n), device=dev, dtype=torch.float32)
        dsum = torch.empty((b, nch, d), device=dev, dtype=torch.float32)
        gin = torch.empty((b, nch, d, n), device=dev, dtype=torch.float32)
        _bwd_carry_kernel[grid](
            delta,
            A,
            Cv,
            zz,
            bp,
            dout,
            lc,
            dsum,
            d,
            n,
            l,
            p["chunk_len"],
            nch,
            p["n_dblk"],
            p["dpg"],
            *delta.stride(),
            *zz.stride(),
            *dout.stride(),
            *sC,
            *A.stride(),
            **flags,
        )
        _pass_bwd_kernel[(p["n_dblk"], b)](
            A,
            dfinal if dfinal is not None else dummy,
            lc,
            dsum,
            gin,
            dh0,
            d,
            n,
            nch,
            *A.stride(),
            HAS_GFIN=dfinal is not None,
            BD=p["BD"],
            BN=p["BN"],
        )
    elif dfinal is not None:
        gin = dfinal.view(b, 1, d, n)
    du = torch.empty((b, d, l), device=dev, dtype=u.dtype)
    ddt = torch.empty((b, d, l), device=dev, dtype=delta.dtype)
    dz = torch.empty((b, d, l), device=dev, dtype=z.dtype) if z is not None else dummy
    dA_p = torch.empty((b, nch, d, n), device=dev, dtype=torch.float32)
    dD_p = torch.empty((b, nch, d), device=dev, dtype=torch.float32)
    db_p = torch.empty((b, nch, d), device=dev, dtype=torch.float32)
    dB_p = torch.empty((b, p["n_dblk"], n, l), device=dev, dtype=torch.float32)
    dC_p = torch.empty((b, p["n_dblk"], n, l), device=dev, dtype=torch.float32)
    scratch = torch.empty((b, d, p["nblk"], n), device=dev, dtype=torch.float32)
    _bwd_kernel[grid](
        u,
        delta,
        A,
        Bv,
        Cv,
        D if D is not None else dummy,
        zz,
        bp,
        dout,
        hin if hin is not None else dummy,
        gin if gin is not None else dummy,
        scratch,
        du,
        ddt,
        dz,
        dA_p,
        dD_p,
        db_p,
        dB_p,
        dC_p,
        dh0,
        d,
        n,
        l,
        p["chunk_len"],
        nch,
        p["n_dblk"],
        p["dpg"],
        p["nblk"],
        *u.stride(),
        *delta.stride(),
        *zz.stride(),
        *dout.stride(),
        *sB,
        *sC,
        *A.stride(),
        HAS_D=D is not None,
        HAS_HIN=hin is not None,
        HAS_GIN=gin is not None,
        WRITE_DH0=nch == 1,
        **flags,
    )
    # fixed-order reductions (torch's sum is deterministic for a given shape)
    dA = dA_p.sum((0, 1)).to(A.dtype)
    dD = dD_p.sum((0, 1)).to(D.dtype) if D is not None else None
    dbias = db_p.sum((0, 1)).to(delta_bias.dtype) if delta_bias is not None else None

    def _bc_grad(part, M):
        if M.dim() == 3:
            return part.sum(1).to(M.dtype)
        gg = M.shape[1]
        return part.view(b, gg, p["n_dblk"] // gg, n, l).sum(2).to(M.dtype)

    dB = _bc_grad(dB_p, B)
    dC = _bc_grad(dC_p, C)
    return du, ddt, dA, dB, dC, dD, (dz if z is not None else None), dbias, dh0


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, h0):
        out, final, hin, p = _fwd(u, delta, A, B, C, D, z, delta_bias, softplus, h0)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hin)
        ctx.softplus = softplus
        ctx.plan = p
        ctx.has_h0 = h0 is not None
        ctx.h0_dtype = h0.dtype if h0 is not None else None
        return out, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        u, delta, A, B, C, D, z, delta_bias, hin = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(u)
        fp = ctx.plan
        g = B.shape[1] if B.dim() == 4 else 1  # saved tensors are read once: checkpointing unpacks them once only
        p = _plan(u.shape[0], u.shape[1], A.shape[1], u.shape[2], g, u.device, "bwd", fp["chunk_len"])
        assert p["nchunks"] == fp["nchunks"]
        du, ddt, dA, dB, dC, dD, dz, dbias, dh0 = _bwd(
            u, delta, A, B, C, D, z, delta_bias, ctx.softplus, hin, dout, dfinal, p
        )
        dh0 = dh0.to(ctx.h0_dtype) if ctx.has_h0 else None
        return du, ddt, dA, dB, dC, dD, dz, dbias, None, dh0


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_final_state=False,
):
    """Triton selective scan; arguments as :func:`genomamba.ops.selective_scan` (validated there)."""
    b, d, l = u.shape
    n = A.shape[1]
    if l == 0:
        out = u.new_empty((b, d, 0))
        fin = (
            initial_state.float()
            if initial_state is not None
            else u.new_zeros((b, d, n), dtype=torch.float32)
        )
        return (out, fin) if return_final_state else out
    # l must be the unit-stride axis for coalesced tiles; other layouts are copied once
    u, delta = (t if t.stride(-1) == 1 else t.contiguous() for t in (u, delta))
    z = z if z is None or z.stride(-1) == 1 else z.contiguous()
    B = B if B.stride(-1) == 1 else B.contiguous()
    C = C if C.stride(-1) == 1 else C.contiguous()
    out, final = _SelectiveScanFn.apply(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state
    )
    return (out, final) if return_final_state else out


__all__ = ["selective_scan", "CONFIG"]
