"""Dropout (``MambaConfig.dropout``): training-only, exact under segment-wise training."""

import pytest
import torch

from genomamba.config import MambaConfig
from genomamba.models.lm import MambaLM
from genomamba.models.segmented import segment_bounds, segmented_loss
from tests.models.test_segmented import _grads, _next_token_loss


def _model(dropout, **kw):
    torch.manual_seed(0)
    cfg = dict(d_model=32, n_layer=3, vocab_size=12, d_state=8, dropout=dropout)
    cfg.update(kw)
    return MambaLM(MambaConfig(**cfg)).to(torch.float64)


def test_training_drops_evaluation_does_not():
    ids = torch.randint(0, 12, (2, 40), generator=torch.Generator().manual_seed(1))
    plain, dropped = _model(0.0), _model(0.3)
    dropped.load_state_dict(plain.state_dict())
    plain.train()
    dropped.train()
    torch.manual_seed(5)
    a = dropped(ids)
    torch.manual_seed(5)
    b = dropped(ids)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the masks follow the seed
    assert (a - plain(ids)).abs().max() > 1e-3
    dropped.eval()
    plain.eval()
    torch.testing.assert_close(dropped(ids), plain(ids), rtol=0, atol=0)
    with torch.no_grad():  # generation runs the eval path too
        cache = dropped.allocate_cache(2)
        torch.testing.assert_close(dropped(ids, cache=cache), plain(ids), rtol=0, atol=0)


def test_dropout_zero_changes_nothing_in_training():
    ids = torch.randint(0, 12, (2, 30), generator=torch.Generator().manual_seed(2))
    model = _model(0.0).train()
    out = model(ids)
    torch.testing.assert_close(out, model.eval()(ids), rtol=0, atol=0)


@pytest.mark.parametrize("segment_len", [5, 16])
def test_segments_recompute_the_forward_masks(segment_len):
    """The backward of segment-wise training recomputes each segment with the masks its forward
    drew: its gradients equal those of the same segments chained in one autograd graph."""
    model = _model(0.25).train()
    ids = torch.randint(0, 12, (2, 40), generator=torch.Generator().manual_seed(3))
    loss_fn = _next_token_loss(ids)
    torch.manual_seed(11)
    cache = model.allocate_cache(2, dtype=torch.float64)
    ref = 0.0
    for start, stop in segment_bounds(40, segment_len):
        ref = ref + loss_fn(model(ids[:, start:stop], cache=cache), start, stop)[0]
    model.zero_grad()
    ref.backward()
    want = _grads(model)
    torch.manual_seed(11)
    model.zero_grad()
    loss, _ = segmented_loss(model, ids, segment_len, loss_fn)
    loss.backward()
    got = _grads(model)
    assert abs(loss.item() - ref.item()) < 1e-10 * abs(ref.item())
    assert set(got) == set(want) and len(got) == len(list(model.parameters()))
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-9, atol=1e-12, msg=name)
    # and the generators move on as they would without the recomputation
    after = torch.rand(3)
    torch.manual_seed(11)
    segmented_loss(model, ids, segment_len, loss_fn)
    torch.testing.assert_close(torch.rand(3), after)


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.1", True])
def test_bad_dropout_is_named(bad):
    with pytest.raises(ValueError, match="MambaConfig.dropout"):
        MambaConfig(dropout=bad)
