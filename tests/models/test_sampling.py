"""The Gumbel-max sampler: its draws follow the filtered softmax, the filters keep what they promise,
and the same noise gives the same tokens."""

import pytest
import torch

from genomamba.models import sampling

N = 200_000  # draws per check: a frequency's standard error is at most 0.0011


def _freqs(logits, **kw):
    g = torch.Generator().manual_seed(0)
    rows = logits.expand(N, -1).contiguous()
    tokens = sampling.sample_next(rows, generator=g, **kw)
    return torch.bincount(tokens, minlength=logits.shape[-1]).double() / N


def _assert_follows(freqs, probs):
    se = (probs * (1 - probs) / N).sqrt()
    assert torch.all((freqs - probs).abs() <= 5 * se + 1e-12), (freqs, probs)


LOGITS = torch.tensor([[2.0, 0.5, -1.0, 1.5, 0.0, float("-inf")]])


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_draws_follow_the_softmax(temperature):
    probs = torch.softmax(LOGITS[0].double() / temperature, -1)
    _assert_follows(_freqs(LOGITS, temperature=temperature), probs)


def test_top_k_keeps_the_k_best_ties_included():
    freqs = _freqs(LOGITS, temperature=1.0, top_k=3)
    kept = torch.tensor([True, True, False, True, False, False])  # 2.0, 1.5 and 0.5
    probs = torch.softmax(LOGITS[0].double().masked_fill(~kept, float("-inf")), -1)
    _assert_follows(freqs, probs)
    tied = torch.tensor([[1.0, 3.0, 1.0, 0.5, 1.0]])  # k = 2 reaches the tied 1.0s: all three stay
    probs = torch.softmax(tied[0].double().masked_fill(tied[0] < 1.0, float("-inf")), -1)
    _assert_follows(_freqs(tied, temperature=1.0, top_k=2), probs)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = torch.softmax(LOGITS[0].double(), -1)  # order 0, 3, 1, 4, 2: masses .50, .30, .11, .07, .02
    order = torch.argsort(probs, descending=True)
    before = probs[order].cumsum(0) - probs[order]
    for p in (0.5, 0.8, 0.95):
        kept = torch.zeros(6, dtype=torch.bool)
        kept[order[before < p]] = True
        want = torch.softmax(LOGITS[0].double().masked_fill(~kept, float("-inf")), -1)
        _assert_follows(_freqs(LOGITS, temperature=1.0, top_p=p), want)
    only = _freqs(LOGITS, temperature=1.0, top_p=0.01)  # the top token always stays
    assert only[0] == 1.0


def test_top_k_then_top_p_on_the_kept_tokens():
    # top_k 3 keeps 0, 3, 1 (masses .55, .33, .12 after renormalising); top_p 0.85 then keeps 0 and 3
    kept = torch.tensor([True, False, False, True, False, False])
    want = torch.softmax(LOGITS[0].double().masked_fill(~kept, float("-inf")), -1)
    _assert_follows(_freqs(LOGITS, temperature=1.0, top_k=3, top_p=0.85), want)


def test_greedy_uses_no_noise_and_minus_inf_is_never_drawn():
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    assert sampling.sample_next(LOGITS, temperature=0, generator=g).item() == 0
    assert sampling.sample_next(LOGITS, temperature=0.7, top_k=1, generator=g).item() == 0
    assert torch.equal(g.get_state(), state)
    assert _freqs(LOGITS, temperature=5.0)[5] == 0


def test_same_noise_same_tokens_and_filters_as_tensors():
    """The draw the captured sampler replays: fixed-shape tensors in, the eager sampler's tokens out
    for the same generator state."""
    logits = torch.randn(7, 11, generator=torch.Generator().manual_seed(3))
    for kw in (dict(temperature=0.9), dict(temperature=1.3, top_k=4), dict(temperature=0.6, top_p=0.7),
               dict(temperature=1.0, top_k=20, top_p=0.95)):
        a = sampling.sample_next(logits, generator=torch.Generator().manual_seed(5), **kw)
        noise = torch.empty(7, 11).uniform_(0.0, 1.0, generator=torch.Generator().manual_seed(5))
        k, p = kw.get("top_k", 0), kw.get("top_p", 1.0)
        values = sampling.filter_values(kw["temperature"], p, "cpu")
        b = sampling.draw(logits, noise, *values, *sampling.filters(k, p, 11))
        assert torch.equal(a, b)
        if p == 1.0:  # the nucleus filter at p = 1 keeps every token: the same draw
            assert torch.equal(a, sampling.draw(logits, noise, *values, sampling.filters(k, p, 11)[0], True))


def test_tiny_temperatures_are_greedy_and_never_draw_a_masked_token():
    logits = torch.tensor([[0.0, 3.0, -2.0, float("-inf")], [1.0, 0.0, float("-inf"), 0.5]])
    for t in (1e-31, 1e-45, 5e-324):
        assert sampling.sample_next(logits, temperature=t).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    rows = logits.repeat(500, 1)
    for t in (1e-6, 1e-20):  # a large but finite scale: still a draw, and all of it on the argmax
        assert sampling.sample_next(rows, temperature=t, generator=g).tolist() == [1, 0] * 500


@pytest.mark.parametrize("kw,name", [(dict(temperature=float("inf")), "temperature"),
                                     (dict(temperature=float("nan")), "temperature"),
                                     (dict(temperature=True), "temperature"), (dict(top_k=2.5), "top_k"),
                                     (dict(top_p=0.0), "top_p"), (dict(top_p=float("nan")), "top_p")])
def test_generate_names_a_bad_sampling_argument(kw, name):
    from genomamba.models import decode

    with pytest.raises(ValueError, match=f"^{name}: expected"):
        decode.check_sampling(**{**dict(temperature=1.0, top_k=0, top_p=1.0), **kw})
