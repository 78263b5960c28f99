"""The Mamba mixer's training step from in_proj to out_proj as one autograd function.

Layout: the tokens of all batch rows side by side. in_proj writes xz as one (2 d_inner, b * l) matrix,
and every tensor after it keeps that layout (channels as rows, each batch row's tokens contiguous
inside a row): the conv output, x_proj's output (dt_low, B, C), delta, and their gradients. The conv
and scan kernels read a (b, d, l) view of such a matrix (strides (l, b * l, 1)), so every projection
and every weight gradient is one GEMM over all b * l tokens: no per-batch-row products summed
afterwards, no transposed copies, no concatenation of dx and dz in the backward.

Saved for the backward: the mixer's input, xz, x_proj's output and the scan's own state checkpoints.
The conv output and delta are recomputed in the backward (one conv and one small GEMM) unless
``keep`` (then they are saved too: 2 d_inner values more per token; the layer asks for it when it
rebuilds nothing, ``rebuild_inputs=False``), and the scan output (out_proj's weight gradient needs
it) comes back from the scan backward, which replays the forward anyway. With ``lean``, xz is not
kept either: the backward runs in_proj again on the mixer's input (one GEMM), so a layer keeps
x_proj's small output, the scan's checkpoints and what the block keeps (its residual stream, from
which it rebuilds the mixer's input).

Under autocast the products run in the autocast dtype (the four projection weights are cast once, in
the forward, and those casts kept for the backward) and the SSM parameters (A, D, delta bias, conv
weight and bias) stay as they are, as in the per-op path; gradients come back in each input's dtype.
The scan writes its output straight into the (d_inner, b * l) rows out_proj reads.

:class:`Kernels` names the four primitives the function needs (conv forward into a given layout,
conv backward, scan forward keeping what its backward needs, scan backward). On CUDA they are the
Triton conv kernels and the CUDA scan kernels, called directly; elsewhere (and as the reference twin
in tests) they are the dispatched ops, with the backward recomputed under autograd.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple, Optional

import torch

from genomamba.ops.backend import Call


class Kernels(NamedTuple):
    name: str
    conv_forward: object  # (x, weight, bias, h0, out) -> None: silu(conv(x)) from initial state h0, into out
    # (x, weight, bias, h0, dout, dfinal, dx_out) -> (dx, dweight, dbias, dh0); dx may be written into
    # dx_out (then returned as dx) or be a new tensor
    conv_backward: object
    # (u, delta, A, B, C, D, z, delta_bias, h0, out=None) -> (out, final state, saved); out may be written
    # into the given (b, d, l) view (then returned as out) or be a new tensor
    scan_forward: object
    # (saved, u, delta, A, B, C, D, z, delta_bias, h0, dout, dfinal, want_out=True, into=(du, ddelta, dz,
    # out)) -> 9 gradients and the forward's out again (b, d, l); du, ddelta, dz and out may be written
    # into the given views (then returned as the results) or be new tensors
    scan_backward: object


def _leaf(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().requires_grad_(True)


def _grad(outputs, grad_outputs, leaves):
    """autograd.grad of ``outputs`` (those with a gradient given) for the present ``leaves``, None
    for the absent ones."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None]
    wanted = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
    out = []
    for t in leaves:
        g = None if t is None else next(grads)
        out.append(torch.zeros_like(t) if t is not None and g is None else g)
    return tuple(out)


def _generic_conv_forward(x, weight, bias, h0, out):
    from genomamba.ops import causal_conv1d

    with torch.no_grad():
        out.copy_(causal_conv1d(x, weight, bias, initial_state=h0, activation="silu"))


def _generic_conv_backward(x, weight, bias, h0, dout, dfinal, dx_out=None):
    from genomamba.ops import causal_conv1d

    leaves = [_leaf(x), _leaf(weight), _leaf(bias), _leaf(h0)]
    with torch.enable_grad():
        out, final = causal_conv1d(*leaves[:3], initial_state=leaves[3], activation="silu", return_final_state=True)
        return _grad([out, final], [dout, dfinal], leaves)


def _generic_scan_forward(u, delta, A, B, C, D, z, delta_bias, h0, out=None):
    from genomamba.ops import selective_scan

    with torch.no_grad():
        y, final = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True,
                                  initial_state=h0, return_final_state=True)
    return y, final, None


def _generic_scan_backward(saved, u, delta, A, B, C, D, z, delta_bias, h0, dout, dfinal, want_out=False,
                           into=None):
    from genomamba.ops import selective_scan

    leaves = [_leaf(t) for t in (u, delta, A, B, C, D, z, delta_bias, h0)]
    with torch.enable_grad():
        out, final = selective_scan(*leaves[:6], z=leaves[6], delta_bias=leaves[7], delta_softplus=True,
                                    initial_state=leaves[8], return_final_state=True)
        return _grad([out, final], [dout, dfinal], leaves) + ((out.detach() if want_out else None),)


GENERIC = Kernels("generic", _generic_conv_forward, _generic_conv_backward, _generic_scan_forward,
                  _generic_scan_backward)


def triton_conv_pair():
    """The Triton conv kernels as :class:`Kernels` takes them (forward into any (b, d, l) layout with l
    the unit-stride axis; backward for a gradient in any such layout). The gradient comes from one
    kernel that writes dx straight into ``dx_out`` (``GENOMAMBA_CONV_BWD_IN_PLACE=0``: from the
    two-kernel backward; calls with states take it there too under ``GENOMAMBA_CONV_VEC=0``)."""
    from genomamba.ops.triton import conv1d

    def conv_fwd(x, weight, bias, h0, out):
        conv1d.conv_forward(x, weight.contiguous(), bias, None if h0 is None else h0.contiguous(), True, out)

    def conv_bwd(x, weight, bias, h0, dout, dfinal, dx_out=None):
        w = weight.shape[1]
        states = h0 is not None or dfinal is not None
        if conv1d.CONFIG["bwd_in_place"] and dx_out is not None and (conv1d.CONFIG["vec"] or not states):
            dw, db, dh0 = conv1d.conv_backward_in_place(
                x, weight.contiguous(), bias, True, dout, dx_out, None if h0 is None else h0.contiguous(),
                None if dfinal is None else dfinal.contiguous())
            if h0 is not None:
                dh0 = h0.new_zeros(h0.shape) if dh0 is None else dh0.to(h0.dtype)
            return dx_out, dw.to(weight.dtype), None if bias is None else db.to(bias.dtype), dh0
        prev = None if h0 is None else h0.contiguous()
        dxx, dw, db = conv1d.conv_backward(x, prev, weight.contiguous(), bias, True, dout, dfinal)
        return (dxx[..., w - 1:], dw.to(weight.dtype), None if bias is None else db.to(bias.dtype),
                None if h0 is None else dxx[..., :w - 1].to(h0.dtype))

    return conv_fwd, conv_bwd


def _gpu_kernels() -> Kernels:
    from genomamba.ops.cuda.kernels import scan_backward, scan_forward_saving

    return Kernels("cuda", *triton_conv_pair(), scan_forward_saving, scan_backward)


def kernels_for(device: torch.device, dtype: torch.dtype, d_state: int, d_conv: int) -> Optional[Kernels]:
    """The fast kernels for a mixer trained on ``device`` in ``dtype``, or None where the per-op path
    should run: off CUDA, or where the dispatch table would not give this call to the CUDA scan with
    its backward and the Triton conv (a forced backend, an unverified backward, n > 64, a conv wider
    than 4). ``GENOMAMBA_FUSED_MIXER=0`` turns the function off, ``=1`` asks for it (the generic
    kernels where the fast ones do not apply)."""
    from genomamba.ops.dispatch import requested_backend

    want = os.environ.get("GENOMAMBA_FUSED_MIXER", "auto").strip().lower()
    return _kernels_for(device.type, dtype, d_state, d_conv, want, requested_backend())


@functools.lru_cache(maxsize=None)
def _kernels_for(device: str, dtype, d_state: int, d_conv: int, want: str, backend: str) -> Optional[Kernels]:
    if want in ("0", "off", "false", "no"):
        return None
    if want not in ("1", "on", "true", "yes", "auto"):
        raise ValueError(f"GENOMAMBA_FUSED_MIXER={want!r}: expected auto, 0 or 1")
    fast = None
    if device == "cuda" and d_conv <= 4:
        from genomamba.ops.dispatch import choose

        grads = Call("selective_scan", "cuda", (dtype,) * 5 + (torch.float32,) * 3, False, d_state, False, True)
        conv = Call("causal_conv1d", "cuda", (dtype, torch.float32, torch.float32), False, 0, False, True)
        if choose(grads).name == "cuda" and choose(conv).name == "triton":
            fast = _gpu_kernels()
    if fast is None and want in ("1", "on", "true", "yes"):
        return GENERIC
    return fast


def _place(result: torch.Tensor, view: torch.Tensor) -> None:
    """``result`` into ``view``, unless a kernel wrote it there already."""
    if result.data_ptr() != view.data_ptr() or result.stride() != view.stride():
        view.copy_(result)


def _bdl(m: torch.Tensor, b: int, l: int) -> torch.Tensor:
    """The (rows, b * l) matrix ``m`` as a (b, rows, l) view."""
    return m.view(m.shape[0], b, l).transpose(0, 1)


def _conv_tail(x: torch.Tensor, h0: Optional[torch.Tensor], w: int) -> torch.Tensor:
    """The conv state a call leaves: its last w - 1 inputs, reaching into ``h0`` (zeros when None)
    when the call is shorter than that; contiguous, x's dtype."""
    b, d, l = x.shape
    tail = x[..., max(0, l - (w - 1)):]
    if tail.shape[-1] < w - 1:
        lead = h0.to(x.dtype) if h0 is not None else x.new_zeros((b, d, w - 1))
        tail = torch.cat([lead, tail], dim=-1)[..., tail.shape[-1]:]
    return tail.contiguous()


class MixerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, in_w, in_b, conv_w, conv_b, x_w, dt_w, dt_bias, A, D, out_w, out_b, conv_h0, ssm_h0,
                sizes, kernels):
        d, r, n, states, lean, keep = sizes
        b, l, dm = hidden.shape
        dev = hidden.device.type
        ct = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) and hidden.is_floating_point() \
            and hidden.dtype != torch.float64 else hidden.dtype
        with torch.autocast(dev, enabled=False):
            X = hidden.to(ct).reshape(b * l, dm)
            in_wc, x_wc, dt_wc, out_wc = (w.to(ct) for w in (in_w, x_w, dt_w, out_w))
            ch0 = None if conv_h0 is None else conv_h0.to(ct)
            xz = torch.mm(in_wc, X.t())  # (2d, b*l)
            if in_b is not None:
                xz += in_b.to(ct)[:, None]
            x = _bdl(xz[:d], b, l)
            xc = torch.empty((d, b * l), device=xz.device, dtype=ct)
            kernels.conv_forward(x, conv_w, conv_b, ch0, _bdl(xc, b, l))
            x_dbl = torch.mm(x_wc, xc)  # (r + 2n, b*l)
            delta = torch.mm(dt_wc, x_dbl[:r])
            # the scan writes its output straight into the rows out_proj reads
            ym = torch.empty((d, b * l), device=xz.device, dtype=ct)
            y, final, saved = kernels.scan_forward(_bdl(xc, b, l), _bdl(delta, b, l), A, _bdl(x_dbl[r:r + n], b, l),
                                                   _bdl(x_dbl[r + n:], b, l), D, _bdl(xz[d:], b, l), dt_bias, ssm_h0,
                                                   _bdl(ym, b, l))
            _place(y, _bdl(ym, b, l))
            del y
            out = torch.mm(ym.t(), out_wc.t())  # (b*l, dm)
            if out_b is not None:
                out += out_b.to(ct)
            conv_final = _conv_tail(x, ch0, conv_w.shape[1]) if states else None
        # the weights are kept as the products used them (the autocast dtype): the backward does not
        # cast them again
        ctx.save_for_backward(X, None if lean else xz, x_dbl, in_wc, in_b, conv_w, conv_b, x_wc, dt_wc, dt_bias, A, D,
                              out_wc, out_b, ch0, ssm_h0, xc if keep else None, delta if keep else None)
        ctx.weight_dtypes = (in_w.dtype, x_w.dtype, dt_w.dtype, out_w.dtype)
        ctx.sizes, ctx.kernels, ctx.ct, ctx.saved_scan = (b, l, dm, d, r, n), kernels, ct, saved
        ctx.dtypes = (hidden.dtype, None if conv_h0 is None else conv_h0.dtype)
        if not states:
            return out.view(b, l, dm)
        return out.view(b, l, dm), conv_final, final

    @staticmethod
    def backward(ctx, dout, d_conv_final=None, d_ssm_final=None):
        (X, xz, x_dbl, in_wc, in_b, conv_w, conv_b, x_wc, dt_wc, dt_bias, A, D, out_wc, out_b, ch0,
         ssm_h0, xc, delta) = ctx.saved_tensors
        b, l, dm, d, r, n = ctx.sizes
        k, ct = ctx.kernels, ctx.ct
        dev = X.device.type
        with torch.autocast(dev, enabled=False):
            if dout is None:
                dout = X.new_zeros((b, l, dm))
            dO = dout.reshape(b * l, dm).to(ct)
            d_out_b = dO.sum(0) if out_b is not None else None
            dy = torch.mm(out_wc.t(), dO.t())  # (d, b*l)
            if xz is None:  # lean: in_proj again
                xz = torch.mm(in_wc, X.t())
                if in_b is not None:
                    xz += in_b.to(ct)[:, None]
            # the conv output and delta again, as the forward computed them (unless kept)
            x = _bdl(xz[:d], b, l)
            if xc is None:
                xc = torch.empty((d, b * l), device=xz.device, dtype=ct)
                k.conv_forward(x, conv_w, conv_b, ch0, _bdl(xc, b, l))
            if delta is None:
                delta = torch.mm(dt_wc, x_dbl[:r])
            B, C = _bdl(x_dbl[r:r + n], b, l), _bdl(x_dbl[r + n:], b, l)
            # the scan writes du, ddelta, dz and its output again straight into rows of the function's
            # matrices (dz into the lower half of in_proj's output gradient)
            dxz = torch.empty_like(xz)
            dum, ddm, ym = (torch.empty((d, b * l), device=xz.device, dtype=ct) for _ in range(3))
            into = tuple(_bdl(m, b, l) for m in (dum, ddm, dxz[d:], ym))
            got = k.scan_backward(
                ctx.saved_scan, _bdl(xc, b, l), _bdl(delta, b, l), A, B, C, D, _bdl(xz[d:], b, l), dt_bias, ssm_h0,
                _bdl(dy, b, l), d_ssm_final, want_out=True, into=into)
            du, ddelta, dA, dB, dC, dD, dz, d_dt_bias, d_ssm_h0, y = got
            for result, view in zip((du, ddelta, dz, y), into):
                _place(result, view)
            del du, ddelta, dz, y, got
            d_out_w = torch.mm(dO.t(), ym.t())  # (dm, d)
            del ym
            dx_dbl = torch.empty_like(x_dbl)
            torch.mm(dt_wc.t(), ddm, out=dx_dbl[:r])
            _bdl(dx_dbl[r:r + n], b, l).copy_(dB)
            _bdl(dx_dbl[r + n:], b, l).copy_(dC)
            d_dt_w = torch.mm(ddm, x_dbl[:r].t())  # (d, r)
            d_x_w = torch.mm(dx_dbl, xc.t())  # (r + 2n, d)
            dxc = dum.addmm_(x_wc.t(), dx_dbl)  # (d, b*l): du plus x_proj's input gradient, one GEMM
            del dum
            dx_rows = _bdl(dxz[:d], b, l)
            dx, d_conv_w, d_conv_b, d_conv_h0 = k.conv_backward(x, conv_w, conv_b, ch0, _bdl(dxc, b, l), d_conv_final,
                                                                dx_rows)
            _place(dx, dx_rows)
            d_in_w = torch.mm(dxz, X)  # (2d, dm)
            d_in_b = dxz.sum(1) if in_b is not None else None
            dX = torch.mm(dxz.t(), in_wc)  # (b*l, dm)

        def like(g, t):
            return None if g is None or t is None else g.to(t.dtype)

        hidden_dtype, conv_h0_dtype = ctx.dtypes
        in_dt, x_dt, dt_dt, out_dt = ctx.weight_dtypes
        return (dX.view(b, l, dm).to(hidden_dtype), d_in_w.to(in_dt), like(d_in_b, in_b),
                like(d_conv_w, conv_w), like(d_conv_b, conv_b), d_x_w.to(x_dt), d_dt_w.to(dt_dt),
                like(d_dt_bias, dt_bias), like(dA, A), like(dD, D), d_out_w.to(out_dt), like(d_out_b, out_b),
                None if d_conv_h0 is None else d_conv_h0.to(conv_h0_dtype), like(d_ssm_h0, ssm_h0), None, None)


def mixer_forward(hidden, in_w, in_b, conv_w, conv_b, x_w, dt_w, dt_bias, A, D, out_w, out_b, d_state: int,
                  kernels: Kernels, conv_state: Optional[torch.Tensor] = None,
                  ssm_state: Optional[torch.Tensor] = None, states: bool = False, lean: bool = False,
                  keep: bool = False):
    """The mixer (in_proj -> conv -> SiLU -> x_proj -> dt_proj -> scan with D and the SiLU(z) gate ->
    out_proj) on ``hidden`` (b, l, d_model) as one autograd node: conv_w (d_inner, d_conv); A (d_inner,
    n), D and dt_bias (d_inner,) as the scan takes them; the rest as the nn.Linear weights and biases.

    ``conv_state`` (b, d_inner, d_conv - 1) and ``ssm_state`` (b, d_inner, n) are where the call
    starts (zeros when None). With ``states``, returns (out, conv state, ssm state) it leaves, all
    differentiable (segment-wise training backpropagates through them); else out alone. ``lean``: keep
    less for the backward (in_proj's output is computed again there); ``keep``: keep more (the conv
    output and delta, instead of computing them again there). Results are the same bits either way."""
    d = conv_w.shape[0]
    r = dt_w.shape[1]
    return MixerFn.apply(hidden, in_w, in_b, conv_w, conv_b, x_w, dt_w, dt_bias, A, D, out_w, out_b, conv_state,
                         ssm_state, (d, r, d_state, bool(states), bool(lean), bool(keep)), kernels)
