"""Segment-wise training equals the whole window: the loss and every gradient, at any segment length."""

import pytest
import torch
import torch.nn.functional as F

from genomamba.config import MambaConfig
from genomamba.models.lm import MambaLM
from genomamba.models.segmented import segment_bounds, segmented_loss


def _model(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    cfg = dict(d_model=32, n_layer=3, vocab_size=12, d_state=8)
    cfg.update(kw)
    return MambaLM(MambaConfig(**cfg)).to(dtype)


def _next_token_loss(ids):
    """segment_loss for next-token cross entropy over the window ``ids`` (summed nats, tokens scored)."""
    length = ids.shape[1]

    def segment(logits, start, stop):
        end = min(stop + 1, length)
        lg = logits if end > stop else logits[:, :-1]
        tgt = ids[:, start + 1:end]
        nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float() if lg.dtype != torch.float64
                              else lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="sum")
        return nll, torch.tensor(tgt.numel())

    return segment


def _whole(model, ids):
    lg = model(ids)[:, :-1]
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("segment_len", [1, 2, 7, 16, 49, 50, 64])
def test_loss_and_every_gradient_equal_the_whole_window_fp64(segment_len):
    model = _model()
    ids = torch.randint(0, 12, (2, 50), generator=torch.Generator().manual_seed(1))
    model.zero_grad()
    ref = _whole(model, ids)
    ref.backward()
    want = _grads(model)
    model.zero_grad()
    loss, (n,) = segmented_loss(model, ids, segment_len, _next_token_loss(ids))
    loss.backward()
    got = _grads(model)
    assert int(n) == 2 * 49
    assert abs(loss.item() - ref.item()) < 1e-10 * abs(ref.item())
    assert set(got) == set(want) and len(got) == len(list(model.parameters()))
    for name, g in want.items():
        err = (got[name] - g).abs().max().item() / (g.abs().max().item() + 1e-30)
        assert err < 1e-10, (name, err)


def test_fp32_with_conv_bias_and_normalizer():
    model = _model(torch.float32, d_conv=3)
    ids = torch.randint(0, 12, (3, 97), generator=torch.Generator().manual_seed(2))
    model.zero_grad()
    (_whole(model, ids) / 100).backward()
    want = _grads(model)
    model.zero_grad()
    loss, _ = segmented_loss(model, ids, 20, _next_token_loss(ids), normalizer=100)
    loss.backward()
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, want[name], rtol=2e-4, atol=2e-6, msg=name)


def test_no_grad_gives_the_loss_without_keeping_a_graph():
    model = _model()
    ids = torch.randint(0, 12, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        loss, _ = segmented_loss(model, ids, 9, _next_token_loss(ids))
        ref = _whole(model, ids)
    assert not loss.requires_grad
    assert abs(loss.item() - ref.item()) < 1e-10 * ref.item()


def test_bad_arguments_are_named():
    model = _model()
    ids = torch.randint(0, 12, (1, 10))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="segment_len"):
            segmented_loss(model, ids, bad, _next_token_loss(ids))
    with pytest.raises(ValueError, match="ids"):
        segmented_loss(model, ids[0], 4, _next_token_loss(ids))
    assert segment_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize("segment_len", [3, 16, 45])
def test_model_level_segments_give_the_same_logits_and_gradients(segment_len):
    """``MambaLM.set_segment_len``: a plain forward/backward with any loss on the logits."""
    model = _model()
    ids = torch.randint(0, 12, (2, 45), generator=torch.Generator().manual_seed(4))
    w = torch.randn(2, 45, model.config.padded_vocab_size, dtype=torch.float64)
    model.zero_grad()
    ref = model(ids)
    (ref * w).sum().backward()
    want = _grads(model)
    model.set_segment_len(segment_len).zero_grad()
    out = model(ids)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    (out * w).sum().backward()
    got = _grads(model)
    assert set(got) == set(want)
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-10, atol=1e-12, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref.detach(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="segment_len"):
        model.set_segment_len(0)
    assert model.set_segment_len(None).backbone.segment_len is None


def test_the_backward_recomputes_every_segment_but_the_last():
    """The last segment keeps its graph from the forward (its backward comes first); the others are
    recomputed once each. Without gradients nothing is kept."""
    model = _model()
    ids = torch.randint(0, 12, (1, 40), generator=torch.Generator().manual_seed(5))
    inner = _next_token_loss(ids)
    seen = []

    def counting(logits, start, stop):
        seen.append((start, torch.is_grad_enabled()))
        return inner(logits, start, stop)

    loss, _ = segmented_loss(model, ids, 16, counting)
    assert seen == [(0, False), (16, False), (32, True)]
    seen.clear()
    loss.backward()
    assert seen == [(16, True), (0, True)]
    with torch.no_grad():
        segmented_loss(model, ids, 16, counting)
    assert [g for _, g in seen[2:]] == [False, False, False]
