"""The compiled add_rms_norm kernels on CUDA against the reference (outputs and gradients), the output
in the weight's dtype and in bf16 (as the block asks under autocast)."""

import pytest
import torch

import genomamba.ops as ops
from tests.ops.test_add_rms_norm import CASES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("d", [64, 256, 768, 1000])
@pytest.mark.parametrize("hd, rd, wd, fp32", CASES)
@pytest.mark.parametrize("out_dtype", [None, torch.bfloat16])
def test_compiled_kernels_equal_the_reference(hd, rd, wd, fp32, d, out_dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda dt: torch.randn(4, 333, d, device="cuda", generator=g).to(dt).requires_grad_()  # noqa: E731
    h, r = mk(hd), (mk(rd) if rd is not None else None)
    w = (1 + 0.1 * torch.randn(d, device="cuda", generator=g)).to(wd).requires_grad_()
    go, gr = torch.randn(4, 333, d, device="cuda", generator=g), torch.randn(4, 333, d, device="cuda", generator=g)
    outs = []
    for backend in ("ref", "triton"):
        with ops.use_backend(backend):
            o, res = ops.add_rms_norm(h, r, w, 1e-5, fp32, out_dtype)
        leaves = [t for t in (h, r, w) if t is not None]
        outs.append((o, res, torch.autograd.grad((o.float() * go).sum() + (res.float() * gr).sum(), leaves)))
    (o1, r1, g1), (o2, r2, g2) = outs
    assert (o2.dtype, r2.dtype) == (o1.dtype, r1.dtype)
    low = torch.bfloat16 in (hd, rd, wd, out_dtype) or torch.float16 in (hd, rd)
    tol = 8e-3 if low else 2e-5
    for name, a, b in [("out", o2, o1), ("res", r2, r1), *((f"grad{i}", x, y) for i, (x, y) in enumerate(zip(g2, g1)))]:
        err = ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()
        assert err < tol, (name, err)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 60 * 2**30,
                    reason="needs a CUDA device with 60 GB")
def test_weight_gradient_past_two_billion_elements():
    """rows x d above 2^31 (a long window of a wide model): the weight gradient's partial sums are
    addressed in int64, so the last rows' sums land where they belong."""
    rows, d = 2**18 + 3, 8192  # one row per program: the last program's partial row starts past 2^31
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(rows, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    w = (1 + 0.1 * torch.randn(d, device="cuda", generator=g)).requires_grad_()
    with ops.use_backend("triton"):
        o, _ = ops.add_rms_norm(h, None, w, 1e-5)
    dout = torch.randn(rows, d, device="cuda", dtype=o.dtype, generator=g)
    (dw,) = torch.autograd.grad(o, [w], dout)
    del o
    want = torch.zeros(d, device="cuda", dtype=torch.float64)
    with torch.no_grad():
        for a in range(0, rows, 8192):  # the reference in chunks: dw = sum over rows of dout * x * rstd
            x = h[a:a + 8192].double()
            xhat = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
            want += (dout[a:a + 8192].double() * xhat).sum(0)
    err = ((dw.double() - want).norm() / want.norm()).item()
    assert err < 1e-3, err
