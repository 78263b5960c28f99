"""The C++ CPU scan (csrc/cpu/) vs the fp64 sequential oracle: output, final state, every gradient.

The kernel is JIT-built on first use into TORCH_EXTENSIONS_DIR (tests/conftest.py points it at the
repo's .cache/), so only the first run pays the ~30-60 s build.
"""

import pytest
import torch

import genomamba.ops.cpu as cpu
from genomamba.ops import backend_for, selective_scan, use_backend
from genomamba.ops.reference import selective_scan_ref
from tests.ops.scan_cases import LENGTHS, VARIANTS, fp64_copy, make_scan_inputs, run_with_grads
from tests.ops.tolerances import assert_close

pytestmark = pytest.mark.skipif(not cpu.available(), reason=f"C++ scan unavailable: {cpu.unavailable_reason}")

# The kernel works in time chunks of this many steps (backward checkpoints); lengths below cross them.
KCHUNK = 256


def _assert_runs_close(run, ref, kw, dtype):
    """(out, state, grads) of a run against a reference run of the same inputs ``kw``."""
    (out, state, grads), (ro, rs, rg) = run, ref
    assert_close(out, ro, dtype, "out")
    assert_close(state, rs, dtype, "final_state")
    assert set(grads) == set(rg)
    for name, g in grads.items():
        assert g.dtype == kw[name].dtype and g.shape == kw[name].shape, name
        assert_close(g, rg[name], dtype, f"grad {name}")


def _check_against_oracle(kw, dtype, state_shape=None):
    run = run_with_grads(cpu.selective_scan, kw)
    out, state, _ = run
    assert out.dtype == kw["u"].dtype
    assert state.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if state_shape is not None:
        assert state.shape == state_shape
    _assert_runs_close(run, run_with_grads(selective_scan_ref, fp64_copy(kw)), kw, dtype)


@pytest.mark.parametrize("l", LENGTHS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_matches_oracle(l, variant, dtype):
    # n = 5: not a multiple of any vector width, so the vector remainder paths run too
    kw, _ = make_scan_inputs(2, 8, 5, l, dtype, variant)
    _check_against_oracle(kw, dtype, state_shape=(2, 8, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strided_inputs(dtype):
    """Non-contiguous u, delta, z and B (a transposed view) give the same result as contiguous ones."""
    kw, _ = make_scan_inputs(2, 6, 16, 301, dtype, VARIANTS[0], strided=True)
    b, d, n, l = 2, 6, 16, 301
    wide = (torch.rand(b, d, 3 * l, dtype=torch.float64) * 0.5 + 0.05).to(dtype)
    kw["delta"] = wide[..., 1::3].requires_grad_()
    kw["z"] = torch.randn(b, d, l, dtype=torch.float64).to(dtype).transpose(1, 2).contiguous().transpose(1, 2)
    kw["B"] = torch.randn(b, l, n, dtype=torch.float64).to(dtype).transpose(1, 2)
    for k in ("z", "B"):
        kw[k].requires_grad_()
    for k in ("u", "delta", "z", "B"):
        assert not kw[k].is_contiguous(), k
    _check_against_oracle(kw, dtype)


def test_channel_blocks_groups_and_chunks():
    """Enough channels that the backward sums dB/dC over multi-channel blocks; groups; several chunks."""
    variant = (True, True, True, True, 4)
    kw, _ = make_scan_inputs(2, 128, 16, 2 * KCHUNK + 37, torch.float64, variant, seed=3)
    _check_against_oracle(kw, torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_fp32(dtype):
    kw, _ = make_scan_inputs(2, 8, 16, 300, dtype, VARIANTS[0])
    _check_against_oracle(kw, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_halves_equal_whole(dtype):
    b, d, n, l, cut = 2, 16, 16, 2 * KCHUNK + 200, KCHUNK + 37  # the cut is mid-chunk
    kw, _ = make_scan_inputs(b, d, n, l, dtype, VARIANTS[2], initial_state=False)
    kw = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}

    def part(sl):
        return {k: (v[..., sl] if torch.is_tensor(v) and v.shape[-1] == l else v) for k, v in kw.items()}

    with use_backend("cpp"):
        whole, s_whole = selective_scan(**kw, return_final_state=True)
        o1, s1 = selective_scan(**part(slice(0, cut)), return_final_state=True)
        o2, s2 = selective_scan(**part(slice(cut, l)), initial_state=s1, return_final_state=True)
    assert_close(torch.cat([o1, o2], -1), whole, dtype, "out")
    assert_close(s2, s_whole, dtype, "final_state")


def _grads_once(kw):
    _, _, grads = run_with_grads(cpu.selective_scan, kw)
    return grads


def test_backward_is_deterministic_across_runs_and_threads():
    """Bit-identical gradients run to run and for 1 vs N threads (dB/dC/dA reductions in fixed order)."""
    variant = (True, True, True, True, 2)
    kw, _ = make_scan_inputs(2, 128, 16, KCHUNK + 100, torch.float32, variant, seed=5)
    first = _grads_once(kw)
    second = _grads_once(kw)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _grads_once(kw)
    finally:
        torch.set_num_threads(threads)
    for name in first:
        assert torch.equal(first[name], second[name]), name
        assert torch.equal(first[name], single[name]), name


def test_partial_cotangents_and_no_grad():
    """Loss on the final state only, on the output only, and a no-grad forward (no checkpoints kept)."""
    kw, _ = make_scan_inputs(1, 4, 8, 300, torch.float64, VARIANTS[0])
    tensors = {k: v for k, v in kw.items() if isinstance(v, torch.Tensor)}
    ref = fp64_copy(kw)
    ref_t = {k: v for k, v in ref.items() if isinstance(v, torch.Tensor)}
    for pick in (0, 1):
        got = torch.autograd.grad(cpu.selective_scan(**kw, return_final_state=True)[pick].sum(),
                                  list(tensors.values()), allow_unused=True)
        exp = torch.autograd.grad(selective_scan_ref(**ref, return_final_state=True)[pick].sum(),
                                  list(ref_t.values()), allow_unused=True)
        for name, g, e in zip(tensors, got, exp):
            g = torch.zeros_like(tensors[name]) if g is None else g
            e = torch.zeros_like(ref_t[name]) if e is None else e
            assert_close(g, e, torch.float64, f"grad {name} (output {pick})")
    with torch.no_grad():
        out = cpu.selective_scan(**kw)
    assert_close(out, selective_scan_ref(**ref).detach(), torch.float64, "no-grad out")


def test_empty_sequence():
    kw, _ = make_scan_inputs(2, 4, 8, 0, torch.float64, VARIANTS[0])
    out, state = cpu.selective_scan(**kw, return_final_state=True)
    assert out.shape == (2, 4, 0)
    assert torch.equal(state, kw["initial_state"].detach())
    (g,) = torch.autograd.grad(state.sum(), [kw["initial_state"]])
    assert torch.equal(g, torch.ones_like(g))


def test_dispatcher_picks_cpp():
    assert backend_for(torch.device("cpu")) == "cpp"
    kw, _ = make_scan_inputs(1, 4, 8, 20, torch.float32, VARIANTS[0])
    with use_backend("cpp"):
        out = selective_scan(**kw)
    assert_close(out, cpu.selective_scan(**kw), torch.float32, "dispatch")


def test_env_disables_build(monkeypatch):
    monkeypatch.setattr(cpu, "_state", None)
    monkeypatch.setattr(cpu, "unavailable_reason", None)
    monkeypatch.setenv("GENOMAMBA_NO_CPP", "1")
    assert cpu.available() is False
    assert "GENOMAMBA_NO_CPP" in cpu.unavailable_reason


@pytest.mark.parametrize("missing", ["compiler", "ninja"])
def test_missing_toolchain_falls_back_with_notice(monkeypatch, capsys, missing):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpu, "_state", None)
    monkeypatch.setattr(cpu, "unavailable_reason", None)
    monkeypatch.delenv("GENOMAMBA_NO_CPP", raising=False)
    if missing == "compiler":
        monkeypatch.setattr(cpu.shutil, "which", lambda name: None)
    else:
        monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    assert cpu.available() is False  # no exception
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "using the torch scan" in err[0] and missing in err[0]


# ----------------------------------------------------------------------------- torch.library / torch.compile


def _op_args(kw, save_ckpt):
    """The prepared arguments genomamba::selective_scan_fwd_cpu takes (as cpu.selective_scan builds them)."""
    ct = torch.float64 if kw["u"].dtype == torch.float64 else torch.float32

    def prep(name):
        t = kw.get(name)
        return None if t is None else cpu._prep(t.detach(), ct).requires_grad_(t.requires_grad)

    Bt, Ct = (cpu._prep_bc(kw[k].detach(), ct).requires_grad_() for k in ("B", "C"))
    return (prep("u"), prep("delta"), prep("A"), Bt, Ct, prep("D"), prep("z"), prep("delta_bias"),
            prep("initial_state"), kw["delta_softplus"], save_ckpt)


@pytest.mark.parametrize("l", [0, 7, KCHUNK + 44])
@pytest.mark.parametrize("variant,initial_state", [(VARIANTS[0], True), (VARIANTS[1], False), (VARIANTS[2], True)])
def test_opcheck_custom_ops(l, variant, initial_state):
    """Schema, fake kernel (shapes incl. the optional final state / checkpoints), autograd registration
    and AOT dispatch of the registered ops, with and without z / D / delta_bias / initial_state."""
    kw, _ = make_scan_inputs(2, 4, 5, l, torch.float32, variant, initial_state=initial_state)
    args = _op_args(kw, True)
    torch.library.opcheck(torch.ops.genomamba.selective_scan_fwd_cpu.default, args)
    # without checkpoints (what a no-grad call runs): no backward, so inputs without grad
    args = [t.detach() if isinstance(t, torch.Tensor) else t for t in _op_args(kw, False)]
    torch.library.opcheck(torch.ops.genomamba.selective_scan_fwd_cpu.default, args)
    u, delta, A, Bt, Ct, D, z, bias, x0, softplus, _ = args = _op_args(kw, True)
    with torch.no_grad():
        out, last, ckpt = torch.ops.genomamba.selective_scan_fwd_cpu(*args)
    assert ckpt.shape == (2, 4, max(1, -(-l // KCHUNK)), 5)
    plain = [None if t is None else t.detach() for t in (u, delta, A, Bt, Ct, D, z, bias)]
    dout, dlast = torch.randn_like(out), torch.randn_like(last)
    for dfinal in (dlast, None):
        torch.library.opcheck(torch.ops.genomamba.selective_scan_bwd_cpu.default,
                              (*plain, ckpt, dout, dfinal, softplus))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("variant,initial_state", [(VARIANTS[0], True), (VARIANTS[3], False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compile_fullgraph_matches_eager(backend, variant, initial_state, dtype):
    """torch.compile(fullgraph=True) through the dispatcher with the cpp backend forced: no graph
    break, and the same output, final state and gradients as eager."""
    kw, _ = make_scan_inputs(2, 8, 16, KCHUNK + 44, dtype, variant, initial_state=initial_state)

    def scan(**kw):
        with use_backend("cpp"):
            return selective_scan(**kw)

    torch._dynamo.reset()
    compiled = torch.compile(scan, fullgraph=True, backend=backend)
    run, eager = run_with_grads(compiled, kw), run_with_grads(scan, kw)
    (out, state, _), (eo, es, _) = run, eager
    assert out.dtype == eo.dtype and state.dtype == es.dtype
    _assert_runs_close(run, eager, kw, dtype)
    with torch.no_grad():  # inference: the forward keeps no checkpoints
        assert_close(compiled(**kw, return_final_state=True)[0], eo.detach(), dtype, "no-grad out")
