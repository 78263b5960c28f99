"""The Triton mamba_step on CPU through Triton's interpreter (TRITON_INTERPRET=1): each kernel vs its
reference twin, and the whole step vs mamba_step_ref token after token, states updated in place.

Tiny shapes (the interpreter is slow). On a CUDA machine this module skips: tests/gpu/test_step_gpu.py
runs the same kernels compiled, in every dtype, at the model level.
"""

import os

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("CUDA present: the compiled kernels are tested in tests/gpu", allow_module_level=True)
# must be set before the kernel modules are imported (triton.jit decides at decoration time)
os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

import genomamba.ops as ops  # noqa: E402
from genomamba.ops import StepWeights, mamba_step_plan, mamba_step_ref  # noqa: E402
from genomamba.ops.reference import add_rms_norm_ref, conv_step_ref  # noqa: E402
from genomamba.ops.triton import step  # noqa: E402
from tests.ops.tolerances import assert_close  # noqa: E402

F32 = torch.float32


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _weights(dm=8, d=12, n=4, rank=2, w=4, bias=False, conv_bias=True, residual_in_fp32=False, seed=0):
    g = _gen(seed)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    a_log = torch.log(torch.rand(d, n, generator=g).add(0.5) * torch.arange(1, n + 1))
    return StepWeights(
        norm_weight=1 + r(dm), norm_eps=1e-5,
        in_proj_weight=r(2 * d, dm), in_proj_bias=r(2 * d) if bias else None,
        conv_weight=r(d, w), conv_bias=r(d) if conv_bias else None,
        x_proj_weight=r(rank + 2 * n, d), dt_proj_weight=r(d, rank), dt_proj_bias=r(d) - 2.0,
        A=-torch.exp(a_log), A_log=a_log, D=1 + r(d), out_proj_weight=r(dm, d),
        out_proj_bias=r(dm) if bias else None, residual_in_fp32=residual_in_fp32,
    )


# ----------------------------------------------------------------------------- add + RMSNorm


@pytest.mark.parametrize("hdt,rdt,wdt,up", [
    (F32, F32, F32, False),
    (F32, None, F32, False),  # first block: residual' is hidden itself
    (torch.bfloat16, torch.float32, torch.bfloat16, True),  # residual_in_fp32 in a bf16 model
    (torch.float16, None, torch.float16, True),  # first block of an fp16 model: residual' upcast
    (torch.float16, torch.float16, torch.float16, False),  # residual' rounded to fp16
    (torch.bfloat16, torch.bfloat16, torch.bfloat16, False),  # ... and to bf16
])
def test_add_rmsnorm_matches_its_twin(hdt, rdt, wdt, up):
    b, dm = 3, 24  # dm not a power of two: a masked tail
    g = _gen(0)
    hidden = torch.randn(b, 2 * dm, generator=g)[:, ::2].to(hdt)  # a strided view
    residual = None if rdt is None else torch.randn(b, dm, generator=g).to(rdt)
    weight = (1 + 0.3 * torch.randn(dm, generator=g)).to(wdt)
    out, res = step.add_rmsnorm(hidden, residual, weight, 1e-5, up)
    rout, rres = add_rms_norm_ref(hidden, residual, weight, 1e-5, up)
    assert out.dtype == rout.dtype == wdt, (out.dtype, rout.dtype)
    assert res.dtype == rres.dtype, (res.dtype, rres.dtype)
    if res.dtype == torch.bfloat16:  # Triton's interpreter truncates to bf16 (compiled kernels round:
        assert_close(res, rres, res.dtype, "residual'")  # tests/gpu checks those bit for bit)
    else:
        assert torch.equal(res, rres), "residual' must equal torch's add bit for bit"
    assert_close(out, rout, wdt, "normed")
    if residual is None and not up:
        assert res.data_ptr() == hidden.data_ptr()


# ----------------------------------------------------------------------------- conv step


@pytest.mark.parametrize("w", [1, 2, 3, 4])
@pytest.mark.parametrize("conv_bias", [True, False])
def test_conv_step_matches_its_twin_and_rolls_the_state_in_place(w, conv_bias):
    b, d = 2, 12
    g = _gen(w)
    weight = torch.randn(d, w, generator=g) * 0.5
    bias = torch.randn(d, generator=g) if conv_bias else None
    big = torch.randn(b, d, w + 3, generator=g)
    state = big[..., 2:2 + w - 1]  # a strided view, as a cached forward leaves it
    state_ref, keep = state.clone(), big.clone()
    ptr = state.data_ptr()
    for t in range(w + 1):  # more tokens than the window: every column gets rolled out
        xz = torch.randn(b, 2 * d, generator=g)
        x = xz[:, :d]  # the x half of in_proj's output: a strided view
        out = step.conv_step(x, state, weight, bias)
        ref = conv_step_ref(x, state_ref, weight, bias)
        assert_close(out, ref, F32, f"conv out, token {t}")
        assert torch.equal(state, state_ref), f"conv_state after token {t}"
    assert state.data_ptr() == ptr
    outside = torch.ones_like(big, dtype=torch.bool)
    outside[..., 2:2 + w - 1] = False
    assert torch.equal(big[outside], keep[outside]), "the roll wrote outside conv_state"


def test_conv_step_twin_is_the_causal_conv_one_token_at_a_time():
    """conv_step_ref token after token equals causal_conv1d_ref over the whole sequence."""
    b, d, w, l = 2, 6, 4, 7
    g = _gen(3)
    x = torch.randn(b, d, l, generator=g)
    weight, bias = torch.randn(d, w, generator=g), torch.randn(d, generator=g)
    state = torch.zeros(b, d, w - 1)
    outs = [conv_step_ref(x[..., t], state, weight, bias) for t in range(l)]
    whole, final = ops.causal_conv1d_ref(x, weight, bias, activation="silu", return_final_state=True)
    torch.testing.assert_close(torch.stack(outs, -1), whole)
    torch.testing.assert_close(state, final)


# ----------------------------------------------------------------------------- the whole step


CASES = [  # (d_conv, conv bias, in/out bias, first block, residual_in_fp32)
    (4, True, False, False, True),
    (4, False, True, True, False),
    (3, True, True, True, True),
    (2, False, False, False, False),
    (1, True, True, False, True),  # no conv state at all
]


@pytest.fixture(params=["composed", "hybrid", "fused"])
def variant(request, monkeypatch):
    """Every Triton step: seven launches with cuBLAS matmuls, six with dt_proj inside the state
    update, or five with norm + in_proj in Triton as well."""
    monkeypatch.setattr(step, "VARIANT", request.param)
    return request.param


@pytest.mark.parametrize("w,conv_bias,bias,first,up", CASES)
def test_triton_step_matches_the_reference_over_several_tokens(w, conv_bias, bias, first, up, variant):
    b, dm, d, n, rank = 2, 8, 12, 4, 2
    wts = _weights(dm, d, n, rank, w, bias=bias, conv_bias=conv_bias, residual_in_fp32=up)
    g = _gen(1)
    big = torch.randn(b, d, w + 2, generator=g)
    cs = big[..., 3:]  # strided conv_state, w - 1 columns
    ss = torch.randn(b, d, n, generator=g)
    cs2, ss2 = cs.clone(), ss.clone()
    ptrs = (cs.data_ptr(), ss.data_ptr())
    h0 = torch.zeros(b, 1, dm)
    with torch.no_grad(), ops.use_backend("triton"):
        plan = mamba_step_plan(h0, None if first else h0, cs, ss, wts)
        assert plan.backend == "triton" and plan.fused
        for t in range(4):
            h = torch.randn(b, 1, dm, generator=g)
            res = None if first else torch.randn(b, 1, dm, generator=g)
            out, r = plan(h, res)
            ro, rr = mamba_step_ref(h, res, cs2, ss2, wts)
            assert out.shape == (b, 1, dm) and out.dtype == F32 and r.shape == (b, 1, dm)
            assert_close(out, ro, F32, f"out, token {t}")
            assert torch.equal(r, rr), f"residual', token {t}"
            assert_close(cs, cs2, F32, f"conv_state, token {t}")
            assert_close(ss, ss2, F32, f"ssm_state, token {t}")
    assert (cs.data_ptr(), ss.data_ptr()) == ptrs, "the states must be updated in place"


@pytest.mark.parametrize("b,up", [(1, True), (17, False)])  # 17 rows: two row tiles of the fused products
def test_fused_step_in_half_precision_matches_the_reference(b, up):
    """The fused step of an fp16 block, token after token: the products accumulate in fp32 and round
    to fp16 where torch's matmuls do. (bf16 runs compiled in tests/gpu: the interpreter's bf16 dot
    product is not exact.)"""
    h16 = torch.float16
    dm, d, n, rank = 40, 72, 4, 3  # more than one 64-wide tile of channels and of in_proj outputs
    wts = _weights(dm, d, n, rank, 4, bias=True, residual_in_fp32=up)
    keep32 = ("A", "A_log", "D", "dt_proj_bias")
    wts = wts._replace(**{k: v.to(h16) for k, v in wts._asdict().items()
                          if isinstance(v, torch.Tensor) and k not in keep32})
    g = _gen(7)
    cs, ss = torch.randn(b, d, 3, generator=g).to(h16), torch.randn(b, d, n, generator=g)
    cs2, ss2 = cs.clone(), ss.clone()
    for t in range(3):
        h = torch.randn(b, 1, dm, generator=g).to(h16)
        res = torch.randn(b, 1, dm, generator=g).to(torch.float32 if up else h16)
        out, r = step.mamba_step_fused(h, res, cs, ss, wts)
        ro, rr = mamba_step_ref(h, res, cs2, ss2, wts)
        assert out.dtype == ro.dtype == h16 and r.dtype == rr.dtype
        assert torch.equal(r, rr), f"residual', token {t}"
        assert_close(out, ro, h16, f"out, token {t}")
        assert_close(cs, cs2, h16, f"conv_state, token {t}")
        assert_close(ss, ss2, h16, f"ssm_state, token {t}")


def test_the_step_variant_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(step.ENV_VARIANT, "fused")
    assert step._variant() == "fused"
    monkeypatch.setenv(step.ENV_VARIANT, "unrolled")
    with pytest.raises(ValueError, match="GENOMAMBA_TRITON_STEP='unrolled': expected one of composed, hybrid, fused"):
        step._variant()


def test_triton_step_reads_A_log_at_every_call(variant):
    """A changed in place between tokens (training between generations) is seen by the next token
    through the same plan: the step computes A = -exp(A_log) itself."""
    b, dm, d, n = 2, 8, 12, 4
    wts = _weights(dm, d, n)
    g = _gen(5)
    cs, ss = torch.randn(b, d, 3, generator=g), torch.randn(b, d, n, generator=g)
    cs2, ss2 = cs.clone(), ss.clone()
    h = torch.randn(b, 1, dm, generator=g)
    with torch.no_grad(), ops.use_backend("triton"):
        plan = mamba_step_plan(h, None, cs, ss, wts)
        plan(h, None)
        mamba_step_ref(h, None, cs2, ss2, wts)
        wts.A_log.add_(0.7)
        out, _ = plan(h, None)
    ro, _ = mamba_step_ref(h, None, cs2, ss2, wts._replace(A=-torch.exp(wts.A_log)))
    assert_close(out, ro, F32, "out after A_log changed")
    assert_close(ss, ss2, F32, "ssm_state after A_log changed")


def test_triton_step_refuses_gradients_and_foreign_state_dtypes(monkeypatch, capsys):
    monkeypatch.setattr(ops.dispatch, "_notices", set())
    b, dm, d, n = 2, 8, 12, 4
    wts = _weights(dm, d, n)
    h = torch.randn(b, 1, dm)
    cs, ss = torch.randn(b, d, 3), torch.randn(b, d, n)
    grad = wts._replace(in_proj_weight=wts.in_proj_weight.clone().requires_grad_())
    with ops.use_backend("triton"):
        assert mamba_step_plan(h, None, cs, ss, grad).backend == "ref"
        assert "triton has no backward for mamba_step; using ref" in capsys.readouterr().err
        half = StepWeights(*(t.bfloat16() if isinstance(t, torch.Tensor) else t for t in wts))
        assert mamba_step_plan(h.bfloat16(), None, cs.bfloat16(), ss.bfloat16(), half).backend == "ref"
        assert "keeps ssm_state in float32" in capsys.readouterr().err
        f64 = StepWeights(*(t.double() if isinstance(t, torch.Tensor) else t for t in wts))
        assert mamba_step_plan(h.double(), None, cs.double(), ss.double(), f64).backend != "triton"


def test_triton_step_is_only_chosen_on_cuda():
    assert ops.dispatch.TABLE["mamba_step"]["cuda"] == ("triton", "ref")
    assert "triton" not in ops.dispatch.TABLE["mamba_step"]["cpu"]
    assert "triton" not in ops.dispatch.TABLE["mamba_step"]["*"]


class _CompileFailed(Exception):
    """Stands for an error raised by Triton's compiler (the backend tells those by their module)."""


_CompileFailed.__module__ = "triton.compiler.errors"


def test_a_step_kernel_that_fails_to_compile_hands_the_step_down_with_the_states_untouched(monkeypatch, capsys):
    """The conv kernel fails to compile after the norm ran: the plan drops triton for mamba_step,
    and the next backend's step runs from the states as they were."""
    b, dm, d, n = 2, 8, 12, 4
    wts = _weights(dm, d, n)
    g = _gen(7)
    cs, ss = torch.randn(b, d, 3, generator=g), torch.randn(b, d, n, generator=g)
    cs2, ss2 = cs.clone(), ss.clone()
    h = torch.randn(b, 1, dm, generator=g)

    def broken(*args, **kw):
        ss.add_(1.0)  # as if part of the step had run
        raise _CompileFailed("kernel did not compile")

    monkeypatch.setattr(step, "conv_step", broken)
    monkeypatch.setattr(ops.dispatch, "_broken", set())
    monkeypatch.setattr(ops.dispatch, "_notices", set())
    with torch.no_grad(), ops.use_backend("triton"):
        plan = mamba_step_plan(h, None, cs, ss, wts)
        out, _ = plan(h, None)
        nxt = ops.dispatch.TABLE["mamba_step"]["cpu"][0] if ops.dispatch.BACKENDS["cpp"].available("cpu") else "ref"
        assert plan.backend == nxt
        assert mamba_step_plan(h, None, cs, ss, wts).backend == nxt
    ro, _ = mamba_step_ref(h, None, cs2, ss2, wts)
    assert_close(out, ro, F32, "out")
    assert_close(cs, cs2, F32, "conv_state (rolled once)")
    assert_close(ss, ss2, F32, "ssm_state (updated once)")
    assert "triton mamba_step failed to compile" in capsys.readouterr().err


def test_a_model_decodes_on_the_triton_step(variant):
    """A tiny MambaLM: a cached prefix then Triton steps equal the full forward (fp32)."""
    from genomamba import MambaConfig, MambaLM

    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=11, d_state=4, pad_vocab_size_multiple=1)).eval()
    ids = torch.randint(0, 11, (2, 6))
    with torch.no_grad():
        full = m(ids)
        with ops.use_backend("triton"):
            cache = m.allocate_cache(2)
            m(ids[:, :3], cache=cache)
            steps = [m.step(ids[:, t], cache) for t in range(3, 6)]
            assert cache.layers[0].step_plan[1].backend == "triton"
    for i, t in enumerate(range(3, 6)):
        assert_close(steps[i], full[:, t], F32, f"logits at position {t}")
