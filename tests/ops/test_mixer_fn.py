"""The one-node training mixer (genomamba.ops.mixer_fn) against the per-op mixer, in float64 on CPU
with the generic kernels: output and every gradient (input and all parameters), with and without
the projection biases, one and several batch rows; how it is chosen. The Triton conv inside it is
tested in test_triton_interpret.py, the CUDA kernels inside it in tests/gpu."""

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.models.mixer import Mamba
from genomamba.ops import mixer_fn


def _mixer(bias: bool, seed: int = 0) -> Mamba:
    torch.manual_seed(seed)
    m = Mamba(MambaConfig(d_model=16, n_layer=1, vocab_size=8, d_state=4, bias=bias, conv_bias=True)).double()
    with torch.no_grad():  # away from the init's round values
        m.D.uniform_(-1, 1)
        m.A_log.add_(torch.rand_like(m.A_log))
        if bias:
            m.in_proj.bias.normal_()
            m.out_proj.bias.normal_()
    return m


def _grads(m, h, g, fused: str, monkeypatch):
    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", fused)
    out = m(h)
    return out, torch.autograd.grad(out, [h] + list(m.parameters()), g)


@pytest.mark.parametrize("rebuild", [False, True])  # True: the lean function (in_proj run again in the backward)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("b,l", [(1, 9), (3, 17)])
def test_fused_mixer_equals_per_op_mixer_in_float64(bias, b, l, rebuild, monkeypatch):
    m = _mixer(bias)
    m.rebuild_inputs = rebuild
    h = torch.randn(b, l, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(b, l, 16, dtype=torch.float64)
    ref, ref_grads = _grads(m, h, g, "0", monkeypatch)
    out, grads = _grads(m, h, g, "1", monkeypatch)
    assert type(out.grad_fn).__name__.startswith("MixerFn") and not type(ref.grad_fn).__name__.startswith("MixerFn")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    names = ["hidden"] + [n for n, _ in m.named_parameters()]
    for name, a, e in zip(names, grads, ref_grads):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("rebuild", [False, True])  # True: the mixer's input rebuilt from the residual, lean
def test_fused_mixer_inside_a_model_trains_like_the_per_op_model(rebuild, monkeypatch):
    """Whole model, loss and parameter gradients (the block's residual path around the mixer)."""
    def step(fused):
        monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", fused)
        torch.manual_seed(1)
        m = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=8, d_state=4)).double()
        for layer in m.backbone.layers:
            layer.mixer.rebuild_inputs = rebuild
        ids = torch.randint(0, 8, (2, 21))
        loss = torch.nn.functional.cross_entropy(m(ids[:, :-1]).reshape(-1, m.config.padded_vocab_size),
                                                 ids[:, 1:].reshape(-1))
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in m.named_parameters()}

    (l0, g0), (l1, g1) = step("0"), step("1")
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=0)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-9, atol=1e-12, msg=n)


def test_choice(monkeypatch):
    m = _mixer(False)
    h = torch.randn(1, 5, 16, dtype=torch.float64)
    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", "auto")
    assert m._fused_kernels(h) is None  # CPU: the per-op path
    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", "1")
    assert m._fused_kernels(h) is mixer_fn.GENERIC
    with torch.no_grad():
        assert m._fused_kernels(h) is None  # inference never takes it
    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", "sometimes")
    with pytest.raises(ValueError, match="GENOMAMBA_FUSED_MIXER='sometimes'"):
        m._fused_kernels(h)


def _with_states(m, h, conv0, ssm0, fused: str, monkeypatch):
    """Mixer output and the states it leaves, from (conv0, ssm0), through the cache path."""
    from genomamba.models.mixer import LayerCache

    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", fused)
    cache = LayerCache(conv0, ssm0)
    out = m(h, cache=cache)
    return out, cache.conv_state, cache.ssm_state


@pytest.mark.parametrize("l", [2, 11])  # 2: shorter than the conv's state (its tail reaches into conv0)
def test_fused_mixer_from_and_to_states_equals_the_per_op_cache_path(l, monkeypatch):
    m = _mixer(True)
    b, d, n = 2, m.d_inner, m.d_state
    h = torch.randn(b, l, 16, dtype=torch.float64, requires_grad=True)
    conv0 = torch.randn(b, d, m.d_conv - 1, dtype=torch.float64, requires_grad=True)
    ssm0 = torch.randn(b, d, n, dtype=torch.float64, requires_grad=True)
    cot = [torch.randn(b, l, 16, dtype=torch.float64), torch.randn(b, d, m.d_conv - 1, dtype=torch.float64),
           torch.randn(b, d, n, dtype=torch.float64)]
    wrt = [h, conv0, ssm0] + list(m.parameters())
    ref = _with_states(m, h, conv0, ssm0, "0", monkeypatch)
    ref_grads = torch.autograd.grad(ref, wrt, cot)
    got = _with_states(m, h, conv0, ssm0, "1", monkeypatch)
    assert type(got[0].grad_fn).__name__.startswith("MixerFn")
    grads = torch.autograd.grad(got, wrt, cot)
    for name, a, e in zip(["out", "conv state", "ssm state"], got, ref):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=name)
    names = ["hidden", "conv0", "ssm0"] + [n for n, _ in m.named_parameters()]
    for name, a, e in zip(names, grads, ref_grads):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("rebuild", [False, True])
def test_segment_wise_training_through_the_fused_mixer_equals_the_whole_window(rebuild, monkeypatch):
    from genomamba.models.segmented import segmented_loss

    torch.manual_seed(2)
    m = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=8, d_state=4)).double()
    for layer in m.backbone.layers:
        layer.mixer.rebuild_inputs = rebuild
    ids = torch.randint(0, 8, (2, 30))
    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", "0")
    lg = m(ids[:, :-1])
    whole = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
    want = torch.autograd.grad(whole, list(m.parameters()))
    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", "1")
    import genomamba.models.mixer as mixer_module

    calls = []
    original = mixer_module.mixer_forward
    monkeypatch.setattr(mixer_module, "mixer_forward", lambda *a, **k: calls.append(k) or original(*a, **k))

    def segment(logits, start, stop):  # next-token loss in the model's float64
        return (torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                  ids[:, start + 1:stop + 1].reshape(-1), reduction="sum"),)

    loss, _ = segmented_loss(m, ids[:, :-1], 8, segment)
    got = torch.autograd.grad(loss, list(m.parameters()))
    assert len(calls) == 4 * 2 and all(k.get("states") for k in calls)  # the backward's recomputed segments
    torch.testing.assert_close(loss, whole, rtol=1e-12, atol=0)
    for (name, _), a, e in zip(m.named_parameters(), got, want):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("lean,keep", [(False, False), (True, False), (False, True)])
def test_what_the_function_keeps_for_its_backward(lean, keep):
    """No variant keeps the scan's output (its backward writes it again); the lean one does not keep
    in_proj's output either; ``keep`` keeps the conv output and delta (two (d_inner, b * l) matrices)
    instead of computing them again, for the same gradients bit for bit."""
    m = _mixer(True)
    b, l, d = 2, 13, m.d_inner
    h = torch.randn(b, l, 16, dtype=torch.float64, requires_grad=True)
    kept = []

    def pack(t):
        kept.append(tuple(t.shape))
        return t

    args = (h, m.in_proj.weight, m.in_proj.bias, m.conv1d.weight[:, 0], m.conv1d.bias, m.x_proj.weight,
            m.dt_proj.weight, m.dt_proj.bias, -torch.exp(m.A_log), m.D, m.out_proj.weight, m.out_proj.bias,
            m.d_state, mixer_fn.GENERIC)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = mixer_fn.mixer_forward(*args, lean=lean, keep=keep)
    activations = [s for s in kept if len(s) == 2 and s[1] == b * l or len(s) == 2 and s[0] == b * l]
    assert (b * l, 16) in activations  # the mixer's input (the block rebuilds it where it can)
    assert ((2 * d, b * l) in activations) is not lean
    assert activations.count((d, b * l)) == (2 if keep else 0)  # conv output and delta; never the scan's output
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [h] + list(m.parameters()), g, retain_graph=True)  # A's exp: shared below
    want = torch.autograd.grad(m(h), [h] + list(m.parameters()), g)  # CPU: the per-op path
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    plain = torch.autograd.grad(mixer_fn.mixer_forward(*args), [h] + list(m.parameters()), g)
    for a, e in zip(got, plain):
        assert torch.equal(a, e), "what the function keeps changed a gradient"
