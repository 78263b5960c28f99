"""MambaLM: mamba_ssm layout and init, state passing, cached stepping, generation, bad input."""

import math

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.models.lm import optimizer_param_groups

CFG = dict(d_model=32, n_layer=2, vocab_size=12, d_state=16)


def model(**kw):
    return MambaLM(MambaConfig(**{**CFG, **kw})).eval()


def test_state_dict_matches_mamba_ssm_layout():
    m = model()
    sd = m.state_dict()
    d_inner, dt_rank = 64, 2  # expand 2, ceil(32 / 16)
    expected = {"backbone.embedding.weight": (16, 32), "backbone.norm_f.weight": (32,), "lm_head.weight": (16, 32)}
    for i in range(2):
        p = f"backbone.layers.{i}."
        expected.update({
            p + "norm.weight": (32,),
            p + "mixer.in_proj.weight": (2 * d_inner, 32),
            p + "mixer.conv1d.weight": (d_inner, 1, 4),
            p + "mixer.conv1d.bias": (d_inner,),
            p + "mixer.x_proj.weight": (dt_rank + 32, d_inner),
            p + "mixer.dt_proj.weight": (d_inner, dt_rank),
            p + "mixer.dt_proj.bias": (d_inner,),
            p + "mixer.A_log": (d_inner, 16),
            p + "mixer.D": (d_inner,),
            p + "mixer.out_proj.weight": (32, d_inner),
        })
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert m.lm_head.weight is m.backbone.embedding.weight  # tied
    assert m.config.padded_vocab_size == 16


def test_initialisation_follows_the_paper():
    torch.manual_seed(1)
    m = model(n_layer=4)
    mixer = m.backbone.layers[0].mixer
    assert torch.equal(mixer.A_log, torch.log(torch.arange(1, 17.0)).repeat(64, 1))  # S4D-real
    assert torch.equal(mixer.D, torch.ones(64))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert dt.log().std() > 0.5  # log-uniform over two decades, not constant
    bound = 1 / math.sqrt(64) / math.sqrt(4)  # kaiming_uniform(a=sqrt(5)) bound, rescaled by 1/sqrt(n_layer)
    w = mixer.out_proj.weight
    assert w.abs().max() <= bound + 1e-6 and w.abs().max() > 0.8 * bound
    assert abs(m.backbone.embedding.weight.std().item() - 0.02) < 0.005


def test_no_weight_decay_tags():
    m = model(bias=True)
    groups = optimizer_param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    no_decay = {names[id(p)].split(".")[-1] if "norm" not in names[id(p)] else "norm" for p in groups[1]["params"]}
    decay = {names[id(p)] for p in groups[0]["params"]}
    assert no_decay == {"A_log", "D", "norm", "bias"}
    assert all(n.endswith("weight") for n in decay) and "backbone.embedding.weight" in decay
    assert sum(p.numel() for g in groups for p in g["params"]) == m.num_parameters()


def test_loaded_models_keep_their_no_weight_decay_tags(tmp_path):
    """A model loaded from disk (fine-tuning starts there) splits into the same groups as a new one:
    loading builds it on the meta device and gives every parameter a new tensor, which must not drop
    the tags (else AdamW would pull A_log, D, norms and biases towards 0)."""
    m = model(bias=True)
    m.save_pretrained(tmp_path / "m")

    def split(lm):
        groups = optimizer_param_groups(lm, 0.1)
        names = {id(p): n for n, p in lm.named_parameters()}
        return [sorted(names[id(p)] for p in g["params"]) for g in groups]

    want = split(m)
    assert want[1]  # something is exempt
    for kw in ({}, {"dtype": torch.bfloat16}):
        assert split(MambaLM.from_pretrained(tmp_path / "m", **kw)) == want, kw


@torch.no_grad()
def test_two_halves_with_state_equal_whole():
    m = model()
    ids = torch.randint(0, 12, (3, 97))
    whole = m(ids)
    cache = m.allocate_cache(3)
    parts = [m(ids[:, :40], cache=cache), m(ids[:, 40:41], cache=cache), m(ids[:, 41:], cache=cache)]
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-5, atol=1e-5)
    assert cache.seqlen_offset == 97


@torch.no_grad()
@pytest.mark.parametrize("dtype,conv_bias,bias,n_layer", [
    (torch.float32, True, False, 2),
    (torch.float32, False, True, 3),
    (torch.float64, True, True, 3),
    (torch.float64, False, False, 2),
])
def test_prefix_then_steps_equal_full_forward(dtype, conv_bias, bias, n_layer):
    m = model(d_conv=3, conv_bias=conv_bias, bias=bias, n_layer=n_layer).to(dtype)
    ids = torch.randint(0, 12, (2, 40))
    full = m(ids)
    cache = m.allocate_cache(2)
    prefix = m(ids[:, :25], cache=cache)
    steps = torch.stack([m.step(ids[:, t], cache) for t in range(25, 40)], 1)
    # fp64 models keep their SSM state in fp32 between calls, as the cache allocates it
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(prefix, full[:, :25], rtol=tol, atol=tol)
    torch.testing.assert_close(steps, full[:, 25:], rtol=tol, atol=tol)


@torch.no_grad()
def test_fused_and_composed_steps_agree_and_update_the_cache_in_place():
    from genomamba.ops import cpu, use_backend

    m = model(n_layer=3, d_conv=3)
    ids = torch.randint(0, 12, (2, 30))
    caches = [m.allocate_cache(2), m.allocate_cache(2)]
    for c in caches:
        m(ids[:, :20], cache=c)
    states = [(c.conv_state, c.ssm_state) for c in caches[0].layers]
    for t in range(20, 30):
        fused = m.step(ids[:, t], caches[0])
        with use_backend("ref"):  # no compiled block step: composed from the per-op functionals
            composed = m.step(ids[:, t], caches[1])
        torch.testing.assert_close(fused, composed, rtol=1e-5, atol=1e-5)
    for layer, (conv, ssm) in zip(caches[0].layers, states):
        assert layer.conv_state is conv and layer.ssm_state is ssm  # the same storage for the whole generation
    for a, b in zip(caches[0].layers, caches[1].layers):
        torch.testing.assert_close(a.conv_state, b.conv_state, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.ssm_state, b.ssm_state, rtol=1e-5, atol=1e-5)
    plans = [layer.step_plan[1] for layer in caches[0].layers]
    if cpu.available():
        assert all(p is not None and p.backend == "cpp" for p in plans)
    assert all(layer.step_plan[1] is None for layer in caches[1].layers)


@torch.no_grad()
def test_generate_greedy_matches_full_forward_and_is_seeded():
    m = model()
    prompt = torch.randint(0, 12, (2, 7))
    out = m.generate(prompt, 6, temperature=0)
    assert out.shape == (2, 13) and torch.equal(out[:, :7], prompt)
    for t in range(7, 13):  # each greedy token is the argmax of a fresh full forward over the prefix
        assert torch.equal(out[:, t], m(out[:, :t])[:, -1, :12].argmax(-1))
    a = m.generate(prompt, 20, temperature=1.0, top_k=4, top_p=0.9, seed=3)
    b = m.generate(prompt, 20, temperature=1.0, top_k=4, top_p=0.9, seed=3)
    assert torch.equal(a, b) and int(a.max()) < 12  # padded vocab rows are never sampled


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_greedy_tokens_are_the_argmax_of_a_full_forward_over_the_growing_sequence(dtype):
    m = model(d_model=48, n_layer=3, conv_bias=dtype == torch.float32).to(dtype)
    prompt = torch.randint(0, 12, (3, 33))
    out = m.generate(prompt, 24, temperature=0)
    for t in range(33, 57):
        assert torch.equal(out[:, t], m(out[:, :t])[:, -1, :12].argmax(-1)), t


def test_cache_size_does_not_depend_on_length():
    m = model()
    c = m.allocate_cache(1)
    n0 = c.nbytes()
    with torch.no_grad():
        m(torch.randint(0, 12, (1, 500)), cache=c)
        for _ in range(50):
            m.step(torch.tensor([1]), c)
    assert c.nbytes() == n0 == 2 * (64 * 3 * 4 + 64 * 16 * 4)


def test_gradients_flow_to_every_parameter():
    m = model().train()
    loss = m(torch.randint(0, 12, (2, 33))).logsumexp(-1).mean()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_inputs_raise_clear_errors():
    m = model()
    with pytest.raises(ValueError, match="input_ids: expected a \\(batch, length\\)"):
        m(torch.randint(0, 12, (5,)))
    with pytest.raises(ValueError, match="input_ids: expected an integer tensor"):
        m(torch.rand(1, 5))
    with pytest.raises(ValueError, match=r"input_ids: token ids must lie in \[0, 16\)"):
        m(torch.tensor([[1, 16]]))
    with pytest.raises(ValueError, match="MambaConfig.d_conv"):
        MambaConfig(d_conv=5)
    with pytest.raises(ValueError, match="MambaConfig.d_model"):
        MambaConfig(d_model=0)
    with pytest.raises(ValueError, match="unknown field\\(s\\) hidden"):
        MambaConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(torch.tensor([[1]]), -1)


def test_gradient_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    ids = torch.randint(0, 12, (2, 40))
    grads = []
    for flag in (False, True):
        torch.manual_seed(5)
        m = model().train().gradient_checkpointing_enable(flag)
        m(ids).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-6, atol=1e-7, msg=n)
