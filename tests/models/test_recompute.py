"""Training with each layer's in_proj input, u and delta rebuilt in the backward instead of kept
(``Mamba.rebuild_inputs``): the gradients are bit for bit those of keeping them, the recipes
really replace those tensors, and activation checkpointing turns them off."""

import pytest
import torch

import genomamba.models.mixer as mixer
from genomamba import MambaConfig, MambaLM
from genomamba.models import recompute


def _model(dtype=torch.float64, n_layer=2, residual_in_fp32=True):
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=32, n_layer=n_layer, vocab_size=16, d_state=8, pad_vocab_size_multiple=8,
                      residual_in_fp32=residual_in_fp32)
    return MambaLM(cfg).to(dtype)


def _grads(model, ids, rebuild, autocast=False):
    for layer in model.backbone.layers:
        layer.mixer.rebuild_inputs = rebuild
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1])[:-1],
                                             ids.reshape(-1)[1:])
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.fixture
def builds(monkeypatch):
    """Shapes of the activations rebuilt in the backward, in order."""
    seen = []
    original = recompute._Target.build

    def counting(self):
        if self.value is None:
            seen.append(self.layout[0])
        return original(self)

    monkeypatch.setattr(recompute._Target, "build", counting)
    return seen


@pytest.mark.parametrize("dtype,autocast", [(torch.float64, False), (torch.float32, False), (torch.float32, True)])
@pytest.mark.parametrize("layout", ["channels_first", "tokens_first"])
@pytest.mark.parametrize("up", [True, False])
def test_rebuilt_inputs_give_the_same_gradients_bit_for_bit(monkeypatch, builds, dtype, autocast, layout, up):
    monkeypatch.setattr(mixer, "channels_first", lambda t: layout == "channels_first")
    model = _model(dtype, residual_in_fp32=up)
    ids = torch.randint(0, 5, (2, 96), generator=torch.Generator().manual_seed(1))
    loss_kept, kept = _grads(model, ids, rebuild=False, autocast=autocast)
    assert builds == []
    loss_rebuilt, rebuilt = _grads(model, ids, rebuild=True, autocast=autocast)
    assert torch.equal(loss_kept, loss_rebuilt)
    for name in kept:
        assert torch.equal(kept[name], rebuilt[name]), f"gradient of {name} differs"
    d_inner = model.config.d_inner
    normed, inner = (2, 96, model.config.d_model), (2, d_inner, 96)
    if layout == "channels_first" and not autocast:  # the GPU layout: in_proj's input, u and delta, once each
        assert sorted(builds) == sorted([normed, inner, inner] * model.config.n_layer), builds
    else:  # x_proj may read u through a reshape, and a CPU scan backend keeps its own copies of bf16
        assert builds.count(normed) == model.config.n_layer, builds  # inputs (it runs in fp32)
        assert builds.count(inner) >= model.config.n_layer, builds


def test_checkpointed_layers_keep_no_recipes(monkeypatch, builds):
    monkeypatch.setattr(mixer, "channels_first", lambda t: True)
    model = _model(torch.float64)
    ids = torch.randint(0, 5, (2, 64), generator=torch.Generator().manual_seed(2))
    _, plain = _grads(model, ids, rebuild=False)
    model.gradient_checkpointing_enable()
    _, checkpointed = _grads(model, ids, rebuild=True)
    assert builds == []
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-12, atol=1e-12)


def test_rebuilding_is_on_for_gpus_only_by_default_and_never_without_gradients():
    layer = _model(torch.float32, n_layer=1).backbone.layers[0].mixer
    x = torch.zeros(1, layer.d_inner, 4)
    assert layer.rebuild_inputs is None and not layer._rebuilds(x)  # CPU tensors: keep
    layer.rebuild_inputs = True
    assert layer._rebuilds(x)
    with torch.no_grad():
        assert not layer._rebuilds(x)


@pytest.mark.parametrize("plain", [False, True])
def test_a_recipe_is_built_once_for_all_its_savers(builds, plain):
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    base = torch.randn(5, dtype=torch.float64)
    with recompute.plain_saves() if plain else torch.enable_grad():
        with recompute.rebuilt(True) as recipe:
            t = base * w  # what is rebuilt: from base and w, which stay alive
            recipe(t, lambda: base * w)
            y = (t * t).sum() + (t.exp()).sum()  # t saved by two nodes
    y.backward()
    assert builds == ([] if plain else [(5,)])
    torch.testing.assert_close(w.grad, (2 * base * w + (base * w).exp()) * base)


@pytest.mark.parametrize("layout", ["tokens", "channels"])
def test_no_rebuilt_activation_outlives_the_forward(monkeypatch, layout):
    """What a recipe replaces must be freed when the forward ends: a recipe that captured the
    tensor itself (or a view of it) would keep every layer's copy alive and save nothing."""
    import gc
    import weakref

    if layout == "channels":  # the GPU layout's projections, on CPU tensors
        monkeypatch.setattr(mixer, "channels_first", lambda t: True)
    made = []
    conv, dt = mixer.causal_conv1d, mixer.Mamba._dt

    def conv_spy(*args, **kwargs):
        out = conv(*args, **kwargs)
        made.append(weakref.ref(out if isinstance(out, torch.Tensor) else out[0]))
        return out

    def dt_spy(self, *args):
        out = dt(self, *args)
        made.append(weakref.ref(out))
        return out

    monkeypatch.setattr(mixer, "causal_conv1d", conv_spy)
    monkeypatch.setattr(mixer.Mamba, "_dt", dt_spy)
    model = _model(torch.float32, n_layer=3)
    ids = torch.randint(0, 16, (2, 64))
    for rebuild in (False, True):
        for layer in model.backbone.layers:
            layer.mixer.rebuild_inputs = rebuild
        made.clear()
        loss = model(ids).logsumexp(-1).mean()
        gc.collect()
        alive = sum(r() is not None for r in made)
        assert (alive == 0) if rebuild else (alive >= 3), (rebuild, alive)  # kept: at least u of each layer
        loss.backward()
