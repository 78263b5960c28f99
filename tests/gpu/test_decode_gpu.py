"""GPU decoding: the CUDA-graph decode step equals the eager step token for token, and prompts of
different lengths batched on CUDA equal each prompt alone; skipped without CUDA.

On a CUDA machine: ``python -m pytest tests/gpu/test_decode_gpu.py -q``.
"""

import warnings

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.models import decode
from tests.models.counting import counting_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CFG = dict(d_model=64, n_layer=3, vocab_size=50, d_state=16)


def model(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(**{**CFG, **kw})).eval()
    with torch.no_grad():  # sharper next-token distributions than the init's: no near-ties for argmax
        m.backbone.embedding.weight.mul_(5)
    return m.to("cuda", dtype)


def prompts(lengths, vocab=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).cuda() for n in lengths]


def captured(m):
    return [k for k, g in decode.graphs_of(m).graphs.items() if g is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 5])
@torch.no_grad()
def test_graph_decode_equals_eager_decode(dtype, batch):
    m = model(dtype)
    ids = torch.stack(prompts([7] * batch))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture warns: that must not happen here
        graphed = m.generate(ids, 40, temperature=0, cuda_graph=True)
    assert captured(m) == [(batch, dtype, "cuda:0")]
    eager = m.generate(ids, 40, temperature=0, cuda_graph=False)
    assert torch.equal(graphed, eager)
    # seeded sampling reads the same logits, so it draws the same tokens too
    a = m.generate(ids, 40, top_k=10, seed=3, cuda_graph=True)
    b = m.generate(ids, 40, top_k=10, seed=3, cuda_graph=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_captured_sampling_equals_eager_sampling(dtype):
    """Temperature, top-k and top-p draws replayed from the captured sampler (noise from the seeded
    generator, filters and the Gumbel-max draw inside the graph) give the eager loop's tokens, with an
    allowed-id mask and an EOS id too; every filter kind is captured, none falls back."""
    m = model(dtype)
    ids = torch.stack(prompts([9] * 4))
    for kw in (dict(temperature=0.9), dict(temperature=1.3, top_k=7), dict(temperature=0.8, top_p=0.9),
               dict(temperature=1.0, top_k=12, top_p=0.95, allowed_token_ids=list(range(0, 50, 3))),
               dict(temperature=1.1, eos_token_id=5)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            a = m.generate(ids, 30, seed=11, cuda_graph=True, **kw)
        b = m.generate(ids, 30, seed=11, cuda_graph=False, **kw)
        assert torch.equal(a, b), kw
        if "allowed_token_ids" in kw:
            assert set(a[:, 9:].unique().tolist()) <= set(kw["allowed_token_ids"])
    graph = decode.graphs_of(m).graphs[(4, dtype, "cuda:0")]
    assert set(graph.samplers) == {(0, False), (7, False), (0, True), (12, True)}  # (top-k size, nucleus)
    assert all(v is not None for v in graph.samplers.values())
    c = m.generate(ids, 30, temperature=0.9, seed=12, cuda_graph=True)
    assert not torch.equal(c, m.generate(ids, 30, temperature=0.9, seed=11, cuda_graph=True))


@torch.no_grad()
def test_graphs_are_kept_per_batch_and_recaptured_when_the_weights_move():
    m = model()
    m.generate(torch.stack(prompts([4] * 2)), 5, temperature=0)
    first = decode.graphs_of(m).graphs[(2, torch.float32, "cuda:0")]
    m.generate(torch.stack(prompts([4] * 2, seed=2)), 5, temperature=0)
    assert decode.graphs_of(m).graphs[(2, torch.float32, "cuda:0")] is first  # replayed, not recaptured
    m.generate(torch.stack(prompts([4] * 3)), 5, temperature=0)
    assert len(captured(m)) == 2
    old = [p.data for p in m.parameters()]  # kept alive: the weights below get new addresses
    m.to(torch.bfloat16).to(torch.float32)  # new weight storage: the old graph must not be replayed
    ids = torch.stack(prompts([4] * 2))
    out = m.generate(ids, 12, temperature=0)
    assert decode.graphs_of(m).graphs[(2, torch.float32, "cuda:0")] is not first
    assert torch.equal(out, m.generate(ids, 12, temperature=0, cuda_graph=False))
    del old


@pytest.mark.parametrize("cuda_graph", [True, False])
@torch.no_grad()
def test_prompts_of_different_lengths_equal_each_alone_on_cuda(cuda_graph):
    m = model()
    ps = prompts([9, 1, 30, 9, 17])
    out = m.generate(ps, 25, temperature=0, prefill_chunk=8, cuda_graph=cuda_graph)
    for p, o in zip(ps, out):
        alone = m.generate(p[None], 25, temperature=0, prefill_chunk=8, cuda_graph=cuda_graph)[0]
        assert torch.equal(o, alone)


@torch.no_grad()
def test_eos_with_graph_matches_eager():
    m = model()
    ps = prompts([5, 11, 3])
    a = m.generate(ps, 50, seed=0, eos_token_id=7, cuda_graph=True)
    b = m.generate(ps, 50, seed=0, eos_token_id=7, cuda_graph=False)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@torch.no_grad()
def test_a_capture_that_fails_warns_once_and_decodes_eagerly(monkeypatch):
    m = model()
    ids = torch.stack(prompts([6] * 2))
    eager = m.generate(ids, 10, temperature=0, cuda_graph=False)

    def broken(*args, **kw):
        raise RuntimeError("capture refused")

    monkeypatch.setattr(decode, "DecodeGraph", broken)
    monkeypatch.setattr(decode, "_warned", set())
    with pytest.warns(RuntimeWarning, match="decoding eagerly"):
        out = m.generate(ids, 10, temperature=0)
    assert torch.equal(out, eager)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(m.generate(ids, 10, temperature=0), eager)  # no second warning, no retry


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@torch.no_grad()
def test_greedy_tokens_taken_from_the_replay_equal_eager_greedy_decoding(dtype):
    m = counting_model().to("cuda", dtype)
    ps = prompts([5, 1, 12, 5, 9], vocab=12)
    for kw in (dict(), dict(allowed_token_ids=[0, 1, 2, 4, 5, 6, 7, 9, 10, 11]), dict(eos_token_id=5)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            graphed = m.generate(ps, 30, temperature=0, cuda_graph=True, **kw)
        eager = m.generate(ps, 30, temperature=0, cuda_graph=False, **kw)
        for g, e in zip(graphed, eager):
            assert torch.equal(g, e), kw
    assert captured(m) == [(5, dtype, "cuda:0")]
    again = m.generate(ps, 30, temperature=0, cuda_graph=True)  # the allowed ids of a call do not stay
    assert all(torch.equal(a, e) for a, e in zip(again, m.generate(ps, 30, temperature=0, cuda_graph=False)))


def test_batch_beyond_one_kernel_grid():
    """65,540 sequences: more than a CUDA grid axis takes (the backbone runs them in slices); the
    forward with gradients, the prefill's states and a decode step equal those of small batches."""
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=12)).cuda()
    b = 65535 + 5
    ids = torch.randint(0, 12, (b, 8), device="cuda")
    logits = m(ids)
    logits[-3:].square().sum().backward()  # the last slice's gradient reaches the weights
    assert m.backbone.embedding.weight.grad.abs().sum() > 0
    picks = torch.tensor([0, 65534, 65535, b - 1], device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(logits[picks], m(ids[picks]), rtol=1e-4, atol=1e-4)
        cache, small = m.allocate_cache(b), m.allocate_cache(len(picks))
        m(ids, cache=cache)
        m(ids[picks], cache=small)
        torch.testing.assert_close(m.step(ids[:, 0], cache)[picks], m.step(ids[picks, 0], small), rtol=1e-4, atol=1e-4)
        for c, s in zip(cache.layers, small.layers):
            torch.testing.assert_close(c.ssm_state[picks], s.ssm_state, rtol=1e-4, atol=1e-4)
