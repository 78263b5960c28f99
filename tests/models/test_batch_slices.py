"""Batches larger than one kernel launch takes (65535 sequences on a CUDA grid axis) run through the
backbone as consecutive slices; here the limit is lowered so the slicing itself is checked on CPU:
logits, gradients, final states and decode steps equal those of the whole batch."""

import pytest
import torch

import genomamba.models.lm as lm
from genomamba import MambaConfig, MambaLM


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=12), dtype=torch.float64)


def _sliced(monkeypatch, limit):
    calls = []

    def limit_of(device):
        calls.append(device.type)
        return limit
    monkeypatch.setattr(lm, "_batch_limit", limit_of)
    return calls


def test_forward_and_gradients_equal_the_whole_batch(model, monkeypatch):
    ids = torch.randint(0, 12, (5, 9))
    whole = model(ids)
    grads = torch.autograd.grad(whole.square().sum(), list(model.parameters()))
    seen = []
    model.backbone.embedding.register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    _sliced(monkeypatch, 2)
    sliced = model(ids)
    assert seen == [2, 2, 1]  # three slices
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-12)
    for g, h in zip(torch.autograd.grad(sliced.square().sum(), list(model.parameters())), grads):
        tol = 1e-9 if g.dtype == torch.float64 else 1e-5  # A_log and D stay fp32; sums over other row groups
        torch.testing.assert_close(g, h, rtol=tol, atol=tol * h.abs().max().item())


def test_states_and_steps_equal_the_whole_batch(model, monkeypatch):
    ids = torch.randint(0, 12, (5, 7))
    ref_cache, cache = model.allocate_cache(5), model.allocate_cache(5)
    with torch.no_grad():
        ref_logits = model(ids, cache=ref_cache)
        ref_steps = [model.step(ids[:, i], ref_cache) for i in range(3)]
        _sliced(monkeypatch, 2)
        logits = model(ids, cache=cache)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-12)
        for c, r in zip(cache.layers, ref_cache.layers):  # the prefill's final states gathered back
            assert c.conv_state.shape == r.conv_state.shape and c.ssm_state.shape == r.ssm_state.shape
        steps = [model.step(ids[:, i], cache) for i in range(3)]
    for s, r in zip(steps, ref_steps):
        torch.testing.assert_close(s, r, rtol=0, atol=1e-12)
    for c, r in zip(cache.layers, ref_cache.layers):  # steps advanced the sliced views in place
        torch.testing.assert_close(c.conv_state, r.conv_state, rtol=0, atol=1e-12)
        torch.testing.assert_close(c.ssm_state, r.ssm_state, rtol=0, atol=1e-12)
    assert cache.seqlen_offset == ref_cache.seqlen_offset == 10


def test_limit_applies_to_cuda_only():
    assert lm._batch_limit(torch.device("cpu")) is None
    assert lm._batch_limit(torch.device("cuda")) == lm.MAX_KERNEL_BATCH == 65535
