"""The Triton causal conv kernels compiled on CUDA against the float64 reference: the forward and the
one-kernel backward, in the 8-token-vector build (with and without initial and final states) and in
the shifted-tile build, at lengths that cross many blocks (aligned and not), float32 and bf16, x read
from the training mixer's (channels, b * l) rows. Skipped without CUDA. On a CUDA machine:
``python -m pytest tests/gpu/test_conv_gpu.py -q``."""

import pytest
import torch

from genomamba.ops.reference import causal_conv1d_ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("build", ["vec", "vec_states", "tiles"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("l", [2, 1000, 4096, 5003])
@pytest.mark.parametrize("w", [2, 4])
def test_conv_kernels_equal_the_reference(build, dtype, l, w, monkeypatch):
    from genomamba.ops.triton import conv1d

    monkeypatch.setitem(conv1d.CONFIG, "vec", build != "tiles")
    states = build == "vec_states"
    torch.manual_seed(0)
    b, d = 3, 40
    xm = torch.randn(2 * d, b * l, device="cuda").to(dtype)
    x = xm[:d].view(d, b, l).transpose(0, 1)
    wt, bias = 0.5 * torch.randn(d, w, device="cuda"), 0.1 * torch.randn(d, device="cuda")
    h0 = torch.randn(b, d, w - 1, device="cuda").to(dtype) if states else None
    g = torch.randn(d, b * l, device="cuda").to(dtype).view(d, b, l).transpose(0, 1)
    gf = torch.randn(b, d, w - 1, device="cuda") if states else None
    out = torch.empty(d, b * l, device="cuda", dtype=dtype).view(d, b, l).transpose(0, 1)
    conv1d.conv_forward(x, wt, bias, h0, True, out)
    dxm = torch.full((2 * d, b * l), float("nan"), device="cuda", dtype=dtype)
    dx = dxm[:d].view(d, b, l).transpose(0, 1)
    dw, db, dh0 = conv1d.conv_backward_in_place(x, wt, bias, True, g, dx, h0, gf)
    leaves = [t.double().requires_grad_() for t in (x, wt, bias)] + ([h0.double().requires_grad_()] if states else [])
    rout, rfin = causal_conv1d_ref(*leaves[:3], leaves[3] if states else None, "silu", True)
    outs, grads = ([rout, rfin], [g.double(), gf.double()]) if states else ([rout], [g.double()])
    want = torch.autograd.grad(outs, leaves, grads)
    tol = 1e-5 if dtype == torch.float32 else 2e-2

    def close(name, a, r):
        err = ((a.double() - r).norm() / (r.norm() + 1e-30)).item()
        assert err < tol, (name, err)

    close("out", out, rout.detach())
    close("dx", dx, want[0])
    assert torch.isnan(dxm[d:]).all()
    close("dweight", dw, want[1])
    close("dbias", db, want[2])
    if states:
        close("dinitial_state", dh0, want[3])
