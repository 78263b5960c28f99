"""add_rms_norm: the reference equals the block's old residual-add + RMSNorm exactly; the Triton
kernels (through the interpreter on CPU, compiled in tests/gpu) equal the reference, gradients included."""

import pytest
import torch

import genomamba.ops as ops
from genomamba.models.mixer import RMSNorm

CASES = [  # hidden, residual (None: first block), weight dtypes, residual_in_fp32
    (torch.float32, torch.float32, torch.float32, True),
    (torch.bfloat16, torch.float32, torch.float32, True),   # bf16 autocast: mixer out bf16, fp32 stream
    (torch.bfloat16, None, torch.float32, True),
    (torch.float16, torch.float16, torch.float32, False),
    (torch.float32, None, torch.float32, False),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16, False),  # a bf16 model
]


def _inputs(hd, rd, wd, d=40, shape=(3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*shape, d, generator=g).to(hd).requires_grad_()
    r = torch.randn(*shape, d, generator=g).to(rd).requires_grad_() if rd is not None else None
    w = (1 + 0.1 * torch.randn(d, generator=g)).to(wd).requires_grad_()
    return h, r, w


def _old_block_entry(h, r, norm, residual_in_fp32):
    """What the pre-norm block computed before the fused op existed."""
    res = h if r is None else r + h
    out = norm(res.to(norm.weight.dtype))
    return out, (res.float() if residual_in_fp32 and res.dtype != torch.float64 else res)


@pytest.mark.parametrize("hd, rd, wd, fp32", CASES + [(torch.float64, torch.float64, torch.float64, True)])
def test_reference_equals_the_old_block_entry_bit_for_bit(hd, rd, wd, fp32):
    h, r, w = _inputs(hd, rd, wd)
    norm = RMSNorm(40, eps=1e-5).to(wd)
    with torch.no_grad():
        norm.weight.copy_(w)
    want = _old_block_entry(h, r, norm, fp32)
    got = ops.add_rms_norm_ref(h, r, w, 1e-5, fp32)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)


def _run(backend, h, r, w, fp32, go, gr):
    with ops.use_backend(backend):
        out, res = ops.add_rms_norm(h, r, w, 1e-5, fp32)
    leaves = [t for t in (h, r, w) if t is not None]
    grads = torch.autograd.grad((out.float() * go).sum() + (res.float() * gr).sum(), leaves)
    return out, res, grads


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: tests/gpu runs the compiled kernels")
@pytest.mark.parametrize("hd, rd, wd, fp32", CASES)
def test_triton_kernels_equal_the_reference(hd, rd, wd, fp32):
    pytest.importorskip("triton")
    h, r, w = _inputs(hd, rd, wd, d=40, shape=(3, 7))  # 21 rows: a partial last program; d not a power of 2
    g = torch.Generator().manual_seed(1)
    go, gr = torch.randn(3, 7, 40, generator=g), torch.randn(3, 7, 40, generator=g)
    o1, r1, g1 = _run("ref", h, r, w, fp32, go, gr)
    o2, r2, g2 = _run("triton", h, r, w, fp32, go, gr)
    assert (o2.dtype, r2.dtype) == (o1.dtype, r1.dtype)
    # bf16 results may differ by one rounding step (the interpreter's casts)
    tol = 1e-2 if torch.bfloat16 in (hd, rd, wd) or torch.float16 in (hd, rd) else 1e-5
    for a, b in [(o2, o1), (r2, r1), *zip(g2, g1)]:
        err = ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()
        assert err < tol, err


def test_bad_arguments_name_the_argument():
    h = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="weight"):
        ops.add_rms_norm(h, None, torch.ones(7))
    with pytest.raises(ValueError, match="residual"):
        ops.add_rms_norm(h, torch.randn(2, 3, 9), torch.ones(8))
    with pytest.raises(ValueError, match="eps"):
        ops.add_rms_norm(h, None, torch.ones(8), eps=0)
    with pytest.raises(ValueError, match="hidden"):
        ops.add_rms_norm("x", None, torch.ones(8))


@pytest.mark.parametrize("hd, rd, wd, fp32", [c for c in CASES if c[2] == torch.float32])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_out_dtype_is_the_cast_of_the_output_bit_for_bit(hd, rd, wd, fp32, out_dtype):
    """Writing the normed rows in the autocast dtype equals casting the weight-dtype output, so the
    block's in_proj reads the same values without a separate cast."""
    h, r, w = _inputs(hd, rd, wd)
    want, want_res = ops.add_rms_norm_ref(h, r, w, 1e-5, fp32)
    got, got_res = ops.add_rms_norm_ref(h, r, w, 1e-5, fp32, out_dtype)
    assert got.dtype == out_dtype and torch.equal(got, want.to(out_dtype)) and torch.equal(got_res, want_res)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: tests/gpu runs the compiled kernels")
def test_triton_out_dtype_equals_the_reference():
    pytest.importorskip("triton")
    h, r, w = _inputs(torch.bfloat16, torch.float32, torch.float32, d=40, shape=(3, 7))
    outs = []
    for backend in ("ref", "triton"):
        with ops.use_backend(backend):
            out, res = ops.add_rms_norm(h, r, w, 1e-5, True, torch.bfloat16)
        grads = torch.autograd.grad((out.float() * 1.5).sum() + res.sum(), [h, r, w])
        outs.append((out, res, grads))
    (o1, r1, g1), (o2, r2, g2) = outs
    assert o2.dtype == o1.dtype == torch.bfloat16 and r2.dtype == r1.dtype == torch.float32
    for a, b in [(o2, o1), (r2, r1), *zip(g2, g1)]:
        err = ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()
        assert err < 1e-2, err


def test_bad_out_dtype_is_named():
    with pytest.raises(ValueError, match="out_dtype"):
        ops.add_rms_norm(torch.randn(2, 8), None, torch.ones(8), 1e-5, False, torch.int32)
