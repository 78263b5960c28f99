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


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("b,l", [(1, 9), (3, 17)])
def test_fused_mixer_equals_per_op_mixer_in_float64(bias, b, l, monkeypatch):
    m = _mixer(bias)
    h = torch.randn(b, l, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(b, l, 16, dtype=torch.float64)
    ref, ref_grads = _grads(m, h, g, "0", monkeypatch)
    out, grads = _grads(m, h, g, "1", monkeypatch)
    assert type(out.grad_fn).__name__.startswith("MixerFn") and not type(ref.grad_fn).__name__.startswith("MixerFn")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    names = ["hidden"] + [n for n, _ in m.named_parameters()]
    for name, a, e in zip(names, grads, ref_grads):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=name)


def test_fused_mixer_inside_a_model_trains_like_the_per_op_model(monkeypatch):
    """Whole model, loss and parameter gradients (the block's residual path around the mixer)."""
    def step(fused):
        monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", fused)
        torch.manual_seed(1)
        m = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=8, d_state=4)).double()
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
