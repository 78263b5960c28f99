"""Triton kernels vs the fp64 oracle on CPU, through Triton's interpreter (TRITON_INTERPRET=1).

Small d and n (the interpreter is slow). The scan is run with 16-token blocks and 2-block chunks
so that l in {1, 7, 31, 32, 33, 120} covers one block, a partial block, chunk - 1, chunk, chunk + 1
and many chunks (the multi-chunk state-passing kernels). On a CUDA machine this module skips:
tests/gpu runs the same kernels compiled.
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
from genomamba.ops.reference import (  # noqa: E402
    causal_conv1d_ref,
    selective_scan_ref,
    selective_state_update_ref,
)
from tests.ops.scan_cases import VARIANTS, fp64_copy, make_scan_inputs, run_with_grads  # noqa: E402
from tests.ops.tolerances import assert_close  # noqa: E402

BL, BLOCKS_PER_CHUNK = 16, 2
CHUNK = BL * BLOCKS_PER_CHUNK


@pytest.fixture(autouse=True)
def _small_tiles():
    from genomamba.ops.triton import scan

    saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in scan.CONFIG.items()}
    for which in ("fwd", "bwd"):
        scan.CONFIG[which].update(BD=4, BL=BL, num_warps=1)
    scan.CONFIG["force_chunk_blocks"] = BLOCKS_PER_CHUNK
    yield
    scan.CONFIG.clear()
    scan.CONFIG.update(saved)


def _triton_scan(**kw):
    with ops.use_backend("triton"):
        return ops.selective_scan(**kw)


def _check_scan(b, d, n, l, dtype, variant, initial_state=True, strided=False):
    kw, _ = make_scan_inputs(b, d, n, l, dtype, variant, initial_state=initial_state, strided=strided)
    out, st, grads = run_with_grads(_triton_scan, kw)
    ref = fp64_copy(kw)
    rout, rst, rgrads = run_with_grads(selective_scan_ref, ref)
    assert out.dtype == dtype and st.dtype == torch.float32
    assert_close(out, rout, dtype, "out")
    assert_close(st, rst, dtype, "final_state")
    for name, gr in grads.items():
        assert gr.dtype == kw[name].dtype, name
        assert_close(gr, rgrads[name], dtype, f"d{name}")


@pytest.mark.parametrize("l", [1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 120])
@pytest.mark.parametrize("variant", VARIANTS, ids=["zDbs", "plain", "z_bias_g2", "D_sp_g4"])
def test_scan_fp32(l, variant):
    _check_scan(1, 8, 4, l, torch.float32, variant)


def test_scan_no_initial_state_strided():
    _check_scan(1, 8, 4, CHUNK + 5, torch.float32, VARIANTS[0], initial_state=False, strided=True)


def test_scan_bf16_odd_n():
    # n = 5 pads the state tile to 8; bf16 inputs, fp32 state
    _check_scan(1, 4, 5, 40, torch.bfloat16, VARIANTS[0])


def test_scan_split_equals_whole():
    kw, _ = make_scan_inputs(1, 4, 4, 70, torch.float32, VARIANTS[0], initial_state=False)
    kw = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    whole, st = _triton_scan(**kw, return_final_state=True)
    first = {k: (v[..., :33] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
    second = {k: (v[..., 33:] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
    o1, s1 = _triton_scan(**first, return_final_state=True)
    o2, s2 = _triton_scan(**second | {"initial_state": s1}, return_final_state=True)
    assert_close(torch.cat([o1, o2], -1), whole, torch.float32, "out")
    assert_close(s2, st, torch.float32, "state")


def test_scan_backward_deterministic():
    kw, _ = make_scan_inputs(1, 8, 4, 50, torch.float32, VARIANTS[2])
    _, _, g1 = run_with_grads(_triton_scan, kw)
    _, _, g2 = run_with_grads(_triton_scan, kw)
    for k in g1:
        assert torch.equal(g1[k], g2[k]), k


def test_scan_under_activation_checkpointing():
    """Gradient checkpointing (non-reentrant) lets a backward unpack each saved tensor only once: the
    scan's backward under it runs and gives the plain backward's gradients (it read one saved
    tensor twice and raised CheckpointError)."""
    from torch.utils.checkpoint import checkpoint

    kw, _ = make_scan_inputs(1, 8, 4, 50, torch.float32, VARIANTS[2])
    _, _, plain = run_with_grads(_triton_scan, kw)
    _, _, ckpt = run_with_grads(lambda **k: checkpoint(_triton_scan, use_reentrant=False, **k), kw)
    assert plain.keys() == ckpt.keys()
    for k in plain:
        assert torch.equal(plain[k], ckpt[k]), k


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_update(groups, dtype):
    b, d, n = 2, 12, 5
    st = torch.randn(b, d, n)
    x, dt, z = (torch.randn(b, d).to(dtype) for _ in range(3))
    A = -(torch.rand(d, n) + 0.1)
    shape = (b, n) if groups is None else (b, groups, n)
    B, C = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    D, bias = torch.randn(d), torch.randn(d)
    ref_st = st.double()
    with ops.use_backend("triton"):
        out = ops.selective_state_update(st, x, dt, A, B, C, D, z, bias, True)
    rout = selective_state_update_ref(ref_st, *(t.double() for t in (x, dt, A, B, C, D, z, bias)), True)
    assert_close(out, rout, dtype, "out")
    assert_close(st, ref_st, dtype, "state")


@pytest.mark.parametrize("w", [1, 2, 3, 4])
@pytest.mark.parametrize("l", [1, 3, 150, 300])
@pytest.mark.parametrize("layout", ["contiguous", "chunk"])
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("act", ["silu", None])
def test_causal_conv1d(w, l, layout, with_h0, act):
    """Read in place: a half of a (b, 2d, l) projection (as the mixer passes it) and a plain tensor."""
    b, d = 2, 20
    leaf = torch.randn(b, 2 * d if layout == "chunk" else d, l, requires_grad=True)
    x = leaf[:, d:] if layout == "chunk" else leaf
    wt = torch.randn(d, w, requires_grad=True)
    bias = torch.randn(d, requires_grad=True)
    h0 = torch.randn(b, d, w - 1, requires_grad=True) if with_h0 else None
    ins = [t for t in (leaf, wt, bias, h0) if t is not None]
    with ops.use_backend("triton"):
        out, fin = ops.causal_conv1d(x, wt, bias, h0, act, True)
    rleaf, rw, rb = (t.detach().double().requires_grad_() for t in (leaf, wt, bias))
    rh0 = h0.detach().double().requires_grad_() if with_h0 else None
    rout, rfin = causal_conv1d_ref(rleaf[:, d:] if layout == "chunk" else rleaf, rw, rb, rh0, act, True)
    assert_close(out, rout, torch.float32, "out")
    assert_close(fin, rfin, torch.float32, "final_state")
    assert fin.data_ptr() != x.data_ptr()
    go, gf = torch.randn_like(out), torch.randn_like(fin)
    grads = torch.autograd.grad((out, fin), ins, (go, gf))
    rins = [t for t in (rleaf, rw, rb, rh0) if t is not None]
    rgrads = torch.autograd.grad((rout, rfin), rins, (go.double(), gf.double()))
    for name, a, r in zip(("x", "weight", "bias", "initial_state"), grads, rgrads):
        assert_close(a, r, torch.float32, f"d{name}")


@pytest.mark.parametrize("b,l,states", [(1, 37, False), (3, 130, False), (2, 2, True), (2, 45, True)])
def test_fused_mixer_with_the_triton_conv(b, l, states):
    """The one-node training mixer with the Triton conv kernels (output written into the function's
    (channels, b * l) layout, gradient read from it; from and to conv and SSM states) and the generic
    scan, in float32, against the per-op mixer in float64: outputs and every gradient."""
    import copy

    from genomamba import MambaConfig
    from genomamba.models.mixer import LayerCache, Mamba
    from genomamba.ops.mixer_fn import GENERIC, Kernels, mixer_forward, triton_conv_pair

    torch.manual_seed(0)
    m = Mamba(MambaConfig(d_model=16, n_layer=1, vocab_size=8, d_state=4, conv_bias=True))
    with torch.no_grad():
        m.conv1d.bias.normal_()
    kernels = Kernels("triton conv", *triton_conv_pair(), GENERIC.scan_forward, GENERIC.scan_backward)
    d, w = m.d_inner, m.d_conv
    h = torch.randn(b, l, 16, requires_grad=True)
    conv0 = torch.randn(b, d, w - 1, requires_grad=True) if states else None
    ssm0 = torch.randn(b, d, 4, requires_grad=True) if states else None
    inputs = [t for t in (h, conv0, ssm0) if t is not None]
    cot = [torch.randn(b, l, 16)] + ([torch.randn(b, d, w - 1), torch.randn(b, d, 4)] if states else [])
    m64 = copy.deepcopy(m).double()
    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
    if states:
        cache = LayerCache(inputs64[1], inputs64[2])
        ref = [m64(inputs64[0], cache=cache), cache.conv_state, cache.ssm_state]
    else:
        ref = [m64(inputs64[0])]
    ref_grads = torch.autograd.grad(ref, inputs64 + list(m64.parameters()), [c.double() for c in cot])
    out = mixer_forward(h, m.in_proj.weight, m.in_proj.bias, m.conv1d.weight[:, 0], m.conv1d.bias, m.x_proj.weight,
                        m.dt_proj.weight, m.dt_proj.bias, -torch.exp(m.A_log), m.D, m.out_proj.weight,
                        m.out_proj.bias, 4, kernels, conv_state=conv0, ssm_state=ssm0, states=states)
    out = list(out) if states else [out]
    grads = torch.autograd.grad(out, inputs + list(m.parameters()), cot)
    for name, a, e in zip(["out", "conv state", "ssm state"], out, ref):
        assert_close(a, e, torch.float32, name)
    names = ["hidden", "conv0", "ssm0"][:len(inputs)] + [n for n, _ in m.named_parameters()]
    for name, a, e in zip(names, grads, ref_grads):
        assert_close(a, e, torch.float32, name)


@pytest.mark.parametrize("w", [1, 2, 3, 4])
@pytest.mark.parametrize("l", [1, 3, 129, 300])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("build", ["vec", "vec_states", "tiles"])
def test_conv_backward_in_place(w, l, bias, silu, build, monkeypatch):
    """The one-kernel conv backward: x and dout read from (channels, b * l)-layout views, dx written
    into one, against the float64 reference's gradients; the 8-token-vector build also with an
    initial state and the final state's gradient (dh0 included), the shifted-tile build without."""
    from genomamba.ops.triton import conv1d

    monkeypatch.setitem(conv1d.CONFIG, "vec", build != "tiles")
    states = build == "vec_states"
    b, d = 3, 20
    xm = torch.randn(2 * d, b * l)  # x in the first d rows, as the mixer lays out xz
    x = xm[:d].view(d, b, l).transpose(0, 1)
    wt, bs = torch.randn(d, w), torch.randn(d) if bias else None
    h0 = torch.randn(b, d, w - 1) if states else None
    g = torch.randn(d, b * l).view(d, b, l).transpose(0, 1)
    gf = torch.randn(b, d, w - 1) if states else None
    dxm = torch.full((2 * d, b * l), float("nan"))
    dx = dxm[:d].view(d, b, l).transpose(0, 1)
    dw, db, dh0 = conv1d.conv_backward_in_place(x, wt, bs, silu, g, dx, h0, gf)
    rx, rw = x.double().requires_grad_(), wt.double().requires_grad_()
    rb = bs.double().requires_grad_() if bias else None
    rh0 = h0.double().requires_grad_() if states else None
    rout, rfin = causal_conv1d_ref(rx, rw, rb, rh0, "silu" if silu else None, True)
    leaves = [t for t in (rx, rw, rb, rh0) if t is not None]
    outs, grads = ([rout, rfin], [g.double(), gf.double()]) if states else ([rout], [g.double()])
    want = dict(zip(["x", "w", "b", "h0"] if bias else ["x", "w", "h0"],
                    torch.autograd.grad(outs, leaves, grads, allow_unused=True)))
    assert_close(dx, want["x"], torch.float32, "dx")
    assert torch.isnan(dxm[d:]).all()  # the other rows untouched
    assert_close(dw, want["w"], torch.float32, "dweight")
    if bias:
        assert_close(db, want["b"], torch.float32, "dbias")
    if states and w > 1:
        assert_close(dh0, want["h0"], torch.float32, "dinitial_state")
    else:
        assert dh0 is None


def test_conv_backward_in_place_states_need_the_vector_build(monkeypatch):
    from genomamba.ops.triton import conv1d

    monkeypatch.setitem(conv1d.CONFIG, "vec", False)
    x, g = torch.randn(1, 4, 9), torch.randn(1, 4, 9)
    with pytest.raises(ValueError, match="GENOMAMBA_CONV_VEC=1"):
        conv1d.conv_backward_in_place(x, torch.randn(4, 4), None, True, g, torch.empty_like(x), torch.randn(1, 4, 3))


@pytest.mark.parametrize("in_place", [True, False])
def test_fused_mixer_with_either_conv_backward(in_place, monkeypatch):
    """A call without states takes the one-kernel conv backward (the default) or, with
    GENOMAMBA_CONV_BWD_IN_PLACE=0, the two-kernel one."""
    from genomamba.ops.triton import conv1d

    monkeypatch.setitem(conv1d.CONFIG, "bwd_in_place", in_place)
    calls = []
    original = conv1d.conv_backward_in_place
    monkeypatch.setattr(conv1d, "conv_backward_in_place", lambda *a: calls.append(1) or original(*a))
    test_fused_mixer_with_the_triton_conv(3, 130, False)
    assert calls == ([1] if in_place else [])
