"""Argument checks shared by every op: each error names the argument, the expected shape and what
was given, so every backend sees validated inputs."""

from __future__ import annotations

import math

import torch


def _fail(arg: str, expected: str, got) -> None:
    raise ValueError(f"{arg}: expected {expected}, got {got}")


def _shape(t) -> str:
    return f"shape {tuple(t.shape)} ({t.dtype}, {t.device})"


def _check_tensor(arg, t, shape, device, float_only=True, optional=False):
    if t is None:
        if optional:
            return
        _fail(arg, f"a tensor of shape {shape}", "None")
    if not isinstance(t, torch.Tensor):
        _fail(arg, f"a torch.Tensor of shape {shape}", type(t).__name__)
    if tuple(t.shape) != tuple(shape):
        _fail(arg, f"shape {tuple(shape)}", _shape(t))
    if float_only and not t.is_floating_point():
        _fail(arg, "a floating-point tensor", _shape(t))
    if t.is_complex():
        _fail(arg, "a real tensor", _shape(t))
    if t.device != device:
        _fail(arg, f"a tensor on {device}", _shape(t))


def _check_bc(arg, M, b, d, n, l, device):
    if not isinstance(M, torch.Tensor):
        _fail(arg, f"a tensor of shape ({b}, {n}, {l}) or ({b}, g, {n}, {l})", type(M).__name__)
    if M.dim() == 4:
        g = M.shape[1]
        if g < 1 or d % g != 0:
            _fail(arg, f"groups g dividing d={d} in shape ({b}, g, {n}, {l})", _shape(M))
        _check_tensor(arg, M, (b, g, n, l), device)
    else:
        _check_tensor(arg, M, (b, n, l), device)


def check_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None):
    """Validate selective_scan arguments; raise ValueError naming the argument and expected shape."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        _fail("u", "a tensor of shape (b, d, l)", _shape(u) if isinstance(u, torch.Tensor) else type(u).__name__)
    b, d, l = u.shape
    dev = u.device
    _check_tensor("u", u, (b, d, l), dev)
    _check_tensor("delta", delta, (b, d, l), dev)
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != d:
        _fail("A", f"a real tensor of shape ({d}, n)", _shape(A) if isinstance(A, torch.Tensor) else type(A).__name__)
    n = A.shape[1]
    _check_tensor("A", A, (d, n), dev)
    _check_bc("B", B, b, d, n, l, dev)
    _check_bc("C", C, b, d, n, l, dev)
    _check_tensor("D", D, (d,), dev, optional=True)
    _check_tensor("z", z, (b, d, l), dev, optional=True)
    _check_tensor("delta_bias", delta_bias, (d,), dev, optional=True)
    _check_tensor("initial_state", initial_state, (b, d, n), dev, optional=True)


def check_conv_args(x, weight, bias=None, initial_state=None, activation=None) -> str | None:
    """Validate causal_conv1d arguments; returns the activation normalised to None or "silu"."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        _fail("x", "a tensor of shape (b, d, l)", _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__)
    b, d, l = x.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != d:
        _fail("weight", f"a tensor of shape ({d}, w)", _shape(weight) if isinstance(weight, torch.Tensor) else weight)
    w = weight.shape[1]
    if not 1 <= w <= 4:
        _fail("weight", "width w in 1..4", f"w={w}")
    _check_tensor("x", x, (b, d, l), x.device)
    _check_tensor("weight", weight, (d, w), x.device)
    _check_tensor("bias", bias, (d,), x.device, optional=True)
    _check_tensor("initial_state", initial_state, (b, d, w - 1), x.device, optional=True)
    if activation not in (None, "silu", "swish"):
        _fail("activation", "None or 'silu'", repr(activation))
    return "silu" if activation in ("silu", "swish") else None


def check_state_update_args(state, x, dt, A, B, C, D=None, z=None, dt_bias=None) -> None:
    """Validate selective_state_update arguments."""
    if not isinstance(state, torch.Tensor) or state.dim() != 3:
        _fail("state", "a tensor of shape (b, d, n)", _shape(state) if isinstance(state, torch.Tensor) else state)
    b, d, n = state.shape
    dev = state.device
    for arg, t in (("x", x), ("dt", dt)):
        _check_tensor(arg, t, (b, d), dev)
    _check_tensor("z", z, (b, d), dev, optional=True)
    _check_tensor("A", A, (d, n), dev)
    for arg, M in (("B", B), ("C", C)):
        if isinstance(M, torch.Tensor) and M.dim() == 3:
            if d % M.shape[1] != 0:
                _fail(arg, f"groups g dividing d={d} in shape ({b}, g, {n})", _shape(M))
            _check_tensor(arg, M, (b, M.shape[1], n), dev)
        else:
            _check_tensor(arg, M, (b, n), dev)
    _check_tensor("D", D, (d,), dev, optional=True)
    _check_tensor("dt_bias", dt_bias, (d,), dev, optional=True)


def check_step_args(hidden, residual, conv_state, ssm_state, weights) -> None:
    """Validate mamba_step arguments (``weights``: a ``genomamba.ops.backend.StepWeights``)."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[1] != 1:
        _fail("hidden", "a tensor of shape (b, 1, d_model)",
              _shape(hidden) if isinstance(hidden, torch.Tensor) else type(hidden).__name__)
    b, _, dm = hidden.shape
    dev = hidden.device
    _check_tensor("hidden", hidden, (b, 1, dm), dev)
    _check_tensor("residual", residual, (b, 1, dm), dev, optional=True)
    if not isinstance(conv_state, torch.Tensor) or conv_state.dim() != 3 or conv_state.shape[0] != b:
        _fail("conv_state", f"a tensor of shape ({b}, d_inner, d_conv - 1)",
              _shape(conv_state) if isinstance(conv_state, torch.Tensor) else type(conv_state).__name__)
    _, d, wm1 = conv_state.shape
    _check_tensor("conv_state", conv_state, (b, d, wm1), dev)
    w = weights
    if not isinstance(w.A, torch.Tensor) or w.A.dim() != 2 or w.A.shape[0] != d:
        _fail("A", f"a tensor of shape ({d}, n)", _shape(w.A) if isinstance(w.A, torch.Tensor) else w.A)
    n = w.A.shape[1]
    _check_tensor("ssm_state", ssm_state, (b, d, n), dev)
    if not isinstance(w.dt_proj_weight, torch.Tensor) or w.dt_proj_weight.dim() != 2:
        _fail("dt_proj_weight", f"a tensor of shape ({d}, dt_rank)", w.dt_proj_weight)
    rank = w.dt_proj_weight.shape[1]
    _check_tensor("norm_weight", w.norm_weight, (dm,), dev)
    _check_tensor("in_proj_weight", w.in_proj_weight, (2 * d, dm), dev)
    _check_tensor("in_proj_bias", w.in_proj_bias, (2 * d,), dev, optional=True)
    _check_tensor("conv_weight", w.conv_weight, (d, wm1 + 1), dev)
    _check_tensor("conv_bias", w.conv_bias, (d,), dev, optional=True)
    _check_tensor("x_proj_weight", w.x_proj_weight, (rank + 2 * n, d), dev)
    _check_tensor("dt_proj_weight", w.dt_proj_weight, (d, rank), dev)
    _check_tensor("dt_proj_bias", w.dt_proj_bias, (d,), dev)
    _check_tensor("A", w.A, (d, n), dev)
    _check_tensor("A_log", w.A_log, (d, n), dev, optional=True)
    _check_tensor("D", w.D, (d,), dev)
    _check_tensor("out_proj_weight", w.out_proj_weight, (dm, d), dev)
    _check_tensor("out_proj_bias", w.out_proj_bias, (dm,), dev, optional=True)


def check_add_rms_norm_args(hidden, residual, weight, eps, out_dtype=None) -> None:
    """Validate add_rms_norm arguments: hidden (..., d), residual like hidden or None, weight (d,),
    out_dtype a floating dtype or None."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 1:
        _fail("hidden", "a tensor of shape (..., d)", _shape(hidden) if isinstance(hidden, torch.Tensor)
              else type(hidden).__name__)
    d = hidden.shape[-1]
    _check_tensor("hidden", hidden, hidden.shape, hidden.device)
    _check_tensor("residual", residual, hidden.shape, hidden.device, optional=True)
    _check_tensor("weight", weight, (d,), hidden.device)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        _fail("eps", "a positive number", repr(eps))
    if out_dtype is not None and (not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point):
        _fail("out_dtype", "a floating-point torch.dtype or None", repr(out_dtype))


def first_mismatch(pairs, tol: float):
    """The first ``(name, max |diff|)`` of ``(name, got, want)`` pairs whose largest difference exceeds
    ``tol`` x (max |want| + 1) or is not finite; None if every pair agrees. A fused kernel's one-time
    check against its reference twin."""
    for name, got, want in pairs:
        err = float((got.float() - want.float()).abs().max()) if got.numel() else 0.0
        scale = float(want.float().abs().max()) + 1.0 if want.numel() else 1.0
        if not math.isfinite(err) or err > tol * scale:
            return name, err
    return None
