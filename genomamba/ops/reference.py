"""Reference twins of every fast op: plain PyTorch, sequential, easy to read.

These are the oracles the fast paths are tested against. Math runs in fp32, or in fp64 when the
inputs are fp64; outputs are cast back to the dtype of ``u`` / ``x``. Nothing here materialises a
``(b, d, l, n)`` tensor, so the oracle itself runs at long ``l`` (slowly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _expand_groups(M: torch.Tensor, d: int) -> torch.Tensor:
    """(b, n, l) or (b, g, n, l) -> (b, d, n, l) view: channel c reads group c // (d // g)."""
    if M.dim() == 3:
        return M.unsqueeze(1)  # broadcast over d
    g = M.shape[1]
    return M.repeat_interleave(d // g, dim=1)


def selective_scan_ref(
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
    """Sequential selective scan (Mamba paper, Algorithm 2), one token at a time.

    Shapes: u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D, delta_bias: (d,);
    initial_state / final state: (b, d, n). Returns out (b, d, l) in u's dtype, or (out, final_state).
    """
    dtype_in = u.dtype
    ct = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    b, d, l = u.shape
    n = A.shape[1]
    u, delta, A = u.to(ct), delta.to(ct), A.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx = _expand_groups(B.to(ct), d)  # (b, d|1, n, l)
    Cx = _expand_groups(C.to(ct), d)
    x = u.new_zeros(b, d, n) if initial_state is None else initial_state.to(ct)
    ys = []
    # unbind once: indexing [..., t] inside the loop would cost a full-size gradient buffer per step
    steps = zip(delta.unbind(-1), u.unbind(-1), Bx.unbind(-1), Cx.unbind(-1))
    for dt, ut, Bt, Ct in steps:
        dt = dt.unsqueeze(-1)  # (b, d, 1)
        x = torch.exp(dt * A) * x + dt * Bt * ut.unsqueeze(-1)  # (b, d, n)
        ys.append((x * Ct).sum(-1))  # (b, d)
    y = torch.stack(ys, dim=-1) if l > 0 else u.new_zeros(b, d, 0)
    out = y if D is None else y + u * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, x) if return_final_state else out


def causal_conv1d_ref(x, weight, bias=None, initial_state=None, activation=None, return_final_state=False):
    """Depthwise causal 1-D convolution.

    Shapes: x: (b, d, l); weight: (d, w); bias: (d,); initial_state / final state: (b, d, w - 1)
    (the last w - 1 inputs before this chunk). activation: None or "silu".
    """
    dtype_in = x.dtype
    ct = _compute_dtype(x, weight, bias, initial_state)
    b, d, l = x.shape
    w = weight.shape[1]
    xx = x.to(ct)
    prev = xx.new_zeros(b, d, w - 1) if initial_state is None else initial_state.to(ct)
    xx = torch.cat([prev, xx], dim=-1)  # (b, d, w - 1 + l)
    out = F.conv1d(xx, weight.to(ct).unsqueeze(1), None if bias is None else bias.to(ct), groups=d)
    if activation == "silu":
        out = F.silu(out)
    out = out.to(dtype_in)
    if return_final_state:
        return out, xx[..., xx.shape[-1] - (w - 1):].to(dtype_in)
    return out


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step of the selective scan; updates ``state`` in place.

    Shapes: state: (b, d, n) fp32; x, dt, z: (b, d); A: (d, n); B, C: (b, n) or (b, g, n); D, dt_bias: (d,).
    Returns out: (b, d) in x's dtype.
    """
    dtype_in = x.dtype
    ct = _compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    d = x.shape[1]
    dt = dt.to(ct)
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    if dt_softplus:
        dt = F.softplus(dt)
    Bx = B.to(ct).unsqueeze(1) if B.dim() == 2 else B.to(ct).repeat_interleave(d // B.shape[1], dim=1)
    Cx = C.to(ct).unsqueeze(1) if C.dim() == 2 else C.to(ct).repeat_interleave(d // C.shape[1], dim=1)
    new = torch.exp(dt[..., None] * A.to(ct)) * state.to(ct) + dt[..., None] * Bx * x.to(ct)[..., None]
    state.copy_(new.to(state.dtype))
    out = (new * Cx).sum(-1)
    if D is not None:
        out = out + x.to(ct) * D.to(ct)
    if z is not None:
        out = out * F.silu(z.to(ct))
    return out.to(dtype_in)


def conv_step_ref(x, conv_state, weight, bias=None):
    """One token of the depthwise causal conv with SiLU; ``conv_state`` rolls left in place.

    x: (b, d) (the newest input); conv_state: (b, d, w - 1), the previous w - 1 inputs, oldest
    first; weight: (d, w); bias: (d,). The conv runs in fp32 (fp64 for fp64). Returns silu(conv)
    (b, d) in x's dtype; conv_state then holds the last w - 1 inputs, x included.
    """
    ct = _compute_dtype(x, conv_state, weight, bias)
    window = torch.cat([conv_state.to(ct), x.to(ct).unsqueeze(-1)], dim=-1)  # (b, d, w)
    conv_state.copy_(window[..., 1:])
    out = (window * weight.to(ct)).sum(-1)
    if bias is not None:
        out = out + bias.to(ct)
    return F.silu(out).to(x.dtype)


def mamba_step_ref(hidden, residual, conv_state, ssm_state, weights):
    """One token through a pre-norm Mamba block: residual add, RMSNorm, then the mixer's step.

    hidden, residual: (b, 1, d_model) (residual None for the first block); conv_state
    (b, d_inner, d_conv - 1) and ssm_state (b, d_inner, n) are updated in place; ``weights``: a
    ``genomamba.ops.backend.StepWeights``. Returns (out, residual'), both (b, 1, d_model): out in
    hidden's dtype, residual' as :func:`add_rms_norm_ref` gives it. The norm and the conv run in
    fp32 (fp64 for fp64 inputs); A is read as -exp(A_log) where ``weights.A_log`` is given.
    """
    w = weights
    h, residual = add_rms_norm_ref(hidden, residual, w.norm_weight, w.norm_eps, w.residual_in_fp32)
    xz = F.linear(h.to(w.in_proj_weight.dtype).reshape(hidden.shape[0], -1), w.in_proj_weight, w.in_proj_bias)
    x, z = xz.chunk(2, dim=-1)  # (b, d_inner) each
    x = conv_step_ref(x, conv_state, w.conv_weight, w.conv_bias)
    rank, n = w.dt_proj_weight.shape[1], w.A.shape[1]
    dt, B, C = torch.split(F.linear(x, w.x_proj_weight), [rank, n, n], dim=-1)
    A = w.A if w.A_log is None else -torch.exp(w.A_log.to(_compute_dtype(w.A_log)))
    y = selective_state_update_ref(ssm_state, x, F.linear(dt, w.dt_proj_weight), A, B, C, w.D, z=z,
                                   dt_bias=w.dt_proj_bias, dt_softplus=True)
    out = F.linear(y, w.out_proj_weight, w.out_proj_bias)
    return out.reshape(hidden.shape), residual


def add_rms_norm_ref(hidden, residual, weight, eps=1e-5, residual_in_fp32=False, out_dtype=None):
    """Pre-norm block entry: ``res = hidden + residual`` (``hidden`` when residual is None), then
    RMSNorm of ``res`` read in the weight's dtype, computed in fp32 (fp64 for fp64), output in the
    weight's dtype (in ``out_dtype`` where given: rounded once from the fp32 result, as casting the
    fp32 output would round it). Returns (normed, res), res in fp32 if ``residual_in_fp32`` (fp64
    stays fp64)."""
    res = hidden if residual is None else residual + hidden
    x = res.to(weight.dtype)
    xf = x if x.dtype == torch.float64 else x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out = (xf * (weight if weight.dtype == torch.float64 else weight.float())).to(out_dtype or x.dtype)
    if residual_in_fp32 and res.dtype != torch.float64:
        res = res.float()
    return out, res
