"""One-token scans on every CUDA backend: a one-token chunk of a transposed tensor (what a cached
forward of a one-token prompt passes) has a non-unit stride along l that .contiguous() keeps."""

import pytest
import torch

import genomamba.ops as ops
from genomamba import MambaConfig, MambaLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
def test_one_token_views_scan_like_the_reference(backend):
    g = torch.Generator(device="cuda").manual_seed(0)
    b, d, n = 2, 16, 8
    mk = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    u, delta, z = (mk(b, 1, d).transpose(1, 2) for _ in range(3))
    B, C = (mk(b, 1, n).transpose(1, 2) for _ in range(2))
    A = -torch.rand(d, n, device="cuda", generator=g) - 0.5
    h0 = mk(b, d, n)
    D, bias = mk(d), mk(d)
    results = {}
    for name in (backend, "ref"):
        with ops.use_backend(name):
            results[name] = ops.selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True,
                                               initial_state=h0, return_final_state=True)
    (out, st), (ref, rst) = results[backend], results["ref"]
    assert out.shape == (b, d, 1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(st, rst, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_token_prompts_and_prefill_chunks_of_one(dtype):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=11)).cuda().to(dtype).eval()
    ids = torch.randint(0, 11, (3, 7), device="cuda")
    whole = m.generate(ids, 6, temperature=0, cuda_graph=False)
    chunked = m.generate(ids, 6, temperature=0, prefill_chunk=1, cuda_graph=False)
    assert torch.equal(whole, chunked)
    one = m.generate(ids[:, :1], 4, temperature=0, cuda_graph=False)
    assert one.shape == (3, 5)
