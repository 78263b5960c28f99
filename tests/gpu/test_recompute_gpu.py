"""On a GPU, the mixer rebuilds u and delta in the backward by default: same gradients bit for bit
as keeping them, and the peak memory of a training step lower by about those two tensors per layer."""

import pytest
import torch

from genomamba import MambaConfig, MambaLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _step(model, ids, rebuild):
    for layer in model.backbone.layers:
        layer.mixer.rebuild_inputs = rebuild
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}, peak


def test_rebuilt_inputs_same_gradients_less_memory():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=256, n_layer=4, vocab_size=16, pad_vocab_size_multiple=8)).cuda()
    assert model.backbone.layers[0].mixer.rebuild_inputs is None  # default: on for CUDA tensors
    b, l = 1, 1 << 16
    ids = torch.randint(0, 5, (b, l + 1), device="cuda")
    _step(model, ids, None)  # warm up (kernel builds, autotuning)
    loss_kept, kept, peak_kept = _step(model, ids, False)
    loss_rebuilt, rebuilt, peak_rebuilt = _step(model, ids, None)
    assert torch.equal(loss_kept, loss_rebuilt)
    for name in kept:
        assert torch.equal(kept[name], rebuilt[name]), f"gradient of {name} differs"
    saved = 2 * b * model.config.d_inner * l * 2 * model.config.n_layer  # u and delta in bf16
    assert peak_kept - peak_rebuilt > 0.75 * saved, (peak_kept, peak_rebuilt, saved)
