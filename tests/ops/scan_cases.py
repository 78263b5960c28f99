"""Shared input builders for selective-scan parity tests (every backend uses the same cases)."""

import torch

from genomamba.ops.torch_scan import DEFAULT_CHUNK

LENGTHS = [1, 7, DEFAULT_CHUNK - 1, DEFAULT_CHUNK, DEFAULT_CHUNK + 1, 1000]
# (has_z, has_D, has_bias, softplus, groups) variants; groups None = (b, n, l) B/C, int = (b, g, n, l)
VARIANTS = [
    (True, True, True, True, None),
    (False, False, False, False, None),
    (True, False, True, False, 2),
    (False, True, False, True, 4),
]


def make_scan_inputs(b, d, n, l, dtype, variant, initial_state=True, strided=False, seed=0):
    """Fresh random inputs (never zeros) with requires_grad; returns (kwargs, list of (name, tensor))."""
    g = torch.Generator().manual_seed(seed)
    has_z, has_D, has_bias, softplus, groups = variant

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    u = r(b, d, l)
    if strided:  # a non-contiguous u: every other column of a wider buffer
        u = r(b, d, 2 * l)[..., ::2]
    delta = (torch.rand(b, d, l, generator=g, dtype=torch.float64) * 0.6 + 0.05).to(dtype)
    if not softplus:
        delta = delta.abs()
    A = -(torch.rand(d, n, generator=g, dtype=torch.float64) * 2 + 0.2).to(dtype)
    bc = (b, n, l) if groups is None else (b, groups, n, l)
    B, C = r(*bc), r(*bc)
    kw = dict(u=u, delta=delta, A=A, B=B, C=C)
    if has_D:
        kw["D"] = r(d)
    if has_z:
        kw["z"] = r(b, d, l)
    if has_bias:
        # without softplus a negative delta would make the recurrence grow without bound
        kw["delta_bias"] = r(d, scale=0.3) if softplus else r(d, scale=0.3).abs()
    if initial_state:
        kw["initial_state"] = torch.randn(b, d, n, generator=g, dtype=torch.float64).to(
            torch.float64 if dtype == torch.float64 else torch.float32)
    for v in kw.values():
        v.requires_grad_(True)
    kw["delta_softplus"] = softplus
    grads_of = [(k, v) for k, v in kw.items() if isinstance(v, torch.Tensor)]
    return kw, grads_of


def fp64_copy(kw):
    out = {}
    for k, v in kw.items():
        out[k] = v.detach().double().requires_grad_(True) if isinstance(v, torch.Tensor) else v
    return out


def run_with_grads(fn, kw, seed=1):
    """Run fn(**kw, return_final_state=True), backprop random cotangents; return out, state, grads."""
    out, state = fn(**kw, return_final_state=True)
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    gs = torch.randn(state.shape, generator=g, dtype=torch.float64).to(state.dtype)
    tensors = [v for v in kw.values() if isinstance(v, torch.Tensor)]
    grads = torch.autograd.grad((out, state), tensors, (go, gs))
    names = [k for k, v in kw.items() if isinstance(v, torch.Tensor)]
    return out, state, dict(zip(names, grads))
