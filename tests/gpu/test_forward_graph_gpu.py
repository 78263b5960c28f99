"""GPU inference forwards replayed from CUDA graphs equal the eager forward: logits and hidden
states, with and without carried states, chunked, in every grad mode that may replay; weights
updated in place are seen and moved weights are captured again; skipped without CUDA.

On a CUDA machine: ``python -m pytest tests/gpu/test_forward_graph_gpu.py -q``.
"""

import warnings

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.models import graphed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CFG = dict(d_model=64, n_layer=3, vocab_size=50, d_state=16)


def model(dtype=torch.float32):
    torch.manual_seed(0)
    return MambaLM(MambaConfig(**CFG)).to("cuda", dtype).eval()


def ids(b, l, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (b, l), generator=g).cuda()


def captured(m):
    return [k for k, g in graphed.graphs_of(m).graphs.items() if g is not None]


def eager(fn):
    with graphed.capture_policy("never"):
        return fn()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_replayed_forward_equals_eager_forward(dtype, mode):
    m = model(dtype)
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with ctx(), warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture warns: that must not happen here
        first = m(ids(2, 300))  # first call: eager, the shape is remembered
        assert captured(m) == []
        outs = [m(ids(2, 300, seed=s)) for s in range(1, 4)]  # captured on the second, then replayed
        assert len(captured(m)) == 1
        for s, out in enumerate([first, *outs]):
            want = eager(lambda: m(ids(2, 300, seed=s)))
            assert torch.equal(out, want), f"seed {s}"
        # results are copies: a later replay leaves an earlier result as it was
        assert torch.equal(outs[0], eager(lambda: m(ids(2, 300, seed=1))))
        hidden = [m.hidden_states(ids(2, 300, seed=s)) for s in range(3)]
        assert torch.equal(hidden[2], eager(lambda: m.hidden_states(ids(2, 300, seed=2))))
        assert len(captured(m)) == 1  # the graph ends at the final norm: logits and hidden states share it


@torch.inference_mode()
def test_carried_states_chunks_equal_the_whole_forward():
    m = model()
    x = ids(3, 1024 + 100)
    whole = eager(lambda: m(x))
    cache = m.allocate_cache(3)
    with graphed.capture_policy("first"):
        parts = [m(x[:, i:i + 256], cache=cache) for i in range(0, 1024, 256)]
    parts.append(m(x[:, 1024:], cache=cache))
    assert cache.seqlen_offset == 1124
    assert len(captured(m)) == 1  # the full chunks share one graph; the short last chunk ran eagerly
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-3, atol=1e-3)
    # the final states equal those of an eager chunked run
    ref = m.allocate_cache(3)
    eager(lambda: [m(x[:, i:i + 256], cache=ref) for i in range(0, 1124, 256)])
    for a, b in zip(cache.layers, ref.layers):
        assert torch.equal(a.ssm_state, b.ssm_state) and torch.equal(a.conv_state, b.conv_state)


@torch.no_grad()
def test_weights_updated_in_place_are_seen_and_moved_weights_recaptured():
    m = model()
    x = ids(1, 200)
    for _ in range(3):
        m(x)
    g = graphed.graphs_of(m).graphs
    assert len(captured(m)) == 1
    m.backbone.layers[1].mixer.out_proj.weight.mul_(1.5)  # an optimizer step or load_state_dict
    assert torch.equal(m(x), eager(lambda: m(x)))
    m.half().float()  # the weights now live elsewhere: the old graph must not run
    key = captured(m)[0]
    out = m(x)
    assert torch.equal(out, eager(lambda: m(x)))
    assert g[key] is not None and g[key].fingerprint == graphed._fingerprint(m)


def test_gradients_training_and_the_switch_keep_the_eager_forward():
    m = model()
    x = ids(1, 64)
    for _ in range(3):
        m(x).sum().backward()  # with gradients: never captured
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(x)
    assert captured(m) == []
    m.eval()
    with torch.no_grad(), graphed.capture_policy("never"):
        for _ in range(3):
            m(x)
    assert captured(m) == []


@pytest.mark.parametrize("built_in_inference_mode", [False, True])
def test_generate_prefill_from_a_graph_equals_eager_generate(built_in_inference_mode):
    # built in inference mode, the parameters keep no version counters: still captured and replayed
    with torch.inference_mode() if built_in_inference_mode else torch.no_grad():
        m = model()
        m.backbone.embedding.weight.mul_(5)
    prompt = ids(2, 77)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = m.generate(prompt, 20, temperature=0)
        assert any(k[0] == (2, 77) for k in captured(m))  # the prefill's shape was captured
        b = m.generate(prompt, 20, temperature=0)  # replays the prefill
    c = m.generate(prompt, 20, temperature=0, cuda_graph=False)
    assert torch.equal(a, b) and torch.equal(a, c)
