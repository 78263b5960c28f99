"""Pure-PyTorch chunked selective scan: the fallback on every device.

Numerics: the recurrence x_t = a_t * x_{t-1} + b_t is evaluated as products of decays a_t in (0, 1]
and never as exp(-cumsum(log a)), which overflows for long chunks or large delta * |A|.

Layout: the sequence is cut into *blocks* (bounded memory: at most ~``BLOCK_ELEMS`` elements of
(b, d, l_block, n) are alive at once) and each block into *chunks* of ``DEFAULT_CHUNK`` tokens. Within a
block, all chunks are scanned together one position at a time (``chunk`` Python steps over
(b, d, n_chunks, n) tensors), then chunk carries are propagated (``n_chunks`` steps over (b, d, n)).

Autograd: forward keeps only the inputs and the (b, d, n) state at each block boundary. Backward
recomputes one block at a time, last to first, and differentiates it locally, passing the gradient of
the block's initial state to the block before it — so training memory is O(b·d·l) + one block, never
O(b·d·l·n). That is what lets l = 2^20 run on a 24 GB machine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 64
BLOCK_ELEMS = 1 << 23  # elements of one (b, d, l_block, n) intermediate (32 MB in fp32)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _block_len(b: int, d: int, n: int, l: int, chunk: int) -> int:
    per_token = max(1, b * d * n)
    lb = max(chunk, (BLOCK_ELEMS // per_token) // chunk * chunk)
    return min(lb, max(chunk, math.ceil(l / chunk) * chunk))


def _expand_bc(M: torch.Tensor, d: int) -> torch.Tensor:
    """(b, n, l) -> (b, 1, l, n); (b, g, n, l) -> (b, d, l, n) (channel c uses group c // (d // g))."""
    if M.dim() == 3:
        return M.transpose(1, 2).unsqueeze(1)
    return M.repeat_interleave(d // M.shape[1], dim=1).transpose(2, 3)


def _scan_block(u, delta, A, B, C, x0, chunk):
    """Core scan of one block, differentiable by autograd.

    u, delta: (b, d, lb); A: (d, n); B, C: (b, n, lb) or (b, g, n, lb); x0: (b, d, n).
    Returns y (b, d, lb) without the D / z terms, and the state after the block (b, d, n).
    """
    b, d, lb = u.shape
    n = A.shape[1]
    nc = math.ceil(lb / chunk)
    pad = nc * chunk - lb
    dA = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (b, d, lb, n)
    dBu = (delta * u).unsqueeze(-1) * _expand_bc(B, d)  # (b, d, lb, n)
    if pad:
        # decay 1, input 0: padded steps leave the state unchanged, so the block's final state is exact
        dA = F.pad(dA, (0, 0, 0, pad), value=1.0)
        dBu = F.pad(dBu, (0, 0, 0, pad), value=0.0)
    dA = dA.view(b, d, nc, chunk, n)
    dBu = dBu.view(b, d, nc, chunk, n)
    # 1) every chunk scanned from a zero state, all chunks at once
    h = dBu[:, :, :, 0]
    p = dA[:, :, :, 0]
    hs, ps = [h], [p]
    for t in range(1, chunk):
        a = dA[:, :, :, t]
        h = a * h + dBu[:, :, :, t]  # (b, d, nc, n)
        p = p * a
        hs.append(h)
        ps.append(p)
    H = torch.stack(hs, dim=3)  # (b, d, nc, chunk, n)
    P = torch.stack(ps, dim=3)  # cumulative decay from the chunk start
    # 2) carry the true state across chunk boundaries
    s = x0
    carries = []
    for c in range(nc):
        carries.append(s)
        s = P[:, :, c, -1] * s + H[:, :, c, -1]
    carry = torch.stack(carries, dim=2)  # (b, d, nc, n)
    X = H + P * carry.unsqueeze(3)  # (b, d, nc, chunk, n)
    X = X.view(b, d, nc * chunk, n)[:, :, :lb]
    y = (X * _expand_bc(C, d)).sum(-1)  # (b, d, lb)
    return y, s


def _slice_bc(M, start, stop):
    return M[..., start:stop]


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, x0, chunk, lb):
        b, d, l = u.shape
        ys, starts = [], []
        s = x0
        for start in range(0, l, lb):
            stop = min(l, start + lb)
            starts.append(s)
            y, s = _scan_block(u[..., start:stop], delta[..., start:stop], A, _slice_bc(B, start, stop),
                               _slice_bc(C, start, stop), s, chunk)
            ys.append(y)
        y = torch.cat(ys, dim=-1) if ys else u.new_zeros(b, d, 0)
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts) if starts else x0[None])
        ctx.chunk, ctx.lb = chunk, lb
        return y, s

    @staticmethod
    def backward(ctx, gy, gs):
        u, delta, A, B, C, starts = ctx.saved_tensors
        chunk, lb = ctx.chunk, ctx.lb
        l = u.shape[-1]
        gu, gdelta = torch.zeros_like(u), torch.zeros_like(delta)
        gA, gB, gC = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
        g_state = torch.zeros_like(starts[0]) if gs is None else gs
        if gy is None:
            gy = torch.zeros_like(u)
        block_starts = list(range(0, l, lb))
        for i in reversed(range(len(block_starts))):
            start = block_starts[i]
            stop = min(l, start + lb)
            with torch.enable_grad():
                ins = [
                    u[..., start:stop].detach().requires_grad_(),
                    delta[..., start:stop].detach().requires_grad_(),
                    A.detach().requires_grad_(),
                    _slice_bc(B, start, stop).detach().requires_grad_(),
                    _slice_bc(C, start, stop).detach().requires_grad_(),
                    starts[i].detach().requires_grad_(),
                ]
                y, s = _scan_block(*ins, chunk)
                grads = torch.autograd.grad((y, s), ins, (gy[..., start:stop], g_state), allow_unused=True)
            g = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(ins, grads)]
            gu[..., start:stop] = g[0]
            gdelta[..., start:stop] = g[1]
            gA += g[2]
            gB[..., start:stop] = g[3]
            gC[..., start:stop] = g[4]
            g_state = g[5]
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
