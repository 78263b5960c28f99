"""A whole model on the Triton kernels (Triton's interpreter on CPU) equals the reference twins:
logits and every gradient, batch > 1, with the layer's own layouts (z a strided view of in_proj's
output, B/C slices of x_proj's)."""

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.models import mixer
from genomamba.ops import use_backend

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: tests/gpu runs the compiled kernels")


@pytest.mark.parametrize("channels_first", [False, True])
def test_model_on_triton_equals_the_reference(monkeypatch, channels_first):
    """Both projection layouts (``mixer.channels_first``: GPUs use the (b, ·, l) one)."""
    pytest.importorskip("triton")
    monkeypatch.setattr(mixer, "channels_first", lambda t: channels_first)
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=11, d_state=4))
    ids = torch.randint(0, 11, (3, 40), generator=torch.Generator().manual_seed(1))
    weight = torch.linspace(-1, 1, m.config.padded_vocab_size)
    got = {}
    for backend in ("ref", "triton"):
        m.zero_grad()
        with use_backend(backend):
            out = m(ids)
            (out * weight).sum().backward()
        got[backend] = (out.detach(), {n: p.grad.clone() for n, p in m.named_parameters()})
    (ref, ref_g), (tri, tri_g) = got["ref"], got["triton"]
    assert ((tri - ref).norm() / ref.norm()).item() < 1e-5
    for name, g in ref_g.items():
        assert ((tri_g[name] - g).norm() / (g.norm() + 1e-30)).item() < 1e-4, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_both_projection_layouts_give_the_same_model(monkeypatch, dtype):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=24, n_layer=2, vocab_size=11, d_state=8, bias=True)).to(dtype)
    ids = torch.randint(0, 11, (2, 33), generator=torch.Generator().manual_seed(2))
    got = {}
    for first in (False, True):
        monkeypatch.setattr(mixer, "channels_first", lambda t, first=first: first)
        m.zero_grad()
        out = m(ids)
        out.square().mean().backward()
        got[first] = (out.detach(), {n: p.grad.clone() for n, p in m.named_parameters()})
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert ((got[True][0] - got[False][0]).norm() / got[False][0].norm()).item() < tol
    for name, g in got[False][1].items():
        assert ((got[True][1][name] - g).norm() / (g.norm() + 1e-30)).item() < tol * 10, name
