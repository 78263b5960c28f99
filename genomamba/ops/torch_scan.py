"""Pure-PyTorch chunked selective scan: the fallback on every device.

Numerics: the recurrence x_t = a_t * x_{t-1} + b_t is evaluated with products of decays a_t in (0, 1]
and never as exp(-cumsum(log a)), which overflows for long chunks or large delta * |A|.

Layout: per-token tensors are held time-leading, ``(l, b, d, n)``, so that one time step is one
contiguous slab and shifting or reversing time is a cheap slice. The sequence is cut into *blocks*
(bounded memory: at most ~``BLOCK_ELEMS`` elements of (l_block, b, d, n) are alive at once) and each
block into *chunks* of ``chunk`` tokens. Within a block every chunk is scanned at once from a zero
state (``chunk`` Python steps), the chunk carries are propagated (``n_chunks`` steps) and folded in
with the cumulative decays.

Backward is written out by hand rather than taped: with g_t = dL/dx_t,
    g_t = a_{t+1} g_{t+1} + C_t dy_t          (the same scan, run backwards in time)
    dL/db_t = g_t,   dL/da_t = g_t x_{t-1},   dL/dx_{-1} = a_0 g_0,
so forward keeps only the inputs and the (b, d, n) state at each block boundary, and backward
recomputes one block at a time, last to first. Training memory is O(b·d·l) plus one block — never
O(b·d·l·n); that is what lets l = 2^20 run on a 24 GB machine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 64
BLOCK_ELEMS = 1 << 23  # elements of one (l_block, b, d, n) intermediate (32 MB in fp32)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _block_len(b: int, d: int, n: int, l: int, chunk: int) -> int:
    per_token = max(1, b * d * n)
    lb = max(chunk, (BLOCK_ELEMS // per_token) // chunk * chunk)
    return min(lb, max(chunk, math.ceil(l / chunk) * chunk))


def _linear_scan(a, v, x0, chunk):
    """x_t = a_t * x_{t-1} + v_t over the leading (time) dim, from x_{-1} = x0.

    a, v: (L, b, d, n) with L a multiple of ``chunk``; x0: (b, d, n). Returns all states X (L, b, d, n)
    (written into a new tensor) and the last state. No autograd: callers differentiate by hand.
    """
    L = a.shape[0]
    nc = L // chunk
    av = a.view(nc, chunk, *a.shape[1:])
    H = v.clone().view(nc, chunk, *v.shape[1:])  # every chunk scanned from a zero state
    for j in range(1, chunk):
        H[:, j].addcmul_(av[:, j], H[:, j - 1])
    P = av.cumprod(1)  # decay from each chunk's start, products only (never exp of a cumsum)
    carry = torch.empty_like(x0).expand(nc, *x0.shape).contiguous()
    s = x0
    for c in range(nc):
        carry[c] = s
        s = torch.addcmul(H[c, -1], P[c, -1], s)
    H.addcmul_(P, carry.unsqueeze(1))
    return H.view(L, *v.shape[1:]), s


def _to_time_leading(M: torch.Tensor, d: int) -> torch.Tensor:
    """B or C: (b, n, l) -> (l, b, 1, n); (b, g, n, l) -> (l, b, d, n) (channel c reads group c // (d // g))."""
    if M.dim() == 3:
        return M.permute(2, 0, 1).unsqueeze(2)
    return M.repeat_interleave(d // M.shape[1], dim=1).permute(3, 0, 1, 2)


def _reduce_to(M_like: torch.Tensor, g_full: torch.Tensor) -> torch.Tensor:
    """Sum a (l, b, d, n) gradient back to the layout of B/C: (b, n, l) or (b, g, n, l)."""
    if M_like.dim() == 3:
        return g_full.sum(2).permute(1, 2, 0)
    b, g, n, l = M_like.shape
    L = g_full.shape[0]
    return g_full.view(L, b, g, -1, n).sum(3).permute(1, 2, 3, 0)


def _pad_time(x: torch.Tensor, pad: int, value: float = 0.0) -> torch.Tensor:
    return F.pad(x, (0, pad), value=value) if pad else x


def _block_tensors(u, delta, A, B, C, chunk):
    """Time-leading, chunk-padded block inputs. Padding uses delta = 0 (decay 1, input 0), so the
    padded steps leave the state unchanged and the block's final state stays exact."""
    lb = u.shape[-1]
    pad = math.ceil(lb / chunk) * chunk - lb
    dl = _pad_time(delta, pad).permute(2, 0, 1)  # (L, b, d)
    ul = _pad_time(u, pad).permute(2, 0, 1)
    Bl = _to_time_leading(_pad_time(B, pad), A.shape[0])  # (L, b, 1|d, n)
    Cl = _to_time_leading(_pad_time(C, pad), A.shape[0])
    a = torch.exp(dl.unsqueeze(-1) * A)  # (L, b, d, n)
    v = (dl * ul).unsqueeze(-1) * Bl
    return dl, ul, Bl, Cl, a, v


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, x0, chunk, lb):
        b, d, l = u.shape
        ys, starts = [], []
        s = x0
        for start in range(0, l, lb):
            stop = min(l, start + lb)
            starts.append(s)
            _, _, _, Cl, a, v = _block_tensors(u[..., start:stop], delta[..., start:stop], A, B[..., start:stop],
                                               C[..., start:stop], chunk)
            X, s = _linear_scan(a, v, s, chunk)
            y = torch.einsum("lbdn,lbdn->bdl", X, Cl.expand_as(X)) if Cl.shape[2] != 1 else \
                torch.einsum("lbdn,lbn->bdl", X, Cl[:, :, 0])
            ys.append(y[..., : stop - start])
        y = torch.cat(ys, dim=-1) if ys else u.new_zeros(b, d, 0)
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts) if starts else x0[None])
        ctx.chunk, ctx.lb, ctx.nblocks = chunk, lb, len(starts)
        return y, s

    @staticmethod
    def backward(ctx, gy, gs):
        u, delta, A, B, C, starts = ctx.saved_tensors
        chunk, lb = ctx.chunk, ctx.lb
        b, d, l = u.shape
        gu, gdelta = torch.empty_like(u), torch.empty_like(delta)
        gA, gB, gC = torch.zeros_like(A), torch.empty_like(B), torch.empty_like(C)
        g_state = torch.zeros_like(starts[0]) if gs is None else gs.contiguous()
        if gy is None:
            gy = torch.zeros_like(u)
        for i in reversed(range(ctx.nblocks)):
            start = i * lb
            stop = min(l, start + lb)
            lbi = stop - start
            Bi, Ci = B[..., start:stop], C[..., start:stop]
            dl, ul, Bl, Cl, a, v = _block_tensors(u[..., start:stop], delta[..., start:stop], A, Bi, Ci, chunk)
            L = a.shape[0]
            X, _ = _linear_scan(a, v, starts[i], chunk)
            gyl = _pad_time(gy[..., start:stop], L - lbi).permute(2, 0, 1)  # (L, b, d)
            e = Cl * gyl.unsqueeze(-1)  # direct contribution of y_t to dL/dx_t
            a_next = torch.cat([a[1:], torch.ones_like(a[:1])])
            G, _ = _linear_scan(a_next.flip(0), e.flip(0), g_state, chunk)
            G = G.flip(0)  # G_t = dL/dx_t
            g_state = a[0] * G[0]  # dL/d(state entering this block)
            Xprev = torch.cat([starts[i].unsqueeze(0), X[:-1]])
            q = G * Xprev * a  # dL/d(delta_t * A)
            GB = (G * Bl).sum(-1)  # (L, b, d): dL/d(delta_t * u_t)
            gdelta[..., start:stop] = ((q * A).sum(-1) + GB * ul).permute(1, 2, 0)[..., :lbi]
            gu[..., start:stop] = (GB * dl).permute(1, 2, 0)[..., :lbi]
            gA += torch.einsum("lbdn,lbd->dn", q, dl)
            gB[..., start:stop] = _reduce_to(Bi, G * (dl * ul).unsqueeze(-1))[..., :lbi]
            gC[..., start:stop] = _reduce_to(Ci, X * gyl.unsqueeze(-1))[..., :lbi]
        return gu, gdelta, gA, gB, gC, g_state, None, None


def selective_scan_chunked(
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
    chunk: int = DEFAULT_CHUNK,
):
    """Chunked selective scan with bounded memory; same contract as ``genomamba.ops.selective_scan``.

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D, delta_bias: (d,);
    initial_state: (b, d, n). Returns out (b, d, l) in u's dtype, or (out, final_state (b, d, n)).
    """
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    b, d, l = u.shape
    n = A.shape[1]
    uc, dc = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        dc = dc + delta_bias.to(ct)[:, None]
    if delta_softplus:
        dc = F.softplus(dc)
    x0 = u.new_zeros(b, d, n, dtype=ct) if initial_state is None else initial_state.to(ct)
    lb = _block_len(b, d, n, l, chunk)
    y, final = _ChunkedScan.apply(uc, dc, A.to(ct), B.to(ct), C.to(ct), x0, chunk, lb)
    out = y if D is None else y + uc * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, final) if return_final_state else out
