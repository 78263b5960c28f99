"""The Triton decode step on CUDA (``mamba_step``: cuda -> triton -> ref) at the kernel and model
level, in fp32, bf16 and fp16; skipped without CUDA.

* the add + RMSNorm kernel equals ``Block._pre`` (residual' bit for bit, dtypes included) and the
  conv-step kernel its twin;
* a cached prefix then Triton steps equal the full forward;
* the Triton step equals the step composed from the reference functionals, token after token;
* ``generate(cuda_graph=True)`` equals ``cuda_graph=False`` token for token, and a captured step
  follows A_log and D changed in place (it is replayed, not captured again).

The prompt passes run on the Triton scan (``use_backend("triton")``), so no CUDA extension is
built here and the module runs in well under a minute.
On a CUDA machine: ``python -m pytest tests/gpu/test_step_gpu.py -q``.
"""

import warnings

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.models import decode

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
pytest.importorskip("triton")

import genomamba.ops as ops  # noqa: E402
from genomamba.ops.reference import add_rms_norm_ref, conv_step_ref  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# normalised error max|got - want| / (max|want| + 1) allowed, by dtype
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
CFG = dict(d_model=64, n_layer=3, vocab_size=50, d_state=16)


@pytest.fixture(autouse=True)
def _triton_first():
    with ops.use_backend("triton"):
        yield


@pytest.fixture(params=["composed", "fused"])
def variant(request, monkeypatch):
    """Both Triton steps (``GENOMAMBA_TRITON_STEP``): cuBLAS matmuls, or the products in Triton."""
    from genomamba.ops.triton import step

    monkeypatch.setattr(step, "VARIANT", request.param)
    return request.param


def _name(dtype):
    return str(dtype).replace("torch.", "")


def model(dtype, **kw):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(**{**CFG, **kw})).eval()
    with torch.no_grad():  # sharper next-token distributions than the init's: no near-ties for argmax
        m.backbone.embedding.weight.mul_(5)
    return m.to("cuda", dtype)


def ids(b, l, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG["vocab_size"], (b, l), generator=g).cuda()


def check(got, want, tol, what):
    """Normalised max error within ``tol``; the message says where and how far."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    g, w = got.double(), want.double()
    diff = (g - w).abs()
    err = float(diff.max()) / (float(w.abs().max()) + 1.0)
    if not err <= tol:  # (NaN fails too)
        where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if diff.numel() else ()
        raise AssertionError(f"{what}: normalised error {err:.3g} > {tol:g} (max |diff| {float(diff.max()):.3g} "
                             f"at {where}: got {float(g[where]):.6g}, want {float(w[where]):.6g}; "
                             f"max |want| {float(w.abs().max()):.3g})")


def backends(cache):
    return [None if c.step_plan is None or c.step_plan[1] is None else c.step_plan[1].backend for c in cache.layers]


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("up", [True, False])
@pytest.mark.parametrize("first", [True, False])
@torch.no_grad()
def test_add_rmsnorm_equals_the_blocks_own_pre_norm(dtype, up, first):
    from genomamba.ops.triton.step import add_rmsnorm

    block = model(dtype, residual_in_fp32=up).backbone.layers[1]
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(4, 1, CFG["d_model"], generator=g, device="cuda").to(dtype)
    rdt = torch.float32 if up else dtype
    residual = None if first else torch.randn(4, 1, CFG["d_model"], generator=g, device="cuda").to(rdt)
    want_n, want_r = block._pre(hidden, residual)
    got_n, got_r = add_rmsnorm(hidden[:, 0], None if residual is None else residual[:, 0], block.norm.weight,
                               block.norm.eps, block.residual_in_fp32)
    assert got_r.dtype == want_r.dtype, f"residual' dtype {got_r.dtype}, Block._pre gives {want_r.dtype}"
    assert got_n.dtype == want_n.dtype, f"normed dtype {got_n.dtype}, Block._pre gives {want_n.dtype}"
    mism = (got_r != want_r[:, 0]).sum().item()
    assert mism == 0, f"residual' differs from torch's add in {mism} elements ({_name(dtype)})"
    check(got_n, want_n[:, 0], TOL[dtype], f"normed ({_name(dtype)}, residual_in_fp32={up}, first={first})")
    twin_n, twin_r = add_rms_norm_ref(hidden[:, 0], None if residual is None else residual[:, 0], block.norm.weight,
                                     block.norm.eps, block.residual_in_fp32)
    assert torch.equal(twin_r, got_r) and twin_n.dtype == got_n.dtype
    check(got_n, twin_n, TOL[dtype], "normed vs add_rms_norm_ref")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", [2, 3, 4])
@torch.no_grad()
def test_conv_step_equals_its_twin(dtype, w):
    from genomamba.ops.triton.step import conv_step

    b, d = 3, 300  # d over one channel block: two programs along d, a masked tail
    g = torch.Generator(device="cuda").manual_seed(w)
    weight = (0.5 * torch.randn(d, w, generator=g, device="cuda")).to(dtype)
    bias = torch.randn(d, generator=g, device="cuda").to(dtype)
    state = torch.randn(b, d, w - 1, generator=g, device="cuda").to(dtype)
    state_ref, ptr = state.clone(), state.data_ptr()
    for t in range(w + 1):
        xz = torch.randn(b, 2 * d, generator=g, device="cuda").to(dtype)
        out = conv_step(xz[:, :d], state, weight, bias)
        want = conv_step_ref(xz[:, :d], state_ref, weight, bias)
        check(out, want, TOL[dtype], f"conv out, token {t} ({_name(dtype)}, w={w})")
        assert torch.equal(state, state_ref), f"conv_state after token {t} ({_name(dtype)}, w={w})"
    assert state.data_ptr() == ptr


# ----------------------------------------------------------------------------- model level


@pytest.mark.parametrize("dtype", DTYPES)
@torch.no_grad()
def test_cached_triton_steps_equal_the_full_forward(dtype, variant):
    m = model(dtype)
    x = ids(2, 16)
    full = m(x)
    cache = m.allocate_cache(2, device="cuda")
    m(x[:, :8], cache=cache)
    for t in range(8, 16):
        logits = m.step(x[:, t], cache)
        assert backends(cache) == ["triton"] * CFG["n_layer"], f"step backends per layer: {backends(cache)}"
        # the prompt pass (chunked scan) and the steps sum in different orders and, in half types,
        # round differently; the error grows with t
        check(logits, full[:, t], 1e-3 if dtype == torch.float32 else 3 * TOL[dtype],
              f"logits at position {t} ({_name(dtype)}): step vs full forward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("up", [True, False])
@torch.no_grad()
def test_triton_step_equals_the_reference_step(dtype, up, variant):
    """Same prefix, then token after token: Triton step vs the step composed from the reference
    functionals (``use_backend("ref")``); residual' bit for bit, states and outputs close."""
    m = model(dtype, residual_in_fp32=up)
    x = ids(3, 12, seed=2)
    cache = m.allocate_cache(3, device="cuda")
    m(x[:, :4], cache=cache)
    ref = m.allocate_cache(3, device="cuda")
    for mine, theirs in zip(ref.layers, cache.layers):
        mine.conv_state.copy_(theirs.conv_state)
        mine.ssm_state.copy_(theirs.ssm_state)
    ptrs = [(c.conv_state.data_ptr(), c.ssm_state.data_ptr()) for c in cache.layers]
    for t in range(4, 12):
        hidden = m.backbone.embedding(x[:, t:t + 1])
        h_ref, r_ref, r = hidden, None, None
        h = hidden
        for i, block in enumerate(m.backbone.layers):
            h, r = block.step(h, r, cache.layers[i])
            with ops.use_backend("ref"):
                h_ref, r_ref = block.step(h_ref, r_ref, ref.layers[i])
            what = f"layer {i}, token {t} ({_name(dtype)}, residual_in_fp32={up})"
            assert cache.layers[i].step_plan[1].backend == "triton", what
            assert ref.layers[i].step_plan[1] is None, what  # composed from the functionals
            assert r.dtype == r_ref.dtype and h.dtype == h_ref.dtype, f"{what}: dtypes {r.dtype}/{h.dtype}"
            assert torch.equal(r, r_ref), f"{what}: residual' differs from torch's add"
            check(h, h_ref, TOL[dtype], f"{what}: block out")
            check(cache.layers[i].conv_state, ref.layers[i].conv_state, TOL[dtype], f"{what}: conv_state")
            check(cache.layers[i].ssm_state, ref.layers[i].ssm_state, TOL[dtype], f"{what}: ssm_state")
            h_ref, r_ref = h, r  # each layer compared from the same input
            ref.layers[i].conv_state.copy_(cache.layers[i].conv_state)
            ref.layers[i].ssm_state.copy_(cache.layers[i].ssm_state)
    assert ptrs == [(c.conv_state.data_ptr(), c.ssm_state.data_ptr()) for c in cache.layers], \
        "the Triton step replaced its states instead of updating them in place"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3, 17])
@torch.no_grad()
def test_graph_decode_on_the_triton_step_equals_eager_decode(dtype, batch, variant):
    m = model(dtype)
    x = ids(batch, 7, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture warns: that must not happen here
        graphed = m.generate(x, 30, temperature=0, cuda_graph=True)
    keys = [k for k, g in decode.graphs_of(m).graphs.items() if g is not None]
    assert keys == [(batch, dtype, "cuda:0")], f"captured graphs: {keys}"
    eager = m.generate(x, 30, temperature=0, cuda_graph=False)
    bad = (graphed != eager).any(0).nonzero().flatten().tolist()
    assert not bad, f"{_name(dtype)} batch {batch}: graph and eager tokens differ at positions {bad}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_a_captured_step_follows_A_log_and_D_changed_in_place(dtype):
    """Training between generations changes A_log and D in place (same storage): the graph is
    replayed, not captured again, and must read the new values (A = -exp(A_log) inside the step)."""
    m = model(dtype)
    x = ids(2, 6, seed=4)
    m.generate(x, 3, temperature=0)
    graph = decode.graphs_of(m).get(m, 2, x.device)
    assert graph is not None, "the decode step was not captured"

    def replay_vs_eager():
        with torch.inference_mode():  # generate made the graph's static tensors in inference mode
            cache = m.allocate_cache(2, device="cuda")
            m(x, cache=cache)
            graph.load(cache)
            graph.ids.copy_(x[:, -1])
            got = graph.replay().clone()
            return got, m.step(x[:, -1], cache)

    before, _ = replay_vs_eager()
    for block in m.backbone.layers:
        block.mixer.A_log.add_(0.5)
        block.mixer.D.mul_(1.5)
    assert decode.graphs_of(m).get(m, 2, x.device) is graph, "in-place changes must not recapture"
    got, want = replay_vs_eager()
    assert not torch.allclose(before.float(), want.float()), "the change did not move the logits: no test"
    check(got, want, 1e-6, f"replayed step after A_log/D changed in place ({_name(dtype)})")
