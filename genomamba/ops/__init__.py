"""The one dispatch point for genomamba's kernels.

Model code imports only the functionals below. Each picks a backend by device and availability:

    CUDA tensors: cuda (csrc/, JIT-built) -> triton -> torch (chunked scan)
    CPU tensors:  cpp  (csrc/, JIT-built) -> torch

``GENOMAMBA_SCAN_BACKEND`` (env) or :func:`use_backend` forces one of
``auto, cuda, triton, cpp, torch, ref`` (``ref`` is the sequential oracle), for benchmarks and tests.
Argument checking happens here once, so every backend sees validated inputs.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch

from genomamba.ops.reference import causal_conv1d_ref, selective_scan_ref, selective_state_update_ref

BACKENDS = ("auto", "cuda", "triton", "cpp", "torch", "ref")
_forced: str | None = None
_notices: set[str] = set()
# backend name -> module that defines `available()` and the op functions
_MODULES = {"cuda": "genomamba.ops.cuda", "triton": "genomamba.ops.triton", "cpp": "genomamba.ops.cpu"}


def _notice(key: str, msg: str) -> None:
    """One-line notice printed once per process (a missing compiler is not an error)."""
    if key not in _notices:
        _notices.add(key)
        print(f"genomamba: {msg}", file=sys.stderr)


def requested_backend() -> str:
    name = _forced or os.environ.get("GENOMAMBA_SCAN_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"GENOMAMBA_SCAN_BACKEND={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Force a backend inside a ``with`` block (``auto`` restores automatic choice)."""
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r}: expected one of {', '.join(BACKENDS)}")
    prev, _forced = _forced, name
    try:
        yield
    finally:
        _forced = prev


def _import(name: str):
    """The backend module ``_MODULES[name]``. Plain import statements rather than importlib, so that
    torch.compile can trace the dispatch (dynamo runs an ``import`` but will not trace importlib)."""
    if name == "cpp":
        from genomamba.ops import cpu as mod
    elif name == "cuda":
        from genomamba.ops import cuda as mod
    elif name == "triton":
        from genomamba.ops import triton as mod
    else:
        raise KeyError(name)
    return mod


def _module(name: str):
    """Import a backend module; None (with a one-line notice) if it is not usable here."""
    try:
        mod = _import(name)
    except Exception as exc:  # an optional backend must never break genomamba
        _notice(name, f"{name} backend unavailable ({type(exc).__name__}: {exc}); using the next one")
        return None
    try:
        ok = mod.available()
    except Exception as exc:
        _notice(name, f"{name} backend unavailable ({type(exc).__name__}: {exc}); using the next one")
        return None
    return mod if ok else None


def backend_for(device: torch.device, op: str = "selective_scan") -> str:
    """The backend that will run ``op`` on ``device`` (honouring a forced choice)."""
    name = requested_backend()
    if name != "auto":
        if name in _MODULES:
            if _module(name) is None:
                raise RuntimeError(f"backend {name!r} was requested but is not available on this machine")
            if not hasattr(_import(name), op):
                return "torch"
        return name
    order = ("cuda", "triton") if device.type == "cuda" else ("cpp",) if device.type == "cpu" else ()
    for cand in order:
        mod = _module(cand)
        if mod is not None and hasattr(mod, op):
            return cand
    return "torch"


# ----------------------------------------------------------------------------- argument checks


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


# ----------------------------------------------------------------------------- public ops


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
    """Selective scan (Mamba, Algorithm 2) with mamba_ssm's ``selective_scan_fn`` semantics.

    u, delta, z: (b, d, l); A: (d, n) real; B, C: (b, n, l) or (b, g, n, l); D, delta_bias: (d,);
    initial_state / final state: (b, d, n), fp32 (fp64 for fp64 inputs). Differentiable in every
    tensor argument, initial_state included. Returns out (b, d, l) in u's dtype, or (out, final_state).
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    args = (u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state, bool(return_final_state))
    name = backend_for(u.device)
    if name == "ref":
        return selective_scan_ref(*args)
    if name == "torch":
        from genomamba.ops.torch_scan import selective_scan_chunked

        return selective_scan_chunked(*args)
    return _import(name).selective_scan(*args)


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None, return_final_state=False):
    """Depthwise causal conv1d. x: (b, d, l); weight: (d, w), w <= 4; bias: (d,);
    initial_state / final state: (b, d, w - 1); activation: None or "silu"."""
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
    activation = "silu" if activation in ("silu", "swish") else None
    name = backend_for(x.device, "causal_conv1d")
    if name in _MODULES:
        mod = _import(name)
        return mod.causal_conv1d(x, weight, bias, initial_state, activation, return_final_state)
    if name == "ref":
        return causal_conv1d_ref(x, weight, bias, initial_state, activation, return_final_state)
    from genomamba.ops.torch_conv import causal_conv1d_torch

    return causal_conv1d_torch(x, weight, bias, initial_state, activation, return_final_state)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One recurrent step; updates ``state`` (b, d, n) in place and returns out (b, d).

    x, dt, z: (b, d); A: (d, n); B, C: (b, n) or (b, g, n); D, dt_bias: (d,).
    """
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
    name = backend_for(dev, "selective_state_update")
    if name in _MODULES:
        mod = _import(name)
        return mod.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


__all__ = [
    "selective_scan",
    "causal_conv1d",
    "selective_state_update",
    "selective_scan_ref",
    "causal_conv1d_ref",
    "selective_state_update_ref",
    "use_backend",
    "backend_for",
    "check_scan_args",
]
