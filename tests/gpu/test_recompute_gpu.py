"""On a GPU, the per-op mixer path (the one that trains where the one-node mixer does not apply: a
forced backend, n > 64, a conv wider than 4, context parallelism) rebuilds in_proj's input, u and
delta in the backward by default: the same gradients as keeping them (bit for bit wherever two runs
that keep them agree bit for bit; CUDA's embedding backward accumulates with atomics, so it may not),
and the activations a forward leaves for the backward smaller by about those tensors. The one-node
mixer, the default for training on GPUs, leaves no more than that. Steps run eagerly: a replayed
training graph allocates from its own pool, which ``memory_allocated`` does not count."""

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
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - base  # what the forward leaves for the backward
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}, kept, peak


def test_rebuilt_inputs_same_gradients_less_memory(monkeypatch):
    monkeypatch.setenv("GENOMAMBA_CUDA_GRAPH", "0")  # eager steps, whose memory the allocator counts
    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", "0")  # the per-op path
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=256, n_layer=4, vocab_size=16, pad_vocab_size_multiple=8)).cuda()
    assert model.backbone.layers[0].mixer.rebuild_inputs is None  # default: on for CUDA tensors
    b, l = 1, 1 << 16
    ids = torch.randint(0, 5, (b, l + 1), device="cuda")
    _step(model, ids, None)  # warm up (kernel builds, autotuning)
    loss_kept, kept, held_kept, peak_kept = _step(model, ids, False)
    _, kept2, _, _ = _step(model, ids, False)
    loss_rebuilt, rebuilt, held_rebuilt, peak_rebuilt = _step(model, ids, None)
    assert torch.equal(loss_kept, loss_rebuilt)
    for name in kept:
        if torch.equal(kept[name], kept2[name]):
            assert torch.equal(kept[name], rebuilt[name]), f"gradient of {name} differs"
        else:  # run-to-run noise of the atomics: rebuilding adds none of its own
            noise = (kept[name] - kept2[name]).abs().max()
            assert (kept[name] - rebuilt[name]).abs().max() <= 4 * noise, name
    per_token = (2 * model.config.d_inner + model.config.d_model) * 2  # u, delta and in_proj's input, bf16
    saved = b * l * per_token * model.config.n_layer
    print(f"after forward {held_kept / 2**20:.0f} -> {held_rebuilt / 2**20:.0f} MiB, "
          f"peak {peak_kept / 2**20:.0f} -> {peak_rebuilt / 2**20:.0f} MiB, predicted saving {saved / 2**20:.0f} MiB")
    assert held_kept - held_rebuilt > 0.9 * saved, (held_kept, held_rebuilt, saved)
    assert peak_rebuilt < peak_kept - 0.25 * saved, (peak_kept, peak_rebuilt, saved)
    monkeypatch.setenv("GENOMAMBA_FUSED_MIXER", "auto")  # the default: the one-node mixer
    with torch.autocast("cuda", dtype=torch.bfloat16):  # the steps below run it, not the per-op path again
        assert model.backbone.layers[0].mixer._fused_kernels(torch.zeros(1, 8, 256, device="cuda")) is not None
    _step(model, ids, None)
    loss_fused, _, held_fused, peak_fused = _step(model, ids, None)
    print(f"one-node mixer: after forward {held_fused / 2**20:.0f} MiB, peak {peak_fused / 2**20:.0f} MiB")
    assert torch.allclose(loss_fused, loss_rebuilt, rtol=1e-2), (loss_fused, loss_rebuilt)
    assert held_fused <= held_rebuilt, (held_fused, held_rebuilt)
