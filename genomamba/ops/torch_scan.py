"""Pure-PyTorch chunked selective scan: the fallback on every device.

Numerics: the recurrence x_t = a_t * x_{t-1} + b_t is evaluated with products of decays a_t in (0, 1]
and never as exp(-cumsum(log a)), which overflows for long chunks or large delta * |A|.

Layout: per-token tensors are held time-leading and cut into chunks, ``(n_chunks, chunk, b, d)``.
The sequence is cut into *blocks* (bounded memory) and each block into chunks of ``chunk`` tokens.
Within a block every chunk is scanned at once from a zero state (``chunk`` Python steps over
(n_chunks, b, d, n) slabs), the chunk carries are propagated (``n_chunks`` steps), and the chunks are
rescanned from their carries, emitting outputs as they go. The decays exp(delta * A) are rebuilt per
step from the (b, d, l) inputs rather than stored: every step works on a cache-sized slab, and no
(b, d, l, n) tensor is ever built — which is what makes this faster than a token-by-token loop over
precomputed (b, d, l, n) tensors, not only more parallel.

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
BLOCK_ELEMS = 1 << 23  # bounds l_block * b * d * n (the backward's stored block states: 32 MB in fp32)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _block_len(b: int, d: int, n: int, l: int, chunk: int) -> int:
    per_token = max(1, b * d * n)
    lb = max(chunk, (BLOCK_ELEMS // per_token) // chunk * chunk)
    return min(lb, max(chunk, math.ceil(l / chunk) * chunk))


def _to_time_leading(M: torch.Tensor, d: int) -> torch.Tensor:
    """B or C: (b, n, l) -> (l, b, 1, n); (b, g, n, l) -> (l, b, g, 1, n) (channel c reads group c // (d // g))."""
    if M.dim() == 3:
        return M.permute(2, 0, 1).unsqueeze(2)
    return M.permute(3, 0, 1, 2).unsqueeze(3)


def _pad_time(x: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(x, (0, pad)) if pad else x


class _Block:
    """One block's inputs, time-leading and cut into chunks: per-token tensors are (nc, chunk, b, d)
    and B/C are (nc, chunk, b, 1, n) or grouped (nc, chunk, b, g, 1, n). Padding uses delta = 0
    (decay 1, input 0), so padded steps leave the state unchanged and the final state stays exact.
    Decays exp(delta * A) are rebuilt per step, so no (l, b, d, n) tensor is ever formed."""

    def __init__(self, u, delta, A, B, C, chunk):
        b, d, lb = u.shape
        nc = math.ceil(lb / chunk)
        pad = nc * chunk - lb
        self.b, self.d, self.n, self.lb, self.nc, self.chunk = b, d, A.shape[1], lb, nc, chunk
        self.grouped = B.dim() == 4
        self.g = B.shape[1] if self.grouped else 1

        def cut(x):  # (L, ...) -> contiguous (nc, chunk, ...)
            return x.reshape(nc, chunk, *x.shape[1:])

        self.dl = cut(_pad_time(delta, pad).permute(2, 0, 1))  # (nc, chunk, b, d)
        self.ul = cut(_pad_time(u, pad).permute(2, 0, 1))
        self.dul = self.dl * self.ul
        self.Bl = cut(_to_time_leading(_pad_time(B, pad), d))
        self.Cl = cut(_to_time_leading(_pad_time(C, pad), d))
        self.A = A

    def decay(self, dl_step):
        """dl_step: (nc, b, d) -> exp(delta * A): (nc, b, d, n)."""
        return torch.exp(dl_step.unsqueeze(-1) * self.A)

    def grp(self, x):
        """(nc, b, d, ...) -> (nc, b, g, d // g, ...) so it broadcasts against grouped B/C."""
        return x.view(x.shape[0], self.b, self.g, self.d // self.g, *x.shape[3:]) if self.grouped else x

    def ungrp(self, x):
        return x.reshape(x.shape[0], self.b, self.d, *x.shape[4:]) if self.grouped else x

    def inp(self, j):
        """delta_t * u_t * B_t at chunk position j for every chunk: (nc, b, d, n)."""
        return self.ungrp(self.grp(self.dul[:, j]).unsqueeze(-1) * self.Bl[:, j])

    def dot_n(self, h, M):
        """Contract (nc, b, d, n) states with B_t or C_t over n -> (nc, b, d) (one batched matmul)."""
        if self.grouped:
            return torch.einsum("cbgkn,cbgn->cbgk", self.grp(h), M[:, :, :, 0]).reshape(h.shape[:3])
        return torch.einsum("cbdn,cbn->cbd", h, M[:, :, 0])

    def sum_d(self, h, w):
        """sum over the channels of a group of h * w: (nc, b, d, n), (nc, b, d) -> (nc, b, g, n)."""
        if self.grouped:
            return torch.einsum("cbgkn,cbgk->cbgn", self.grp(h), self.grp(w))
        return torch.einsum("cbdn,cbd->cbn", h, w).unsqueeze(2)

    def y_of(self, h, j):
        """<x_t, C_t> over n: (nc, b, d)."""
        return self.dot_n(h, self.Cl[:, j])

    def forward_states(self, x0, want_states=False):
        """Scan every chunk from zero, carry across chunks, rescan from the carries.

        Returns y (nc, chunk, b, d), the final state (b, d, n), and all states (nc, chunk, b, d, n)
        if ``want_states`` (backward needs them)."""
        nc, chunk = self.nc, self.chunk
        h = p = None
        for j in range(chunk):  # pass 1: chunk-local end states and total decays
            a = self.decay(self.dl[:, j])
            v = self.inp(j)
            h, p = (v, a) if h is None else (torch.addcmul(v, a, h), p * a)
        carry = torch.empty_like(h)
        s = x0
        for c in range(nc):  # products of decays only: stable for any chunk length
            carry[c] = s
            s = torch.addcmul(h[c], p[c], s)
        y = torch.empty(nc, chunk, self.b, self.d, dtype=h.dtype, device=h.device)
        X = torch.empty(nc, chunk, *h.shape[1:], dtype=h.dtype, device=h.device) if want_states else None
        h = carry
        for j in range(chunk):  # pass 2: true states, outputs
            h = torch.addcmul(self.inp(j), self.decay(self.dl[:, j]), h)
            y[:, j] = self.y_of(h, j)
            if X is not None:
                X[:, j] = h
        return y, s, X

    def backward(self, x0, gy, g_state):
        """gy: (nc, chunk, b, d); g_state: dL/d(final state). Returns the gradients in block layout and
        dL/dx0. With g_t = dL/dx_t: g_t = a_{t+1} g_{t+1} + C_t dy_t, run backwards in time."""
        nc, chunk, b, n = self.nc, self.chunk, self.b, self.n
        _, _, X = self.forward_states(x0, want_states=True)
        # decay that multiplies g_{t+1}: a at the next token (the first token of the next chunk at j = chunk - 1;
        # 1 past the end, where g_state enters)
        d_next_last = torch.cat([self.dl[1:, 0], torch.zeros_like(self.dl[:1, 0])])  # (nc, b, d)

        def e_of(j):
            return self.ungrp(self.Cl[:, j] * self.grp(gy[:, j]).unsqueeze(-1))

        h = q = None
        an = self.decay(d_next_last)
        for j in reversed(range(chunk)):  # pass 1 (reverse): chunk-local from zero
            e = e_of(j)
            h, q = (e, an) if h is None else (torch.addcmul(e, an, h), q * an)
            an = self.decay(self.dl[:, j])
        incoming = torch.empty_like(h)
        s = g_state
        for c in reversed(range(nc)):
            incoming[c] = s
            s = torch.addcmul(h[c], q[c], s)
        x_before = torch.cat([x0.unsqueeze(0), X[:-1, -1]])  # state entering each chunk
        gdl = torch.empty_like(self.dl)
        gul = torch.empty_like(self.ul)
        gB = torch.empty(nc, chunk, b, self.g, n, dtype=X.dtype, device=X.device)
        gC = torch.empty_like(gB)
        gA = torch.zeros_like(self.A)
        h = incoming
        an = self.decay(d_next_last)
        for j in reversed(range(chunk)):  # pass 2 (reverse): g_t and every gradient at t
            h = torch.addcmul(e_of(j), an, h)  # g_t
            a = self.decay(self.dl[:, j])
            xprev = X[:, j - 1] if j > 0 else x_before
            qa = (h * xprev).mul_(a)  # dL/d(delta_t * A)
            gb = self.dot_n(h, self.Bl[:, j])  # dL/d(delta_t * u_t): (nc, b, d)
            gdl[:, j] = torch.einsum("cbdn,dn->cbd", qa, self.A).addcmul_(gb, self.ul[:, j])
            gul[:, j] = gb * self.dl[:, j]
            gA += torch.einsum("cbdn,cbd->dn", qa, self.dl[:, j])
            gB[:, j] = self.sum_d(h, self.dul[:, j])
            gC[:, j] = self.sum_d(X[:, j], gy[:, j])
            an = a
        g_x0 = a[0] * h[0]
        return gul, gdl, gA, gB, gC, g_x0

    def to_bdl(self, x):
        """(nc, chunk, b, d) -> (b, d, lb)."""
        return x.reshape(self.nc * self.chunk, self.b, self.d).permute(1, 2, 0)[..., : self.lb]

    def bc_grad(self, g, like):
        """(nc, chunk, b, g, n) -> B/C layout (b, n, lb) or (b, g, n, lb)."""
        g = g.reshape(self.nc * self.chunk, self.b, self.g, self.n)[: self.lb]
        return g.permute(1, 2, 3, 0) if like.dim() == 4 else g[:, :, 0].permute(1, 2, 0)

    def from_bdl(self, x):
        pad = self.nc * self.chunk - self.lb
        return _pad_time(x, pad).permute(2, 0, 1).reshape(self.nc, self.chunk, self.b, self.d)


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, x0, chunk, lb):
        b, d, l = u.shape
        ys, starts = [], []
        s = x0
        for start in range(0, l, lb):
            stop = min(l, start + lb)
            starts.append(s)
            blk = _Block(u[..., start:stop], delta[..., start:stop], A, B[..., start:stop], C[..., start:stop], chunk)
            y, s, _ = blk.forward_states(s)
            ys.append(blk.to_bdl(y))
        y = torch.cat(ys, dim=-1) if ys else u.new_zeros(b, d, 0)
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts) if starts else x0[None])
        ctx.chunk, ctx.lb, ctx.nblocks = chunk, lb, len(starts)
        return y, s

    @staticmethod
    def backward(ctx, gy, gs):
        u, delta, A, B, C, starts = ctx.saved_tensors
        chunk, lb = ctx.chunk, ctx.lb
        l = u.shape[-1]
        gu, gdelta = torch.empty_like(u), torch.empty_like(delta)
        gA, gB, gC = torch.zeros_like(A), torch.empty_like(B), torch.empty_like(C)
        g_state = torch.zeros_like(starts[0]) if gs is None else gs.contiguous()
        if gy is None:
            gy = torch.zeros_like(u)
        for i in reversed(range(ctx.nblocks)):
            start = i * lb
            stop = min(l, start + lb)
            Bi, Ci = B[..., start:stop], C[..., start:stop]
            blk = _Block(u[..., start:stop], delta[..., start:stop], A, Bi, Ci, chunk)
            gul, gdl, gAi, gBi, gCi, g_state = blk.backward(starts[i], blk.from_bdl(gy[..., start:stop]), g_state)
            gu[..., start:stop] = blk.to_bdl(gul)
            gdelta[..., start:stop] = blk.to_bdl(gdl)
            gA += gAi
            gB[..., start:stop] = blk.bc_grad(gBi, Bi)
            gC[..., start:stop] = blk.bc_grad(gCi, Ci)
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
