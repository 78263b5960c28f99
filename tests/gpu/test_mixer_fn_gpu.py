"""The one-node training mixer on CUDA (Triton conv, CUDA scan, the (channels, b * l) layout) against
the per-op mixer: output and every gradient, float32 and bf16 autocast, aligned and unaligned
lengths, one and several batch rows; two backward runs bit-identical; a whole model's training step.
Skipped without CUDA. On a CUDA machine: ``python -m pytest tests/gpu/test_mixer_fn_gpu.py -q``."""

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.models.mixer import Mamba

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _mixer(d_model=64, d_state=16, bias=False):
    torch.manual_seed(0)
    m = Mamba(MambaConfig(d_model=d_model, n_layer=1, vocab_size=8, d_state=d_state, bias=bias)).cuda()
    with torch.no_grad():
        m.D.uniform_(-1, 1)
        m.A_log.add_(torch.rand_like(m.A_log))
    return m


def _run(m, h, g, fused, monkeypatch, amp):
    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", fused)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = m(h)
    grads = torch.autograd.grad(out, [h] + list(m.parameters()), g)
    return out, grads


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("b,l", [(1, 1000), (2, 512), (4, 333), (3, 4096)])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_mixer_equals_per_op_mixer(amp, b, l, bias, monkeypatch):
    m = _mixer(bias=bias)
    h = torch.randn(b, l, 64, device="cuda", requires_grad=True)
    g = torch.randn(b, l, 64, device="cuda")
    ref, ref_grads = _run(m, h, g, "0", monkeypatch, amp)
    out, grads = _run(m, h, g, "auto", monkeypatch, amp)
    assert type(out.grad_fn).__name__.startswith("MixerFn")
    assert not type(ref.grad_fn).__name__.startswith("MixerFn")
    tol = 2e-2 if amp else 1e-4  # bf16 products in a different GEMM order; fp32 TF32-free GEMMs
    names = ["out", "hidden"] + [n for n, _ in m.named_parameters()]
    for name, a, e in zip(names, [out] + list(grads), [ref] + list(ref_grads)):
        err = ((a.float() - e.float()).norm() / e.float().norm().clamp_min(1e-30)).item()
        assert err < tol, (name, err)
    again = _run(m, h, g, "auto", monkeypatch, amp)[1]
    for name, a, e in zip(names[1:], grads, again):
        assert torch.equal(a, e), f"{name}: two backward runs differ"


def test_model_training_step_with_the_fused_mixer(monkeypatch):
    def step(fused):
        monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", fused)
        torch.manual_seed(1)
        m = MambaLM(MambaConfig(d_model=128, n_layer=3, vocab_size=16)).cuda()
        ids = torch.randint(0, 16, (4, 2049), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lg = m(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        return loss.item(), {n: p.grad.float() for n, p in m.named_parameters()}

    (l0, g0), (l1, g1) = step("0"), step("auto")
    assert abs(l0 - l1) < 1e-3 * abs(l0)
    for n in g0:
        err = ((g1[n] - g0[n]).norm() / g0[n].norm().clamp_min(1e-30)).item()
        assert err < 3e-2, (n, err)


@pytest.mark.parametrize("fused", ["0", "auto"])
def test_keeping_instead_of_rebuilding_gives_the_same_bits(fused, monkeypatch):
    """``rebuild_inputs=False`` (keep in_proj's input, the conv output and delta; the one-node mixer
    then computes nothing again in its backward) trains to the same loss and gradients, bit for bit,
    as the GPU default (rebuild them), through the one-node mixer and the per-op one."""
    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", fused)

    def step(rebuild):
        torch.manual_seed(1)
        m = MambaLM(MambaConfig(d_model=128, n_layer=3, vocab_size=16)).cuda()
        for layer in m.backbone.layers:
            layer.mixer.rebuild_inputs = rebuild
        ids = torch.randint(0, 16, (4, 2049), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            rebuilds = m.backbone.layers[0].mixer._rebuilds(ids.float())
            lg = m(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        return rebuilds, loss.detach(), {n: p.grad for n, p in m.named_parameters()}

    (r0, l0, g0), (r1, l1, g1) = step(False), step(None)
    assert not r0 and r1, "False keeps; the GPU default rebuilds"
    assert torch.equal(l0, l1), (l0.item(), l1.item())
    for n in g0:
        if n.startswith("backbone.embedding"):  # CUDA's embedding backward adds with atomics: its bits vary
            torch.testing.assert_close(g0[n], g1[n], rtol=1e-5, atol=1e-7, msg=n)
        else:
            assert torch.equal(g0[n], g1[n]), f"{n}: keeping and rebuilding differ"


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("l", [3, 1000])
def test_fused_mixer_from_and_to_states_equals_the_per_op_cache_path(amp, l, monkeypatch):
    from genomamba.models.mixer import LayerCache

    m = _mixer(bias=True)
    b, d, n, w = 2, m.d_inner, m.d_state, m.d_conv
    h = torch.randn(b, l, 64, device="cuda", requires_grad=True)
    conv0 = torch.randn(b, d, w - 1, device="cuda", requires_grad=True)
    ssm0 = torch.randn(b, d, n, device="cuda", requires_grad=True)
    cot = [torch.randn(b, l, 64, device="cuda"), torch.randn(b, d, w - 1, device="cuda"),
           torch.randn(b, d, n, device="cuda")]
    wrt = [h, conv0, ssm0] + list(m.parameters())

    def run(fused):
        monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", fused)
        cache = LayerCache(conv0, ssm0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = m(h, cache=cache)
        outs = [out, cache.conv_state, cache.ssm_state]
        return outs, torch.autograd.grad(outs, wrt, cot)

    ref, ref_grads = run("0")
    got, grads = run("auto")
    tol = 2e-2 if amp else 1e-4
    names = ["out", "conv state", "ssm state", "hidden", "conv0", "ssm0"] + [n for n, _ in m.named_parameters()]
    for name, a, e in zip(names, got + list(grads), ref + list(ref_grads)):
        err = ((a.float() - e.float()).norm() / e.float().norm().clamp_min(1e-30)).item()
        assert err < tol, (name, err)


def test_segment_wise_training_with_the_fused_mixer_equals_the_whole_window(monkeypatch):
    from genomamba.models.segmented import segmented_loss

    torch.manual_seed(3)
    m = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=16)).cuda()
    ids = torch.randint(0, 16, (2, 3001), device="cuda")

    def segment(logits, start, stop):
        return (torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                  ids[:, start + 1:stop + 1].reshape(-1), reduction="sum"),)

    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", "0")
    lg = m(ids[:, :-1])
    whole = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
    want = torch.autograd.grad(whole, list(m.parameters()))
    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", "auto")
    loss, _ = segmented_loss(m, ids[:, :-1], 1024, segment)
    got = torch.autograd.grad(loss, list(m.parameters()))
    assert abs(loss.item() - whole.item()) < 1e-5 * abs(whole.item())
    for (name, _), a, e in zip(m.named_parameters(), got, want):
        err = ((a - e).norm() / e.norm().clamp_min(1e-30)).item()
        assert err < 1e-4, (name, err)


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("b,l", [(1, 1000), (3, 4096)])
def test_fused_mixer_with_the_two_kernel_conv_backward_keeping_xz(amp, b, l, monkeypatch):
    """GENOMAMBA_CONV_BWD_IN_PLACE=0 and rebuild_inputs=False (in_proj's output kept, not computed
    again): the other variants of the function, against the per-op mixer."""
    from genomamba.ops.triton import conv1d

    monkeypatch.setitem(conv1d.CONFIG, "bwd_in_place", False)
    monkeypatch.setattr(Mamba, "rebuild_inputs", False)
    test_fused_mixer_equals_per_op_mixer(amp, b, l, True, monkeypatch)
