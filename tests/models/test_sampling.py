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


SKEWED = torch.tensor([[0.5, 9.0, -4.0, float("-inf"), 2.0, float("-inf")]])  # the top token is not id 0
ALLOWED = torch.tensor([True, True, True, False, True, False])


@pytest.mark.parametrize("temperature", [1e30, 1e39, 1e46, 1e300])
def test_huge_temperatures_draw_uniformly_among_the_allowed_tokens_only(temperature):
    freqs = _freqs(SKEWED, temperature=temperature)
    assert float(freqs[~ALLOWED].sum()) == 0.0
    _assert_follows(freqs, ALLOWED.double() / int(ALLOWED.sum()))


def test_huge_temperatures_keep_the_top_k_tokens_and_the_nucleus_filter():
    freqs = _freqs(SKEWED, temperature=1e300, top_k=2)  # 9.0 and 2.0: drawn half and half
    _assert_follows(freqs, torch.tensor([0, 0.5, 0, 0, 0.5, 0], dtype=torch.float64))
    freqs = _freqs(SKEWED, temperature=1e300, top_p=0.5)  # four tokens, equally likely: two of them stay
    assert float(freqs[~ALLOWED].sum()) == 0.0 and int((freqs > 0).sum()) == 2


@pytest.mark.parametrize("top_p", [1e-50, 1e-46, 1e-9])
def test_a_tiny_top_p_keeps_exactly_the_top_token(top_p):
    assert float(sampling.filter_values(1.0, top_p, "cpu")[1]) >= 0.0
    g = torch.Generator().manual_seed(0)
    rows = SKEWED.repeat(1000, 1)
    assert sampling.sample_next(rows, temperature=1.0, top_p=top_p, generator=g).tolist() == [1] * 1000
    # the same through the draw the captured sampler replays, with the top-k filter on as well
    noise = sampling.noise_like(rows, torch.Generator().manual_seed(1))
    values = sampling.filter_values(3.0, top_p, "cpu")
    assert sampling.draw(rows, noise, *values, 3, True).tolist() == [1] * 1000


def test_the_inverse_temperature_never_reaches_zero():
    for temperature in (1e38, 1e46, 1e300):
        inv_temp, _ = sampling.filter_values(temperature, 1.0, "cpu")
        assert float(inv_temp) >= sampling.MIN_INV_TEMP > 0
        assert float(SKEWED[0, 3] * inv_temp) == float("-inf")  # a masked score stays masked


@pytest.mark.parametrize("temperature", [float("inf"), float("nan")])
def test_sample_next_refuses_a_temperature_that_is_not_finite(temperature):
    with pytest.raises(ValueError, match="^temperature: expected a finite number"):
        sampling.sample_next(SKEWED, temperature=temperature)


def test_check_sampling_takes_numpy_numbers_and_returns_python_ones():
    import numpy as np

    from genomamba.models import decode

    got = decode.check_sampling(np.float32(0.75), np.int64(3), np.float64(0.5))
    assert got == (0.75, 3, 0.5) and [type(x) for x in got] == [float, int, float]
    with pytest.raises(ValueError, match="^top_k: expected an int"):
        decode.check_sampling(1.0, np.float64(2.0), 1.0)
    with pytest.raises(ValueError, match="^temperature: expected a finite number"):
        decode.check_sampling("x", 0, 1.0)
