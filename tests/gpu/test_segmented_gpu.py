"""Segment-wise training on CUDA: the same loss and gradients as the whole window (every backend)."""

import pytest
import torch
import torch.nn.functional as F

from genomamba.config import MambaConfig
from genomamba.models.lm import MambaLM
from genomamba.models.segmented import segmented_loss
from genomamba.ops import use_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("amp", [False, True])
def test_segments_equal_whole_window_on_cuda(backend, amp):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=64, n_layer=3, vocab_size=11)).cuda()
    ids = torch.randint(0, 11, (2, 3000), device="cuda")

    def segment(logits, start, stop):
        return (F.cross_entropy(logits[:, : ids.shape[1] - 1 - start].float().reshape(-1, logits.shape[-1]),
                                ids[:, start + 1:stop + 1].reshape(-1), reduction="sum"),)

    with use_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        model.zero_grad()
        lg = model(ids)[:, :-1]
        ref = F.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        ref.backward()
        want = _grads(model)
        model.zero_grad()
        loss, _ = segmented_loss(model, ids, 1024, segment)
        loss.backward()
        got = _grads(model)
    tol = 2e-2 if amp else 1e-4
    assert abs(loss.item() - ref.item()) <= tol * abs(ref.item())
    for name, g in want.items():
        err = (got[name] - g).norm().item() / (g.norm().item() + 1e-30)
        assert err < tol * 3, (backend, amp, name, err)


def test_a_segment_length_off_the_kernels_alignment_is_named():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=32, n_layer=1, vocab_size=11)).cuda()
    ids = torch.randint(0, 11, (1, 64), device="cuda")

    def segment(logits, start, stop):
        return (logits.float().sum(),)

    with pytest.warns(UserWarning, match=r"segment_len=21 is not a multiple of 8: .* 16 or 24 keeps them"):
        segmented_loss(model, ids, 21, segment)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segmented_loss(model, ids, 24, segment)
