"""mamba_step, a whole pre-norm block's decode step: the C++ kernel vs its reference twin, the plan's
one-time dispatch, and bad input."""

import pytest
import torch

import genomamba.ops.cpu as cpu
from genomamba.ops import StepWeights, mamba_step, mamba_step_plan, mamba_step_ref, use_backend
from genomamba.ops.reference import selective_state_update_ref
from tests.ops.tolerances import assert_close

needs_cpp = pytest.mark.skipif(not cpu.available(), reason=f"C++ kernels unavailable: {cpu.unavailable_reason}")


def _weights(dm=12, d=24, n=16, rank=3, w=4, dtype=torch.float32, bias=False, conv_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return StepWeights(
        norm_weight=1 + r(dm), norm_eps=1e-5,
        in_proj_weight=r(2 * d, dm), in_proj_bias=r(2 * d) if bias else None,
        conv_weight=r(d, w), conv_bias=r(d) if conv_bias else None,
        x_proj_weight=r(rank + 2 * n, d), dt_proj_weight=r(d, rank), dt_proj_bias=r(d) - 2.0,
        A=-torch.rand(d, n, generator=g, dtype=torch.float64).add(0.5).to(dtype) * torch.arange(1, n + 1).to(dtype),
        D=1 + r(d), out_proj_weight=r(dm, d), out_proj_bias=r(dm) if bias else None,
    )


def _states(b, d, n, w, dtype, state_dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, w - 1, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(b, d, n, generator=g, dtype=torch.float64).to(state_dtype))


CASES = [  # (dtype, ssm_state dtype, n, d_conv, in/out bias, conv bias, first block)
    (torch.float32, torch.float32, 16, 4, False, True, False),
    (torch.float32, torch.float32, 5, 3, True, False, True),
    (torch.float64, torch.float32, 16, 4, True, True, False),
    (torch.float64, torch.float64, 16, 2, False, False, False),
    (torch.float64, torch.float64, 7, 4, False, True, True),
]


@needs_cpp
@pytest.mark.parametrize("dtype,sdtype,n,w,bias,conv_bias,first", CASES)
def test_cpp_step_matches_its_reference_twin_over_several_tokens(dtype, sdtype, n, w, bias, conv_bias, first):
    b, dm, d = 3, 12, 24
    wts = _weights(dm, d, n, w=w, dtype=dtype, bias=bias, conv_bias=conv_bias)
    cs, ss = _states(b, d, n, w, dtype, sdtype)
    cs2, ss2 = cs.clone(), ss.clone()
    conv_ptr, ssm_ptr = cs.data_ptr(), ss.data_ptr()
    plan = mamba_step_plan(torch.zeros(b, 1, dm, dtype=dtype), None if first else torch.zeros(b, 1, dm, dtype=dtype),
                           cs, ss, wts)
    assert plan.backend == "cpp" and plan.fused
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(5):
            h = torch.randn(b, 1, dm, generator=g, dtype=torch.float64).to(dtype)
            res = None if first else torch.randn(b, 1, dm, generator=g, dtype=torch.float64).to(dtype)
            out, r = plan(h, res)
            ro, rr = mamba_step_ref(h, res, cs2, ss2, wts)
            assert out.shape == (b, 1, dm) and out.dtype == dtype and r.shape == (b, 1, dm)
            assert_close(out, ro, dtype, "out")
            assert_close(r, rr, dtype, "residual")
            assert_close(cs, cs2, dtype, "conv_state")
            assert_close(ss, ss2, dtype if sdtype == dtype else torch.float32, "ssm_state")
    assert cs.data_ptr() == conv_ptr and ss.data_ptr() == ssm_ptr  # updated in place


@needs_cpp
def test_cpp_step_writes_a_strided_conv_state_where_it_lies():
    b, dm, d, n, w = 2, 12, 24, 16, 4
    wts = _weights(dm, d, n, w=w)
    big, ss = torch.randn(b, d, w + 5), torch.randn(b, d, n)
    cs = big[..., 6:]  # (b, d, 3) view, as a cached forward leaves it
    cs2, ss2, keep = cs.clone(), ss.clone(), big[..., :6].clone()
    h, res = torch.randn(b, 1, dm), torch.randn(b, 1, dm)
    with torch.no_grad():
        out, _ = mamba_step(h, res, cs, ss, wts)
        ro, _ = mamba_step_ref(h, res, cs2, ss2, wts)
    assert_close(out, ro, torch.float32, "out")
    assert_close(cs, cs2, torch.float32, "conv_state")
    assert torch.equal(big[..., :6], keep)


def test_reference_twin_is_the_mixer_step_spelled_out():
    """The reference's state update is selective_state_update_ref on the conv output (checked by hand)."""
    b, dm, d, n, w = 2, 8, 16, 4, 3
    wts = _weights(dm, d, n, rank=2, w=w, conv_bias=True)
    cs, ss = _states(b, d, n, w, torch.float32)
    h = torch.randn(b, 1, dm)
    cs0, ss0 = cs.clone(), ss.clone()
    out, r = mamba_step_ref(h, None, cs, ss, wts)
    hn = h[:, 0] * torch.rsqrt(h[:, 0].pow(2).mean(-1, keepdim=True) + 1e-5) * wts.norm_weight
    x, z = (hn @ wts.in_proj_weight.t()).chunk(2, -1)
    win = torch.cat([cs0, x[..., None]], -1)
    xc = torch.nn.functional.silu((win * wts.conv_weight).sum(-1) + wts.conv_bias)
    dbl = xc @ wts.x_proj_weight.t()
    y = selective_state_update_ref(ss0, xc, dbl[:, :2] @ wts.dt_proj_weight.t(), wts.A, dbl[:, 2:2 + n],
                                   dbl[:, 2 + n:], wts.D, z, wts.dt_proj_bias, True)
    assert_close(out[:, 0], y @ wts.out_proj_weight.t(), torch.float32, "out")
    assert r is h and torch.equal(cs, win[..., 1:]) and torch.equal(ss, ss0)


def test_plan_falls_back_to_the_reference_where_no_kernel_runs_the_call():
    b, dm, d, n = 2, 12, 24, 16
    h = torch.randn(b, 1, dm)
    wts = _weights(dm, d, n)
    cs, ss = _states(b, d, n, 4, torch.float32)
    with use_backend("ref"):
        assert mamba_step_plan(h, None, cs, ss, wts).backend == "ref"
    grad = wts._replace(in_proj_weight=wts.in_proj_weight.clone().requires_grad_())
    plan = mamba_step_plan(h, None, cs, ss, grad)
    assert plan.backend == "ref" and not plan.fused  # the C++ step has no backward
    with torch.no_grad():
        assert mamba_step_plan(h, None, cs, ss, grad).backend == ("cpp" if cpu.available() else "ref")
    half = StepWeights(*(t.bfloat16() if isinstance(t, torch.Tensor) else t for t in wts))
    assert mamba_step_plan(h.bfloat16(), None, cs.bfloat16(), ss, half).backend == "ref"
    mixed = wts._replace(D=wts.D.double())
    assert mamba_step_plan(h, None, cs, ss, mixed).backend == "ref"


@pytest.mark.parametrize("change,expect", [
    (dict(hidden=torch.randn(2, 2, 12)), "hidden: expected a tensor of shape (b, 1, d_model)"),
    (dict(residual=torch.randn(2, 1, 11)), "residual: expected shape (2, 1, 12)"),
    (dict(conv_state=torch.randn(3, 24, 3)), "conv_state: expected a tensor of shape (2, d_inner, d_conv - 1)"),
    (dict(ssm_state=torch.randn(2, 24, 8)), "ssm_state: expected shape (2, 24, 16)"),
    (dict(in_proj_weight=torch.randn(48, 11)), "in_proj_weight: expected shape (48, 12)"),
    (dict(conv_weight=torch.randn(24, 3)), "conv_weight: expected shape (24, 4)"),
    (dict(x_proj_weight=torch.randn(30, 24)), "x_proj_weight: expected shape (35, 24)"),
    (dict(out_proj_weight=torch.randn(12, 23)), "out_proj_weight: expected shape (12, 24)"),
])
def test_step_rejects_bad_arguments(change, expect):
    wts = _weights()
    cs, ss = _states(2, 24, 16, 4, torch.float32)
    args = dict(hidden=torch.randn(2, 1, 12), residual=torch.randn(2, 1, 12), conv_state=cs, ssm_state=ss)
    wchange = {k: v for k, v in change.items() if k in StepWeights._fields}
    args.update({k: v for k, v in change.items() if k not in StepWeights._fields})
    with pytest.raises(ValueError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        mamba_step(**args, weights=wts._replace(**wchange))


@needs_cpp
def test_a_compiled_step_that_disagrees_with_its_reference_is_dropped(monkeypatch, capsys):
    """The first token of a compiled backend is checked against the reference twin (once per process
    and dtype): a wrong kernel is dropped for mamba_step and the step runs on the next backend."""
    import genomamba.ops as ops
    from genomamba.ops import dispatch

    monkeypatch.setattr(ops, "_VERIFIED", set())
    monkeypatch.setattr(dispatch, "_broken", set())
    real = cpu.mamba_step

    def off_by_one(*args):
        out, res = real(*args)
        return out + 1.0, res

    monkeypatch.setattr(cpu, "mamba_step", off_by_one)
    b, dm, d, n = 2, 12, 24, 16
    h, r = torch.randn(b, 1, dm), torch.randn(b, 1, dm)
    wts = _weights(dm, d, n)
    cs, ss = _states(b, d, n, 4, torch.float32)
    want = mamba_step_ref(h, r, cs.clone(), ss.clone(), wts)
    plan = mamba_step_plan(h, r, cs, ss, wts)
    assert plan.backend == "cpp"
    out, res = plan(h, r)
    assert plan.backend == "ref"
    assert_close(out, want[0], torch.float32)
    assert_close(res, want[1], torch.float32)
    assert "cpp mamba_step gave out values that differ from the reference" in capsys.readouterr().err
    assert mamba_step_plan(h, r, cs, ss, wts).backend == "ref"  # for the rest of the process
