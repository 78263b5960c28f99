"""Triton causal depthwise conv1d (width <= 4), forward and backward, with an initial conv state.

The forward reads x where it lies (l the unit-stride axis, any batch and channel strides) and the
initial state beside it. The backward is one kernel (``conv_backward_in_place``): it recomputes the
pre-activation where it needs it, reads x, the initial state, the output's and the final state's
gradients where they lie and writes dx in x's dtype (into any such layout, e.g. rows of the
training mixer's matrices) and the initial state's gradient. dW and dbias are per-(b, l-block)
partials summed on the host (fixed order: deterministic).

By default every load and store of the forward and the backward is a whole 8-token vector, and a
thread takes the values the taps shift in from its own registers (the 3 tokens before its vector
and, in the backward, the 3 after). ``GENOMAMBA_CONV_VEC=0`` selects the earlier kernels, which load
each shifted tile from memory (one element at a time, as the shifts leave them unaligned): a
one-kernel backward for calls without states, and for calls with states a two-kernel backward that
concatenates the initial state in front of x (xx, length l + w - 1) and runs the correlation the
other way, dxx[s] = sum_k w[k] * dpre[s - k], adding the final state's gradient to dxx's tail.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _conv_fwd_kernel(
    x_ptr,
    h0_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    d,
    l,
    s_xb,
    s_xd,
    s_ob,
    s_od,
    W: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BD: tl.constexpr,
    BL: tl.constexpr,
):
    # x read where it lies (l the unit-stride axis); positions before 0 come from h0 (b, d, W - 1)
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)
    offs_l = pid_l.to(tl.int64) * BL + tl.arange(0, BL)
    mask_d = offs_d < d
    acc = tl.zeros([BD, BL], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    xp = x_ptr + pid_b * s_xb + offs_d[:, None] * s_xd
    hp = h0_ptr + pid_b * d * (W - 1) + offs_d[:, None] * (W - 1)
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        src = offs_l + (k - (W - 1))
        xv = tl.load(xp + src[None, :], mask=mask_d[:, None] & ((src >= 0) & (src < l))[None, :], other=0.0)
        xv = xv.to(tl.float32)
        if HAS_H0 and k < W - 1:
            hm = mask_d[:, None] & ((src < 0) & (offs_l < l))[None, :]
            xv += tl.load(hp + (src + (W - 1))[None, :], mask=hm, other=0.0).to(tl.float32)
        acc += wk[:, None] * xv
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(
        out_ptr + pid_b * s_ob + offs_d[:, None] * s_od + offs_l[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=mask_d[:, None] & (offs_l < l)[None, :],
    )


@triton.jit
def _through_silu(g, xp, pos0, hi, w_ptr, b_ptr, offs_d, mask_d, W: tl.constexpr, HAS_BIAS: tl.constexpr):
    # g (BD, BL) times silu'(pre) at the tokens whose tap 0 reads x at pos0: pre = bias + sum_k
    # w[k] * x[pos0 + k], x read from the rows at xp and taken as zero outside [0, hi)
    pre = tl.zeros_like(g)
    if HAS_BIAS:
        pre += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(W):
        src = pos0 + k
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        xm = mask_d[:, None] & ((src >= 0) & (src < hi))[None, :]
        pre += wk[:, None] * tl.load(xp + src[None, :], mask=xm, other=0.0).to(tl.float32)
    sg = tl.sigmoid(pre)
    return g * sg * (1.0 + pre * (1.0 - sg))


@triton.jit
def _conv_dpre_kernel(
    xx_ptr,
    w_ptr,
    b_ptr,
    gout_ptr,
    dpre_ptr,
    dw_ptr,
    db_ptr,
    d,
    l,
    lx,
    nlb,
    s_gb,
    s_gd,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BD: tl.constexpr,
    BL: tl.constexpr,
):
    # gradient before the activation, and this l-block's share of dW and dbias
    pid_l = tl.program_id(0)  # l-blocks first: that grid axis takes more than 65,535 blocks
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)
    offs_l = pid_l * BL + tl.arange(0, BL)
    mask_d = offs_d < d
    m = mask_d[:, None] & (offs_l < l)[None, :]
    xp = xx_ptr + pid_b * d * lx + offs_d[:, None] * lx
    g = tl.load(gout_ptr + pid_b * s_gb + offs_d[:, None] * s_gd + offs_l[None, :], mask=m, other=0.0).to(
        tl.float32
    )
    if SILU:  # xx holds the W - 1 inputs before the block: tap k of token t reads xx[t + k]
        g = _through_silu(g, xp, offs_l, lx, w_ptr, b_ptr, offs_d, mask_d, W, HAS_BIAS)
    tl.store(dpre_ptr + pid_b * d * l + offs_d[:, None] * l + offs_l[None, :], g, mask=m)
    part = (pid_b * nlb + pid_l) * d + offs_d
    for k in tl.static_range(W):
        xk = tl.load(xp + (offs_l + k)[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(dw_ptr + part * W + k, tl.sum(g * xk, axis=1), mask=mask_d)
    tl.store(db_ptr + part, tl.sum(g, axis=1), mask=mask_d)


@triton.jit
def _conv_dx_kernel(dpre_ptr, w_ptr, dxx_ptr, d, l, lx, W: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr):
    pid_l = tl.program_id(0)  # l-blocks first: that grid axis takes more than 65,535 blocks
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)
    offs_s = pid_l * BL + tl.arange(0, BL)
    mask_d = offs_d < d
    gp = dpre_ptr + pid_b * d * l + offs_d[:, None] * l
    acc = tl.zeros([BD, BL], dtype=tl.float32)
    for k in tl.static_range(W):
        t = offs_s - k
        m = mask_d[:, None] & ((t >= 0) & (t < l))[None, :]
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        acc += wk[:, None] * tl.load(gp + t[None, :], mask=m, other=0.0)
    tl.store(
        dxx_ptr + pid_b * d * lx + offs_d[:, None] * lx + offs_s[None, :],
        acc,
        mask=mask_d[:, None] & (offs_s < lx)[None, :],
    )


@triton.jit
def _pick(w0, w1, w2, w3, k: tl.constexpr):
    # tap k's weights (k a compile-time constant)
    if k == 0:
        r = w0
    elif k == 1:
        r = w1
    elif k == 2:
        r = w2
    else:
        r = w3
    return r


@triton.jit
def _conv_bwd_in_place_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    gout_ptr,
    dx_ptr,
    dw_ptr,
    db_ptr,
    d,
    l,
    nlb,
    s_xb,
    s_xd,
    s_gb,
    s_gd,
    s_ob,
    s_od,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BD: tl.constexpr,
    BL: tl.constexpr,
):
    # one pass, no initial state: dx[s] = sum_j w[W-1-j] * dpre[s + j]. The pre-activations of the
    # W tokens s + j (j < W) are built from the 2W - 1 shifted x tiles, each read once; dpre at the
    # W - 1 positions past the block is recomputed here. x, dout and dx are read and written where
    # they lie.
    pid_l = tl.program_id(0)  # l-blocks first: that grid axis takes more than 65,535 blocks
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)
    offs_s = pid_l.to(tl.int64) * BL + tl.arange(0, BL)
    mask_d = offs_d < d
    xp = x_ptr + pid_b * s_xb + offs_d[:, None] * s_xd
    gp = gout_ptr + pid_b * s_gb + offs_d[:, None] * s_gd
    wp = w_ptr + offs_d * W
    w0 = tl.load(wp, mask=mask_d, other=0.0).to(tl.float32)
    w1 = w0
    w2 = w0
    w3 = w0
    if W > 1:
        w1 = tl.load(wp + 1, mask=mask_d, other=0.0).to(tl.float32)
    if W > 2:
        w2 = tl.load(wp + 2, mask=mask_d, other=0.0).to(tl.float32)
    if W > 3:
        w3 = tl.load(wp + 3, mask=mask_d, other=0.0).to(tl.float32)
    p0 = tl.zeros([BD, BL], dtype=tl.float32)  # pre-activation of token s + j, j = 0 .. W - 1
    if HAS_BIAS:
        p0 += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    p1 = p0
    p2 = p0
    p3 = p0
    x0 = tl.zeros([BD, BL], dtype=tl.float32)  # x[s - (W - 1) + k], k < W: dW's inputs
    x1 = x0
    x2 = x0
    x3 = x0
    for o in tl.static_range(2 * W - 1):  # x at s + o - (W - 1): tap o - j of token s + j
        if SILU or o < W:
            src = offs_s + (o - (W - 1))
            xm = mask_d[:, None] & ((src >= 0) & (src < l))[None, :]
            xv = tl.load(xp + src[None, :], mask=xm, other=0.0).to(tl.float32)
            if SILU:
                if o < W:
                    p0 += _pick(w0, w1, w2, w3, o)[:, None] * xv
                if W > 1:
                    if o >= 1:
                        if o < W + 1:
                            p1 += _pick(w0, w1, w2, w3, o - 1)[:, None] * xv
                if W > 2:
                    if o >= 2:
                        if o < W + 2:
                            p2 += _pick(w0, w1, w2, w3, o - 2)[:, None] * xv
                if W > 3:
                    if o >= 3:
                        p3 += _pick(w0, w1, w2, w3, o - 3)[:, None] * xv
            if o == 0:
                x0 = xv
            elif o == 1:
                x1 = xv
            elif o == 2:
                x2 = xv
            elif o == 3:
                x3 = xv
    dx = tl.zeros([BD, BL], dtype=tl.float32)
    for j in tl.static_range(W):
        t = offs_s + j
        g = tl.load(gp + t[None, :], mask=mask_d[:, None] & (t < l)[None, :], other=0.0).to(tl.float32)
        if SILU:
            pre = _pick(p0, p1, p2, p3, j)
            sg = tl.sigmoid(pre)
            g = g * sg * (1.0 + pre * (1.0 - sg))
        dx += _pick(w0, w1, w2, w3, W - 1 - j)[:, None] * g
        if j == 0:  # this block's share of dW and dbias: the tokens t = s of the block
            part = (pid_b * nlb + pid_l) * d + offs_d
            for k in tl.static_range(W):
                tl.store(dw_ptr + part * W + k, tl.sum(g * _pick(x0, x1, x2, x3, k), axis=1), mask=mask_d)
            tl.store(db_ptr + part, tl.sum(g, axis=1), mask=mask_d)
    tl.store(
        dx_ptr + pid_b * s_ob + offs_d[:, None] * s_od + offs_s[None, :],
        dx.to(dx_ptr.dtype.element_ty),
        mask=mask_d[:, None] & (offs_s < l)[None, :],
    )


@triton.jit
def _split8(t):
    # the 8 elements along t's last axis (t: (r, c, 8)) as 8 (r, c) tensors; the axis lies within a
    # thread, so this moves no data between threads
    r: tl.constexpr = t.shape[0]
    c: tl.constexpr = t.shape[1]
    ev, od = tl.split(tl.reshape(t, (r, c, 4, 2)))  # elements 0 2 4 6 and 1 3 5 7
    e04, e26 = tl.split(tl.reshape(ev, (r, c, 2, 2)))
    o15, o37 = tl.split(tl.reshape(od, (r, c, 2, 2)))
    a0, a4 = tl.split(e04)
    a2, a6 = tl.split(e26)
    a1, a5 = tl.split(o15)
    a3, a7 = tl.split(o37)
    return a0, a1, a2, a3, a4, a5, a6, a7


@triton.jit
def _join8(a0, a1, a2, a3, a4, a5, a6, a7):
    # the inverse of _split8
    r: tl.constexpr = a0.shape[0]
    c: tl.constexpr = a0.shape[1]
    ev = tl.reshape(tl.join(tl.join(a0, a4), tl.join(a2, a6)), (r, c, 4))
    od = tl.reshape(tl.join(tl.join(a1, a5), tl.join(a3, a7)), (r, c, 4))
    return tl.reshape(tl.join(ev, od), (r, c, 8))


@triton.jit
def _dpre(g, bias, q0, q1, q2, q3, xa, xb, xc, xd, SILU: tl.constexpr):
    # the gradient before the activation at one token: g through silu at pre = bias + q . (xa..xd)
    if SILU:
        pre = bias + q0 * xa + q1 * xb + q2 * xc + q3 * xd
        sg = tl.sigmoid(pre)
        g = g * sg * (1.0 + pre * (1.0 - sg))
    return g


@triton.jit
def _dot8(a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7):
    # sum over the block's rows of a . b (one value per channel)
    return tl.sum(a0 * b0 + a1 * b1 + a2 * b2 + a3 * b3 + a4 * b4 + a5 * b5 + a6 * b6 + a7 * b7, axis=1)


@triton.jit
def _conv_fwd_vec_kernel(
    x_ptr,
    h0_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    d,
    l,
    s_xb,
    s_xd,
    s_ob,
    s_od,
    W: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BD: tl.constexpr,
    BL: tl.constexpr,
):
    # _conv_fwd_kernel with every load and store a whole 8-token vector (the layout of
    # _conv_bwd_vec_kernel): a thread's tokens 8v .. 8v + 7 and the 3 before them are its registers
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    NV: tl.constexpr = BL // 8
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)
    mask_d = offs_d < d
    pos = pid_l.to(tl.int64) * BL + (tl.arange(0, NV)[:, None] * 8 + tl.arange(0, 8)[None, :])
    md = mask_d[:, None, None]
    xrow = x_ptr + pid_b * s_xb + offs_d[:, None, None] * s_xd
    q0, q1, q2, q3, bias = _taps4(w_ptr, b_ptr, offs_d, mask_d, W, HAS_BIAS, BD, NV)
    p = pos - 8
    prev = tl.load(xrow + p[None], mask=md & ((p >= 0) & (p < l))[None], other=0.0).to(tl.float32)
    if HAS_H0:  # the tokens -(W - 1) .. -1 from the initial state (b, d, W - 1)
        hrow = h0_ptr + pid_b * d * (W - 1) + offs_d[:, None, None] * (W - 1)
        hm = md & ((p < 0) & (p >= 1 - W))[None]
        prev += tl.load(hrow + (p + (W - 1))[None], mask=hm, other=0.0).to(tl.float32)
    _, _, _, _, _, xm3, xm2, xm1 = _split8(prev)
    x0, x1, x2, x3, x4, x5, x6, x7 = _split8(
        tl.load(xrow + pos[None], mask=md & (pos < l)[None], other=0.0).to(tl.float32))
    out = _join8(
        _act(bias + q0 * xm3 + q1 * xm2 + q2 * xm1 + q3 * x0, SILU),
        _act(bias + q0 * xm2 + q1 * xm1 + q2 * x0 + q3 * x1, SILU),
        _act(bias + q0 * xm1 + q1 * x0 + q2 * x1 + q3 * x2, SILU),
        _act(bias + q0 * x0 + q1 * x1 + q2 * x2 + q3 * x3, SILU),
        _act(bias + q0 * x1 + q1 * x2 + q2 * x3 + q3 * x4, SILU),
        _act(bias + q0 * x2 + q1 * x3 + q2 * x4 + q3 * x5, SILU),
        _act(bias + q0 * x3 + q1 * x4 + q2 * x5 + q3 * x6, SILU),
        _act(bias + q0 * x4 + q1 * x5 + q2 * x6 + q3 * x7, SILU),
    )
    tl.store(out_ptr + pid_b * s_ob + offs_d[:, None, None] * s_od + pos[None], out.to(out_ptr.dtype.element_ty),
             mask=md & (pos < l)[None])


@triton.jit
def _act(v, SILU: tl.constexpr):
    if SILU:
        v = v * tl.sigmoid(v)
    return v


@triton.jit
def _taps4(w_ptr, b_ptr, offs_d, mask_d, W: tl.constexpr, HAS_BIAS: tl.constexpr, BD: tl.constexpr,
           NV: tl.constexpr):
    # the weights padded to 4 taps in front with zeros (tap k reads x[t + k - 3]) and the bias, each
    # broadcast to (BD, NV)
    zero = tl.zeros([BD, NV], dtype=tl.float32)
    wp = w_ptr + offs_d * W
    q0 = zero + tl.load(wp + (W - 4), mask=mask_d & (W >= 4), other=0.0).to(tl.float32)[:, None]
    q1 = zero + tl.load(wp + (W - 3), mask=mask_d & (W >= 3), other=0.0).to(tl.float32)[:, None]
    q2 = zero + tl.load(wp + (W - 2), mask=mask_d & (W >= 2), other=0.0).to(tl.float32)[:, None]
    q3 = zero + tl.load(wp + (W - 1), mask=mask_d, other=0.0).to(tl.float32)[:, None]
    bias = zero
    if HAS_BIAS:
        bias += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    return q0, q1, q2, q3, bias


@triton.jit
def _conv_bwd_vec_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    gout_ptr,
    h0_ptr,
    dfinal_ptr,
    dx_ptr,
    dw_ptr,
    db_ptr,
    dh0_ptr,
    d,
    l,
    nlb,
    s_xb,
    s_xd,
    s_gb,
    s_gd,
    s_ob,
    s_od,
    W: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_DFINAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BD: tl.constexpr,
    BL: tl.constexpr,
):
    # The one-kernel backward with every load and store a whole 8-token vector: a thread holds the
    # tokens 8v .. 8v + 7 of a row plus the 3 before (from the vector before) and the 3 after (from
    # the vector after), so the shifted values the taps need are its own registers. Taps are padded
    # to 4 in front with zero weights: out[t] = act(bias + sum_k q[k] x[t + k - 3]); x before 0 is
    # the initial state h0 (b, d, W - 1) at x[p] = h0[p + W - 1], or 0. The final state is the last
    # W - 1 inputs: its gradient dfinal (b, d, W - 1) adds to dx there (to dh0 where l < W - 1).
    # With HAS_H0 the l-block 0 also writes dh0 (float32 (b, d, W - 1)).
    pid_l = tl.program_id(0)  # l-blocks first: that grid axis takes more than 65,535 blocks
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    NV: tl.constexpr = BL // 8
    offs_d = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)
    mask_d = offs_d < d
    pos = pid_l.to(tl.int64) * BL + (tl.arange(0, NV)[:, None] * 8 + tl.arange(0, 8)[None, :])  # (NV, 8)
    md = mask_d[:, None, None]
    xrow = x_ptr + pid_b * s_xb + offs_d[:, None, None] * s_xd
    grow = gout_ptr + pid_b * s_gb + offs_d[:, None, None] * s_gd
    q0, q1, q2, q3, bias = _taps4(w_ptr, b_ptr, offs_d, mask_d, W, HAS_BIAS, BD, NV)
    zero = tl.zeros([BD, NV], dtype=tl.float32)
    p = pos - 8
    prev = tl.load(xrow + p[None], mask=md & ((p >= 0) & (p < l))[None], other=0.0).to(tl.float32)
    srow = pid_b * d * (W - 1) + offs_d[:, None, None] * (W - 1)  # rows of the (b, d, W - 1) states
    if HAS_H0:
        if pid_l == 0:
            prev += tl.load(h0_ptr + srow + (p + (W - 1))[None], mask=md & ((p < 0) & (p >= 1 - W))[None],
                            other=0.0).to(tl.float32)
    _, _, _, _, _, xm3, xm2, xm1 = _split8(prev)
    x0, x1, x2, x3, x4, x5, x6, x7 = _split8(
        tl.load(xrow + pos[None], mask=md & (pos < l)[None], other=0.0).to(tl.float32))
    g0, g1, g2, g3, g4, g5, g6, g7 = _split8(
        tl.load(grow + pos[None], mask=md & (pos < l)[None], other=0.0).to(tl.float32))
    p = pos + 8
    g8, g9, g10, _, _, _, _, _ = _split8(tl.load(grow + p[None], mask=md & (p < l)[None], other=0.0).to(tl.float32))
    if SILU:
        x8, x9, x10, _, _, _, _, _ = _split8(
            tl.load(xrow + p[None], mask=md & (p < l)[None], other=0.0).to(tl.float32))
    else:
        x8 = zero
        x9 = zero
        x10 = zero
    # gradients before the activation at the tokens 8v + e, e = 0 .. 10
    d0 = _dpre(g0, bias, q0, q1, q2, q3, xm3, xm2, xm1, x0, SILU)
    d1 = _dpre(g1, bias, q0, q1, q2, q3, xm2, xm1, x0, x1, SILU)
    d2 = _dpre(g2, bias, q0, q1, q2, q3, xm1, x0, x1, x2, SILU)
    d3 = _dpre(g3, bias, q0, q1, q2, q3, x0, x1, x2, x3, SILU)
    d4 = _dpre(g4, bias, q0, q1, q2, q3, x1, x2, x3, x4, SILU)
    d5 = _dpre(g5, bias, q0, q1, q2, q3, x2, x3, x4, x5, SILU)
    d6 = _dpre(g6, bias, q0, q1, q2, q3, x3, x4, x5, x6, SILU)
    d7 = _dpre(g7, bias, q0, q1, q2, q3, x4, x5, x6, x7, SILU)
    d8 = _dpre(g8, bias, q0, q1, q2, q3, x5, x6, x7, x8, SILU)
    d9 = _dpre(g9, bias, q0, q1, q2, q3, x6, x7, x8, x9, SILU)
    d10 = _dpre(g10, bias, q0, q1, q2, q3, x7, x8, x9, x10, SILU)
    # dx[s] = sum_k q[k] dpre[s + 3 - k]
    dx = _join8(
        q3 * d0 + q2 * d1 + q1 * d2 + q0 * d3,
        q3 * d1 + q2 * d2 + q1 * d3 + q0 * d4,
        q3 * d2 + q2 * d3 + q1 * d4 + q0 * d5,
        q3 * d3 + q2 * d4 + q1 * d5 + q0 * d6,
        q3 * d4 + q2 * d5 + q1 * d6 + q0 * d7,
        q3 * d5 + q2 * d6 + q1 * d7 + q0 * d8,
        q3 * d6 + q2 * d7 + q1 * d8 + q0 * d9,
        q3 * d7 + q2 * d8 + q1 * d9 + q0 * d10,
    )
    if HAS_DFINAL:  # dfinal[i] is the gradient of x[l - (W - 1) + i] (in the last block or two)
        f = pos - (l - (W - 1))
        if (pid_l + 1) * BL > l - (W - 1):
            dx += tl.load(dfinal_ptr + srow + f[None], mask=md & ((f >= 0) & (f < W - 1) & (pos < l))[None],
                          other=0.0).to(tl.float32)
    tl.store(dx_ptr + pid_b * s_ob + offs_d[:, None, None] * s_od + pos[None], dx.to(dx_ptr.dtype.element_ty),
             mask=md & (pos < l)[None])
    if HAS_H0:
        if pid_l == 0:  # dh0 at the tokens -3 .. -1 (vector 0 of the block; those of -(W - 1) .. -1 kept)
            vrow = (tl.arange(0, NV) == 0)[None, :]
            srow2 = pid_b * d * (W - 1) + offs_d[:, None] * (W - 1) + tl.zeros([BD, NV], dtype=tl.int64)
            for j in tl.static_range(1, W):  # token -j, j < W
                hm = mask_d[:, None] & vrow
                if j == 1:
                    v = q0 * d2 + q1 * d1 + q2 * d0
                elif j == 2:
                    v = q0 * d1 + q1 * d0
                else:
                    v = q0 * d0
                if HAS_DFINAL:  # where l < W - 1, the final state reaches into the initial one
                    fi = tl.zeros([BD, NV], dtype=tl.int64) + ((W - 1 - j) - l)  # token -j's index in the final state
                    v += tl.load(dfinal_ptr + srow2 + fi, mask=hm & (fi >= 0), other=0.0).to(tl.float32)
                tl.store(dh0_ptr + srow2 + (W - 1 - j), v, mask=hm)
    # this block's share of dW (tap k of the padded four reads x[t + k - 3]) and dbias
    part = (pid_b * nlb + pid_l) * d + offs_d
    if W >= 4:
        tl.store(dw_ptr + part * W + (W - 4), _dot8(d0, d1, d2, d3, d4, d5, d6, d7,
                                                    xm3, xm2, xm1, x0, x1, x2, x3, x4), mask=mask_d)
    if W >= 3:
        tl.store(dw_ptr + part * W + (W - 3), _dot8(d0, d1, d2, d3, d4, d5, d6, d7,
                                                    xm2, xm1, x0, x1, x2, x3, x4, x5), mask=mask_d)
    if W >= 2:
        tl.store(dw_ptr + part * W + (W - 2), _dot8(d0, d1, d2, d3, d4, d5, d6, d7,
                                                    xm1, x0, x1, x2, x3, x4, x5, x6), mask=mask_d)
    tl.store(dw_ptr + part * W + (W - 1), _dot8(d0, d1, d2, d3, d4, d5, d6, d7,
                                                x0, x1, x2, x3, x4, x5, x6, x7), mask=mask_d)
    tl.store(db_ptr + part, tl.sum(d0 + d1 + d2 + d3 + d4 + d5 + d6 + d7, axis=1), mask=mask_d)


_BD, _BL = 16, 128
_BWD_WARPS = 8  # the shifted-tile backward holds 2W tiles a thread: eight warps keep them in registers
_VEC_WARPS = 4  # the 8-token-vector backward: two vectors a thread
# block shape of the 8-token-vector kernels (channels, tokens; powers of two, tokens >= 64) and the
# forward's warps: 8 x 256 (one row of 32 vectors a warp) timed fastest of twelve shapes for both
# kernels on an H200, 15-45 % below 16 x 128 in the backward (same dx and output bit for bit)
_VEC_BD, _VEC_BL, _VEC_FWD_WARPS = 8, 256, 4
# The one-node training mixer takes the conv's gradient from the one-kernel backward
# (``conv_backward_in_place``; calls with states only in the vector build);
# GENOMAMBA_CONV_BWD_IN_PLACE=0 gives it the two-kernel one
CONFIG = {"bwd_in_place": os.environ.get("GENOMAMBA_CONV_BWD_IN_PLACE", "1").strip() != "0",
          # the forward and the one-kernel backward with 8-token vectors (_conv_fwd_vec_kernel,
          # _conv_bwd_vec_kernel); 0: the kernels loading shifted tiles
          "vec": os.environ.get("GENOMAMBA_CONV_VEC", "1").strip() != "0"}


def conv_forward(x, weight, bias, h0, silu, out):
    """out (b, d, l; l the unit-stride axis, any batch and channel strides) = the causal conv of x (read
    where it lies) with weight (d, W) contiguous and h0 (b, d, W - 1) contiguous or None."""
    b, d, l = x.shape
    W = weight.shape[1]
    if l > 0:
        dummy = torch.empty(1, device=x.device, dtype=torch.float32)
        # l-blocks on the first grid axis: it alone takes more than 65,535 blocks (l > 8M)
        vec = CONFIG["vec"]
        kernel = _conv_fwd_vec_kernel if vec else _conv_fwd_kernel
        bd, bl, nw = (_VEC_BD, _VEC_BL, _VEC_FWD_WARPS) if vec else (_BD, _BL, 4)
        kernel[(triton.cdiv(l, bl), triton.cdiv(d, bd), b)](
            x,
            h0 if h0 is not None else dummy,
            weight,
            bias if bias is not None else dummy,
            out,
            d,
            l,
            x.stride(0),
            x.stride(1),
            out.stride(0),
            out.stride(1),
            W=W,
            HAS_H0=h0 is not None,
            HAS_BIAS=bias is not None,
            SILU=silu,
            BD=bd,
            BL=bl,
            num_warps=nw,
        )
    return out


def conv_backward(x, prev, wc, bias, silu, dout, dfinal=None):
    """Gradients of :func:`conv_forward` (x, its initial state ``prev`` or None, weight ``wc``, bias)
    for ``dout`` (b, d, l; l the unit-stride axis, any batch and channel strides) and the final state's
    ``dfinal`` (or None): dxx (b, d, W - 1 + l) float32 (the initial state's gradient first), dW and
    dbias in float32."""
    W = wc.shape[1]
    # the input with its initial state in front (length l + W - 1): the backward kernels read that
    xx = torch.cat([prev if prev is not None else x.new_zeros((*x.shape[:2], W - 1)), x], dim=-1)
    b, d, lx = xx.shape
    l = x.shape[-1]
    dev = xx.device
    dummy = torch.empty(1, device=dev, dtype=torch.float32)
    nlb = max(1, triton.cdiv(l, _BL))
    run = l > 0 and dout is not None
    # the kernels write every element of these (no zero fill) when they run
    alloc = torch.empty if run else torch.zeros
    dpre = alloc((b, d, l), device=dev, dtype=torch.float32)
    dw_p = alloc((b, nlb, d, W), device=dev, dtype=torch.float32)
    db_p = alloc((b, nlb, d), device=dev, dtype=torch.float32)
    dxx = alloc((b, d, lx), device=dev, dtype=torch.float32)
    if run:
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        _conv_dpre_kernel[(nlb, triton.cdiv(d, _BD), b)](
            xx,
            wc,
            bias if bias is not None else dummy,
            dout,
            dpre,
            dw_p,
            db_p,
            d,
            l,
            lx,
            nlb,
            dout.stride(0),
            dout.stride(1),
            W=W,
            HAS_BIAS=bias is not None,
            SILU=silu,
            BD=_BD,
            BL=_BL,
        )
        _conv_dx_kernel[(triton.cdiv(lx, _BL), triton.cdiv(d, _BD), b)](
            dpre, wc, dxx, d, l, lx, W=W, BD=_BD, BL=_BL
        )
    if dfinal is not None:
        dxx[..., l:] += dfinal.float()
    return dxx, dw_p.sum((0, 1)), db_p.sum((0, 1))


def conv_backward_in_place(x, wc, bias, silu, dout, dx, h0=None, dfinal=None):
    """Gradients of :func:`conv_forward` in one kernel: x, dout and ``dx`` (written, in its own dtype)
    are (b, d, l) with l the unit-stride axis and any batch and channel strides; ``h0`` (the initial
    state, x's dtype) and ``dfinal`` (the final state's gradient) are contiguous (b, d, W - 1) or None.
    Returns dW and dbias in float32, and dh0 in float32 (None without ``h0``). With states, only the
    vector build (``CONFIG["vec"]``) runs here."""
    b, d, l = x.shape
    W = wc.shape[1]
    vec = CONFIG["vec"]
    states = W > 1 and (h0 is not None or dfinal is not None)
    if states and not vec:
        raise ValueError("conv_backward_in_place: initial or final states need the vector build (GENOMAMBA_CONV_VEC=1)")
    bd, bl = (_VEC_BD, _VEC_BL) if vec else (_BD, _BL)
    nlb = max(1, triton.cdiv(l, bl))
    dev = x.device
    alloc = torch.empty if l > 0 else torch.zeros  # the kernel writes every partial when it runs
    dw_p = alloc((b, nlb, d, W), device=dev, dtype=torch.float32)
    db_p = alloc((b, nlb, d), device=dev, dtype=torch.float32)
    has_h0 = h0 is not None and W > 1
    dh0 = None
    if has_h0:
        dh0 = torch.empty((b, d, W - 1), device=dev, dtype=torch.float32) if l > 0 else (
            dfinal.float().clone() if dfinal is not None else torch.zeros((b, d, W - 1), device=dev))
    if l > 0:
        dummy = torch.empty(1, device=dev, dtype=torch.float32)
        if vec:
            _conv_bwd_vec_kernel[(nlb, triton.cdiv(d, bd), b)](
                x, wc, bias if bias is not None else dummy, dout,
                h0 if has_h0 else dummy, dfinal if dfinal is not None and W > 1 else dummy,
                dx, dw_p, db_p, dh0 if has_h0 else dummy,
                d, l, nlb, x.stride(0), x.stride(1), dout.stride(0), dout.stride(1), dx.stride(0), dx.stride(1),
                W=W, HAS_H0=has_h0, HAS_DFINAL=dfinal is not None and W > 1, HAS_BIAS=bias is not None,
                SILU=silu, BD=bd, BL=bl, num_warps=_VEC_WARPS,
            )
        else:
            _conv_bwd_in_place_kernel[(nlb, triton.cdiv(d, _BD), b)](
                x, wc, bias if bias is not None else dummy, dout, dx, dw_p, db_p,
                d, l, nlb, x.stride(0), x.stride(1), dout.stride(0), dout.stride(1), dx.stride(0), dx.stride(1),
                W=W, HAS_BIAS=bias is not None, SILU=silu, BD=_BD, BL=_BL, num_warps=_BWD_WARPS,
            )
    return dw_p.sum((0, 1)), db_p.sum((0, 1)), dh0


class _Conv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, h0, silu):
        b, d, l = x.shape
        W = weight.shape[1]
        if x.stride(-1) != 1:  # (a one-token view keeps any stride along l, even a contiguous one)
            x = torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)
        prev = h0.to(x.dtype).contiguous() if h0 is not None and W > 1 else None
        wc = weight.contiguous()
        out = conv_forward(x, wc, bias, prev, silu, torch.empty((b, d, l), device=x.device, dtype=x.dtype))
        # the final state: the last W - 1 inputs, reaching into the initial state when l < W - 1
        tail = x[..., max(0, l - (W - 1)):]
        if tail.shape[-1] < W - 1:
            lead = prev if prev is not None else x.new_zeros((b, d, W - 1))
            tail = torch.cat([lead, tail], dim=-1)[..., tail.shape[-1]:]
        ctx.save_for_backward(x, prev, wc, bias)
        ctx.silu, ctx.h0_dtype = silu, (h0.dtype if h0 is not None else None)
        ctx.w_dtype = weight.dtype
        return out, tail.clone(memory_format=torch.contiguous_format)

    @staticmethod
    def backward(ctx, dout, dfinal):
        x, prev, wc, bias = ctx.saved_tensors
        W = wc.shape[1]
        if CONFIG["vec"]:  # one kernel, dx in x's dtype
            if dout.stride(-1) != 1:
                dout = dout.contiguous()
            dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            dw, db, dh0 = conv_backward_in_place(x, wc, bias, ctx.silu, dout, dx, prev,
                                                 None if dfinal is None else dfinal.contiguous())
            if ctx.h0_dtype is not None:
                dh0 = (torch.zeros((*x.shape[:2], W - 1), device=x.device) if dh0 is None else dh0).to(ctx.h0_dtype)
            return dx, dw.to(ctx.w_dtype), db.to(bias.dtype) if bias is not None else None, dh0, None
        dxx, dw, db = conv_backward(x, prev, wc, bias, ctx.silu, dout, dfinal)
        dx = dxx[..., W - 1 :].to(x.dtype)
        dh0 = dxx[..., : W - 1].to(ctx.h0_dtype) if ctx.h0_dtype is not None else None
        return dx, dw.to(ctx.w_dtype), db.to(bias.dtype) if bias is not None else None, dh0, None


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None, return_final_state=False):
    """Arguments as :func:`genomamba.ops.causal_conv1d` (validated there)."""
    out, final = _Conv1dFn.apply(x, weight, bias, initial_state, activation == "silu")
    return (out, final) if return_final_state else out
