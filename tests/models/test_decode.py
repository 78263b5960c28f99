"""The decode loop: prompts of different lengths in one batch, seeded sampling, EOS, bad input."""

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.models import decode, sampling
from tests.models.counting import counting_model

CFG = dict(d_model=32, n_layer=3, vocab_size=12, d_state=16)
LENGTHS = [5, 1, 12, 5, 9]


def model():
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(**CFG)).eval()
    with torch.no_grad():  # sharper next-token distributions than the init's: no near-ties for argmax
        m.backbone.embedding.weight.mul_(5)
    return m


@pytest.fixture(scope="module")
def m():
    return model()


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 12, (n,), generator=g) for n in LENGTHS]


@torch.no_grad()
def test_batched_prompts_of_different_lengths_equal_each_prompt_alone(m, prompts):
    out = m.generate(prompts, 15, temperature=0, prefill_chunk=4)
    assert isinstance(out, list) and len(out) == len(prompts)
    for p, o in zip(prompts, out):
        assert o.dim() == 1 and len(o) == len(p) + 15 and torch.equal(o[:len(p)], p)
        alone = m.generate(p[None], 15, temperature=0, prefill_chunk=4)[0]
        assert torch.equal(o, alone)


@torch.no_grad()
def test_greedy_tokens_are_the_argmax_of_a_full_forward(m, prompts):
    out = m.generate(prompts, 8, temperature=0)
    for p, o in zip(prompts, out):
        for t in range(len(p), len(o)):
            assert int(o[t]) == int(m(o[None, :t])[0, -1, :12].argmax())


@torch.no_grad()
def test_top_k_one_is_greedy_whatever_the_seed_or_temperature(m, prompts):
    greedy = m.generate(prompts, 10, temperature=0)
    for seed, temperature in ((0, 1.0), (5, 3.0), (None, 0.5)):
        got = m.generate(prompts, 10, temperature=temperature, top_k=1, seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(got, greedy))


@torch.no_grad()
def test_equal_lengths_as_a_list_or_a_tensor_agree(m):
    ids = torch.randint(0, 12, (3, 6), generator=torch.Generator().manual_seed(2))
    as_tensor = m.generate(ids, 10, top_k=5, seed=4)
    as_list = m.generate(list(ids), 10, top_k=5, seed=4)
    assert torch.equal(torch.stack(as_list), as_tensor)


@torch.no_grad()
def test_seeded_sampling_is_reproducible(m, prompts):
    a = m.generate(prompts, 30, temperature=0.9, top_k=6, top_p=0.95, seed=7)
    b = m.generate(prompts, 30, temperature=0.9, top_k=6, top_p=0.95, seed=7)
    c = m.generate(prompts, 30, temperature=0.9, top_k=6, top_p=0.95, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert max(int(x.max()) for x in a) < 12  # the padded vocab rows are never sampled


@torch.no_grad()
def test_eos_ends_a_sequence(m, prompts):
    free = m.generate(prompts, 60, seed=3)
    eos = 3
    stopped = m.generate(prompts, 60, seed=3, eos_token_id=eos)
    ended = 0
    for p, f, s in zip(prompts, free, stopped):
        new_f, new_s = f[len(p):], s[len(p):]
        hits = (new_s == eos).nonzero()
        if len(hits) == 0:
            assert torch.equal(new_s, new_f)
            continue
        ended += 1
        first = int(hits[0])
        assert torch.equal(new_s[:first + 1], new_f[:first + 1])  # the same draws up to the EOS
        assert bool((new_s[first:] == eos).all())  # and only EOS after it
    assert ended >= 2


@torch.no_grad()
def test_every_sequence_ended_stops_early_with_eos_filled(m, prompts, monkeypatch):
    monkeypatch.setattr(decode, "DONE_CHECK_EVERY", 2)
    out = m.generate(prompts, 9, allowed_token_ids=[5], eos_token_id=5)
    for p, o in zip(prompts, out):
        assert len(o) == len(p) + 9 and bool((o[len(p):] == 5).all())


def test_zero_new_tokens_returns_the_prompts(m, prompts):
    out = m.generate(prompts, 0)
    assert all(torch.equal(o, p) for o, p in zip(out, prompts))


def test_bad_inputs_name_the_argument_and_the_prompt(m):
    with pytest.raises(ValueError, match="input_ids: empty list"):
        m.generate([], 5)
    with pytest.raises(ValueError, match=r"input_ids\[1\]: empty prompt"):
        m.generate([torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)], 5)
    with pytest.raises(ValueError, match=r"input_ids\[0\]: expected a 1-D integer tensor, got shape \(1, 3\)"):
        m.generate([torch.tensor([[1, 2, 3]])], 5)
    with pytest.raises(ValueError, match=r"input_ids\[2\]: token ids must lie in \[0, 16\), got range \[0, 16\]"):
        m.generate([torch.tensor([1]), torch.tensor([2]), torch.tensor([0, 16])], 5)
    with pytest.raises(ValueError, match=r"input_ids\[1\]: token ids must lie in \[0, 16\), got range \[-1, 2\]"):
        m.generate([torch.tensor([1]), torch.tensor([-1, 2])], 5)
    with pytest.raises(ValueError, match=r"input_ids\[0\]: expected an integer tensor"):
        m.generate([torch.tensor([0.5])], 5)
    with pytest.raises(ValueError, match=r"input_ids\[1\]: expected a 1-D integer tensor, got list"):
        m.generate([torch.tensor([1]), [1, 2]], 5)
    with pytest.raises(ValueError, match="input_ids: expected a \\(batch, length\\) tensor or a list"):
        m.generate("ACGT", 5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate([torch.tensor([1])], -1)
    with pytest.raises(ValueError, match="top_p"):
        m.generate([torch.tensor([1])], 3, top_p=0)
    with pytest.raises(ValueError, match="allowed_token_ids"):
        m.generate([torch.tensor([1])], 3, allowed_token_ids=[99])
    with pytest.raises(ValueError, match="eos_token_id"):
        m.generate([torch.tensor([1])], 3, eos_token_id=16)


def test_cuda_graph_is_off_off_cuda(monkeypatch):
    assert not decode.use_cuda_graph(True, torch.device("cpu"))
    monkeypatch.setenv(decode.ENV_CUDA_GRAPH, "0")
    assert not decode.use_cuda_graph(None, torch.device("cpu"))


def test_generated_ids_are_ordinary_tensors(m, prompts):
    """The loop runs in inference mode; what it returns is usable anywhere (in place, in autograd code)."""
    outs = m.generate(prompts, 4, temperature=0) + [m.generate(prompts[0][None], 4, temperature=0)]
    for out in outs:
        assert not out.is_inference()
        out.add_(0)  # an inference tensor would refuse this outside inference mode
    assert not torch.is_inference_mode_enabled()


def test_cache_clone_copies_the_states(m):
    cache = m.allocate_cache(2)
    cache.seqlen_offset = 7
    copy = cache.clone()
    assert copy.seqlen_offset == 7 and len(copy.layers) == len(cache.layers)
    copy.layers[0].ssm_state.add_(1)
    assert cache.layers[0].ssm_state.abs().max() == 0
    assert torch.equal(copy.layers[1].conv_state, cache.layers[1].conv_state)


def test_forward_graphs_are_never_used_off_cuda_and_their_settings_are_checked(m, monkeypatch):
    from genomamba.models import graphed

    x = torch.randint(0, 10, (2, 16))
    with torch.no_grad():
        assert not graphed.eligible(m, x, None)
        for _ in range(3):
            m(x)
    assert not graphed.graphs_of(m).graphs and not graphed.graphs_of(m).seen
    with pytest.raises(ValueError, match="when: expected 'first', 'second' or 'never', got 'always'"):
        with graphed.capture_policy("always"):
            pass
    monkeypatch.setenv(graphed.ENV_ELEMENTS, "lots")
    with pytest.raises(ValueError, match="GENOMAMBA_CUDA_GRAPH_FORWARD_ELEMENTS='lots'"):
        graphed.max_elements()
    monkeypatch.setenv(graphed.ENV_ELEMENTS, "4096")
    assert graphed.max_elements() == 4096


class _ReplayedEagerly(decode.DecodeGraph):
    """The captured decode step's body (step, greedy token over the allowed ids, token back into the
    input ids) run eagerly on each replay: the loop's side of the contract, without a CUDA graph."""

    def __init__(self, model, batch):
        self.model = model
        self.cache = model.allocate_cache(batch)
        self.ids = torch.zeros(batch, dtype=torch.long)
        self.bias = self._default_bias(model, "cpu")
        self.logits = torch.zeros(batch, model.config.padded_vocab_size)
        self.samplers = {}

    def replay(self):
        self.logits.copy_(self._body(self.model)[0])
        self.token = self._greedy(self.logits)
        return self.logits

    def sampler(self, k, nucleus):
        return self.samplers.setdefault((k, nucleus), _SampledEagerly(self, k, nucleus))


class _SampledEagerly(decode.DecodeSampler):
    """The captured draw's body (noise from the caller's generator, filters, Gumbel-max token into
    the step's input ids) run eagerly on each draw."""

    def __init__(self, step, k, nucleus):
        self.step, self.k, self.nucleus = step, k, nucleus
        self.noise = torch.zeros(step.logits.shape)
        self.values = sampling.filter_values(1.0, 1.0, "cpu")

    def draw(self, generator):
        self.noise.uniform_(0.0, 1.0, generator=generator)
        self.token = self._body()
        return self.token


@pytest.fixture(scope="module")
def counter():
    return counting_model()


@pytest.mark.parametrize("how", [dict(temperature=0), dict(top_k=1, temperature=0.7), dict(temperature=0, eos="seen"),
                                 dict(temperature=0, allowed=[0, 1, 2, 4, 5, 6, 7, 9, 10, 11]),
                                 dict(temperature=0.8, seed=5), dict(temperature=0.9, seed=2, eos=4),
                                 dict(temperature=1.2, top_k=5, top_p=0.8, seed=3),
                                 dict(temperature=1.5, seed=9, allowed=[1, 2, 3, 5, 8, 13])])
@torch.no_grad()
def test_the_loop_on_a_replayed_step_equals_the_eager_loop(counter, prompts, how):
    """Greedy tokens taken from the replay itself (``graph.token``), and sampled tokens drawn by the
    graph's sampler into the replay's input ids, give what the eager loop gives, token for token."""
    m, (vocab, n) = counter, (counter.config.vocab_size, 30)
    mask = None
    if "allowed" in how:
        mask = torch.full((m.config.padded_vocab_size,), float("-inf"))
        mask[how["allowed"]] = 0.0

    def run(graph, eos):
        cache, logits = decode.prefill(m, prompts, None, graphs=False)
        if graph is not None:
            graph.load(cache)
            cache = None
        new = torch.empty(len(prompts), n, dtype=torch.long)
        gen = torch.Generator().manual_seed(how["seed"]) if "seed" in how else None
        decode._loop(m, graph, cache, logits, new, how.get("temperature", 1.0), how.get("top_k", 0),
                     how.get("top_p", 1.0), gen, eos, vocab, mask)
        return new

    eos = how.get("eos")
    if eos == "seen":  # a token that greedy decoding emits for some sequences, at some step after the first
        eos = int(run(None, None)[1, 3])
    eager = run(None, eos)
    if how.get("temperature", 1.0) <= 0:  # the greedy tokens move, so a stale step input would show
        assert sum(len(set(row[:8].tolist())) > 1 for row in eager) >= 2
    replayed = run(_ReplayedEagerly(m, len(prompts)), eos)
    assert torch.equal(replayed, eager)
    if "allowed" in how:
        assert set(eager.unique().tolist()) <= set(how["allowed"])
    if eos is not None:
        assert bool((eager == eos).any())  # sequences ended, so the EOS path ran


@pytest.mark.parametrize("how", [dict(temperature=1e46, seed=4, allowed=[1, 2, 3, 5, 8, 11]),
                                 dict(temperature=1e300, top_k=3, seed=6, allowed=[2, 4, 6, 7]),
                                 dict(temperature=0.9, top_p=1e-50, seed=1, allowed=[1, 3, 5, 7, 9])])
@torch.no_grad()
def test_extreme_settings_on_a_replayed_step_stay_among_the_allowed_ids(counter, prompts, how):
    """A temperature whose inverse is 0 in float32 and a top_p that is 0 in float32: the eager loop and
    the captured sampler's draw both give allowed tokens only (the same ones), never id 0."""
    m, n = counter, 40
    mask = torch.full((m.config.padded_vocab_size,), float("-inf"))
    mask[how["allowed"]] = 0.0

    def run(graph):
        cache, logits = decode.prefill(m, prompts, None, graphs=False)
        if graph is not None:
            graph.load(cache)
            cache = None
        new = torch.empty(len(prompts), n, dtype=torch.long)
        gen = torch.Generator().manual_seed(how["seed"])
        decode._loop(m, graph, cache, logits, new, how["temperature"], how.get("top_k", 0), how.get("top_p", 1.0),
                     gen, None, m.config.vocab_size, mask)
        return new

    eager = run(None)
    assert set(eager.unique().tolist()) <= set(how["allowed"])
    assert torch.equal(run(_ReplayedEagerly(m, len(prompts))), eager)
    if "top_p" in how:  # only the top token stays: greedy decoding over the allowed ids
        cache, logits = decode.prefill(m, prompts, None, graphs=False)
        greedy = torch.empty(len(prompts), n, dtype=torch.long)
        decode._loop(m, None, cache, logits, greedy, 0, 0, 1.0, None, None, m.config.vocab_size, mask)
        assert torch.equal(eager, greedy)


@torch.no_grad()
def test_a_huge_temperature_samples_the_allowed_ids_uniformly(m):
    out = m.generate([torch.tensor([1, 2, 3])], 400, temperature=1e46, seed=[0], allowed_token_ids=[6, 7, 8, 9])[0]
    counts = torch.bincount(out[3:], minlength=12)
    assert int(counts[[6, 7, 8, 9]].sum()) == 400
    assert all(60 <= int(c) <= 140 for c in counts[[6, 7, 8, 9]]), counts  # 100 each, sd 8.7
    greedy = m.generate([torch.tensor([1, 2, 3])], 20, temperature=0, allowed_token_ids=[6, 7, 8, 9])[0]
    assert torch.equal(m.generate([torch.tensor([1, 2, 3])], 20, top_p=1e-50, seed=3,
                                  allowed_token_ids=[6, 7, 8, 9])[0], greedy)


def test_numpy_numbers_are_taken_as_python_ones(m, prompts):
    np = pytest.importorskip("numpy")
    want = m.generate(prompts, 6, temperature=0.75, top_k=5, top_p=0.875, seed=3, eos_token_id=4, vocab_size=12)
    got = m.generate(prompts, np.int64(6), temperature=np.float32(0.75), top_k=np.int32(5), top_p=np.float64(0.875),
                     seed=np.uint32(3), eos_token_id=np.int64(4), vocab_size=np.int16(12))
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("kw, message", [
    (dict(vocab_size=0), r"^vocab_size: expected an int in \[1, 16\]"),
    (dict(vocab_size=-3), r"^vocab_size: expected an int in \[1, 16\]"),
    (dict(vocab_size=17), r"^vocab_size: expected an int in \[1, 16\]"),
    (dict(vocab_size=8.0), r"^vocab_size: expected an int in \[1, 16\]"),
    (dict(eos_token_id=6.7), r"^eos_token_id: expected an int token id, got 6.7"),
    (dict(eos_token_id=True), r"^eos_token_id: expected an int token id"),
    (dict(eos_token_id=-1), r"^eos_token_id: expected an id in \[0, 12\)"),
    (dict(eos_token_id=13), r"^eos_token_id: expected an id in \[0, 12\)"),  # a padding row: never sampled
    (dict(eos_token_id=5, vocab_size=4), r"^eos_token_id: expected an id in \[0, 4\)"),
    (dict(eos_token_id=1, allowed_token_ids=[6, 7]), r"^eos_token_id: 1 is not among allowed_token_ids"),
    (dict(allowed_token_ids=[]), r"^allowed_token_ids: empty"),
    (dict(allowed_token_ids=[3, 6.7]), r"^allowed_token_ids\[1\]: expected an int id in \[0, 16\), got 6.7"),
    (dict(allowed_token_ids="ACGT"), r"^allowed_token_ids: expected a list of token ids, got str"),
    (dict(seed=-1), r"^seed: expected an int in \[0, 4294967295\], got -1"),
    (dict(seed=2**32), r"^seed: expected an int in \[0, 4294967295\], got 4294967296"),
    (dict(seed=10**23), r"^seed: expected an int in \[0, 4294967295\]"),
    (dict(seed=[0, 2**64 - 1]), r"^seed\[1\]: expected an int in \[0, 4294967295\]"),
])
def test_settings_that_could_never_act_are_refused_naming_the_argument(m, kw, message):
    two = [torch.tensor([1, 2]), torch.tensor([3])]
    with pytest.raises(ValueError, match=message):
        m.generate(two, 3, **kw)


def test_the_largest_seed_and_an_eos_among_the_allowed_ids_are_taken(m):
    two = [torch.tensor([1, 2]), torch.tensor([3])]
    assert len(m.generate(two, 3, seed=2**32 - 1)) == 2
    assert len(m.generate(two, 3, seed=[2**32 - 1, 0])) == 2
    out = m.generate(two, 3, eos_token_id=14, allowed_token_ids=[14])  # a padding row, allowed: it ends them
    assert all(o[-3:].tolist() == [14, 14, 14] for o in out)
