"""The whole-model CUDA decode step: equal to the layered step and to a float64 oracle on the CPU,
for several shapes, dtypes and batch sizes; greedy tokens equal with and without it; skipped
without CUDA.

On a CUDA machine: ``python -m pytest tests/gpu/test_model_step_gpu.py -q``.
"""

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.ops.cuda import model_step as ms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SHAPES = {
    "default": dict(d_model=64, n_layer=3, vocab_size=50),
    "odd": dict(d_model=40, n_layer=2, vocab_size=37, d_state=8, d_conv=2, dt_rank=5, bias=True, conv_bias=False,
                residual_in_fp32=False),
    "wide": dict(d_model=256, n_layer=2, vocab_size=1000, d_state=32, d_conv=3),
}


def model(shape="default", dtype=torch.float32, device="cuda", built_in_dtype=False):
    """``built_in_dtype``: made in ``dtype`` (A_log and D then stay float32), else converted to it."""
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(**SHAPES[shape]), dtype=dtype if built_in_dtype else None).eval()
    with torch.no_grad():
        m.backbone.embedding.weight.mul_(5)
        for p in m.parameters():  # nonzero biases and a varied D: every term of the step matters
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m.to(device) if built_in_dtype else m.to(device, dtype)


def random_states(cache, seed=0):
    g = torch.Generator().manual_seed(seed)
    for c in cache.layers:
        c.conv_state.copy_(torch.randn(c.conv_state.shape, generator=g))
        c.ssm_state.copy_(torch.randn(c.ssm_state.shape, generator=g))


def step_pair(m, ids, monkeypatch, mode):
    cache = m.allocate_cache(ids.numel())
    random_states(cache)
    monkeypatch.setenv("GENOMAMBA_DECODE_STEP", mode)
    logits = m.step(ids, cache)
    return logits, cache


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3, 4])
@torch.no_grad()
def test_whole_model_step_equals_layered_step(shape, dtype, batch, monkeypatch):
    m = model(shape, dtype)
    ids = torch.randint(0, m.config.vocab_size, (batch,), generator=torch.Generator().manual_seed(batch)).cuda()
    assert ms.unsupported(m, ids, m.allocate_cache(batch)) is None
    calls = []
    real = ms._launch
    monkeypatch.setattr(ms, "_launch", lambda *a: calls.append(1) or real(*a))
    got, gc = step_pair(m, ids, monkeypatch, "model")
    assert calls and not ms._OFF, f"the whole-model kernel did not run: {ms._OFF}"
    want, wc = step_pair(m, ids, monkeypatch, "layers")
    tol = 2e-4 if dtype == torch.float32 else 3e-2
    scale = want.float().abs().max() + 1
    assert (got.float() - want.float()).abs().max() <= tol * scale
    for a, b in zip(gc.layers, wc.layers):
        assert torch.allclose(a.ssm_state, b.ssm_state, atol=tol * (b.ssm_state.abs().max() + 1), rtol=0)
        assert torch.allclose(a.conv_state.float(), b.conv_state.float(), atol=tol * 10, rtol=0)


@pytest.mark.parametrize("shape", ["default", "odd"])
@torch.no_grad()
def test_whole_model_step_against_float64_oracle(shape, monkeypatch):
    m = model(shape, torch.float32)
    oracle = model(shape, torch.float64, device="cpu")
    ids = torch.tensor([3, 7, 1, 0])
    cache, ref_cache = m.allocate_cache(4), oracle.allocate_cache(4)
    random_states(cache)
    random_states(ref_cache)
    monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "model")
    for t in range(5):  # several tokens: states carried by the kernel from one launch to the next
        got = m.step(ids.cuda() + t, cache)
        want = oracle.step(ids + t, ref_cache)
        assert (got.double().cpu() - want).abs().max() <= 1e-4 * (want.abs().max() + 1)
    for a, b in zip(cache.layers, ref_cache.layers):
        assert (a.ssm_state.double().cpu() - b.ssm_state).abs().max() <= 1e-4 * (b.ssm_state.abs().max() + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cuda_graph", [False, True])
@torch.no_grad()
def test_greedy_tokens_equal_with_and_without_the_kernel(dtype, cuda_graph, monkeypatch):
    m = model("default", dtype)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 50, (n,), generator=g).cuda() for n in (7, 19, 3)]
    monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "layers")
    want = m.generate(prompts, 40, temperature=0, cuda_graph=cuda_graph)
    monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "model")
    got = m.generate(prompts, 40, temperature=0, cuda_graph=cuda_graph)
    for p, a, b in zip(prompts, got, want):
        # float32: every token; float16: the first new ones (a rounding-level near-tie later would
        # send the two continuations apart for good, which says nothing about the kernel)
        n = a.numel() if dtype == torch.float32 else p.numel() + 8
        assert torch.equal(a[:n], b[:n])


@torch.no_grad()
def test_batches_above_the_kernel_limit_step_by_layers(monkeypatch):
    m = model()
    ids = torch.arange(ms.MAX_BATCH + 1).cuda() % 50
    cache = m.allocate_cache(ids.numel())
    assert ms.unsupported(m, ids, cache).startswith("batch")
    monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "model")
    got = m.step(ids, cache)
    monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "layers")
    want = m.step(ids, m.allocate_cache(ids.numel()))
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_half_model_with_float32_a_log_and_d(dtype, monkeypatch):
    m = model("default", dtype, built_in_dtype=True)
    assert m.backbone.layers[0].mixer.A_log.dtype == torch.float32
    ids = torch.tensor([4, 9]).cuda()
    assert ms.unsupported(m, ids, m.allocate_cache(2)) is None
    got, gc = step_pair(m, ids, monkeypatch, "model")
    assert ms.step_kind(gc) == "model" and not ms._OFF
    want, wc = step_pair(m, ids, monkeypatch, "layers")
    assert (got.float() - want.float()).abs().max() <= 3e-2 * (want.float().abs().max() + 1)
    for a, b in zip(gc.layers, wc.layers):
        assert torch.allclose(a.ssm_state, b.ssm_state, atol=3e-2 * (b.ssm_state.abs().max() + 1), rtol=0)


# ---- batch 5 to 64: the tensor-core kernel (model_step_mma.cu), on with GENOMAMBA_DECODE_MMA=1
SHAPES["130m"] = dict(d_model=768, n_layer=2, vocab_size=50277)


@pytest.mark.parametrize("shape", ["default", "wide", "130m"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [5, 16, 17, 40, 64])
@torch.no_grad()
def test_tensor_core_step_equals_layered_step(shape, dtype, batch, monkeypatch):
    monkeypatch.setenv("GENOMAMBA_DECODE_MMA", "1")
    m = model(shape, dtype)
    ids = torch.randint(0, m.config.vocab_size, (batch,), generator=torch.Generator().manual_seed(batch)).cuda()
    assert ms.unsupported(m, ids, m.allocate_cache(batch)) is None
    got, gc = step_pair(m, ids, monkeypatch, "model")
    assert ms.step_kind(gc) == "model (tensor cores)", ms.step_kind(gc)
    want, wc = step_pair(m, ids, monkeypatch, "layers")
    scale = want.float().abs().max() + 1
    assert (got.float() - want.float()).abs().max() <= 3e-2 * scale
    for a, b in zip(gc.layers, wc.layers):
        assert torch.allclose(a.ssm_state, b.ssm_state, atol=3e-2 * (b.ssm_state.abs().max() + 1), rtol=0)
        ref = b.conv_state.float()
        assert torch.allclose(a.conv_state.float(), ref, atol=3e-2 * (ref.abs().max() + 1), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_tensor_core_step_carries_states_and_is_deterministic(dtype, monkeypatch):
    """Five tokens through the kernel against the layered step from the same states (what one
    launch leaves, the next reads), and the same launch twice gives the same bits."""
    monkeypatch.setenv("GENOMAMBA_DECODE_MMA", "1")
    m = model("wide", dtype)
    b = 24
    ids = torch.randint(0, 1000, (b,), generator=torch.Generator().manual_seed(1)).cuda()
    cache, ref = m.allocate_cache(b), m.allocate_cache(b)
    random_states(cache)
    random_states(ref)
    for t in range(5):
        monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "model")
        twin = cache.clone()
        got = m.step((ids + t) % 1000, cache)
        again = m.step((ids + t) % 1000, twin)
        assert torch.equal(got, again)
        monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "layers")
        want = m.step((ids + t) % 1000, ref)
        assert (got.float() - want.float()).abs().max() <= 5e-2 * (want.float().abs().max() + 1)
    assert ms.step_kind(cache) == "model (tensor cores)"


@pytest.mark.parametrize("cuda_graph", [False, True])
@torch.no_grad()
def test_tensor_core_greedy_tokens_equal_the_layered_steps(cuda_graph, monkeypatch):
    monkeypatch.setenv("GENOMAMBA_DECODE_MMA", "1")
    m = model("default", torch.float16)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 50, (n,), generator=g).cuda() for n in range(3, 19)]  # 16 prompts
    monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "layers")
    want = m.generate(prompts, 24, temperature=0, cuda_graph=cuda_graph)
    monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "model")
    got = m.generate(prompts, 24, temperature=0, cuda_graph=cuda_graph)
    for p, a, b in zip(prompts, got, want):
        assert torch.equal(a[:p.numel() + 8], b[:p.numel() + 8])


@pytest.mark.parametrize("shape", ["default", "wide", "130m"])
def test_tensor_core_shared_memory_formula_matches_the_extension(shape):
    from genomamba.ops.cuda.build import step_extension

    ext = step_extension()
    cfg = MambaConfig(**SHAPES[shape])
    e, r = cfg.expand * cfg.d_model, cfg.resolved_dt_rank
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for b in (5, 16, 17, 33, 64):
        assert ext.model_step_mma_sizes(b, cfg.d_model, e, r, cfg.d_state)[1] == \
            ms.mma_shared_bytes(b, cfg.d_model, e, r, cfg.d_state, sms)


@pytest.mark.parametrize("batch, mma", [(1, "0"), (3, "0"), (16, "1"), (64, "1")])
@torch.no_grad()
def test_profile_step_times_every_phase(batch, mma, monkeypatch):
    monkeypatch.setenv("GENOMAMBA_DECODE_MMA", mma)
    m = model("wide", torch.float16)
    prof = ms.profile_step(m, torch.arange(batch).cuda(), m.allocate_cache(batch))
    kind = "mma" if mma == "1" else "small"
    assert [k for k in prof if not k.startswith("barrier")][:4] == list(ms.PHASES[kind])
    assert all(v >= 0 for v in prof.values()) and prof["whole step"] > prof["LM head"] > 0


def _at_segment_ends(m):
    """Moves every parameter to the very end of its own CUDA allocation and releases the address
    range after it, so a load past the end of any weight (one the compiler moved out of its bound
    check) is an illegal-address fault instead of a read of a neighbouring tensor."""
    seg, guards = 2 << 20, []
    for p in m.parameters():
        nbytes = p.numel() * p.element_size()
        size = max(12 * seg, -(-nbytes // seg) * seg)  # above the allocator's 10 MB: a segment of its own
        torch.cuda.empty_cache()
        buf = torch.empty(size, dtype=torch.uint8, device="cuda")
        guards.append(torch.empty(size, dtype=torch.uint8, device="cuda"))  # the addresses just after buf
        p.data = buf[size - nbytes:].view(p.dtype).view(p.shape)
    del guards
    torch.cuda.empty_cache()


@pytest.mark.parametrize("batch, mma", [(3, "0"), (16, "1"), (64, "1")])
@torch.no_grad()
def test_step_reads_nothing_past_a_weight(batch, mma, monkeypatch):
    monkeypatch.setenv("GENOMAMBA_DECODE_MMA", mma)
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=768, n_layer=6, vocab_size=1000)).eval().to("cuda", torch.float16)
    _at_segment_ends(m)
    ids = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(batch)).cuda()
    assert ms.unsupported(m, ids, m.allocate_cache(batch)) is None
    got, gc = step_pair(m, ids, monkeypatch, "model")
    torch.cuda.synchronize()  # a fault surfaces here
    assert ms.step_kind(gc).startswith("model"), ms.step_kind(gc)
    want, _ = step_pair(m, ids, monkeypatch, "layers")
    assert (got.float() - want.float()).abs().max() <= 3e-2 * (want.float().abs().max() + 1)
