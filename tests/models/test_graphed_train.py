"""The pieces of graph-replayed training that run without a GPU: the forward through parameter
aliases (what a capture and an eager recompute differentiate) equals the model's own forward and
gives the same gradients, without touching the parameters' ``.grad``; calls off CUDA, without
gradients, in segments or under checkpointing are never eligible; copies of a model start with no
graphs. The capture and replay themselves are tested in ``tests/gpu/test_train_graph_gpu.py``."""

import copy
import pickle

import torch

from genomamba import MambaConfig, MambaLM
from genomamba.models import graphed_train


def model():
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=20, d_state=8)).double().train()


def test_forward_through_aliases_equals_the_model_and_leaves_grad_alone():
    m = model()
    ids = torch.randint(0, 20, (2, 40), generator=torch.Generator().manual_seed(1))
    params = [(n, p) for n, p in m.backbone.named_parameters() if p.requires_grad]
    leaves = graphed_train.aliases(params)
    assert all(t.data_ptr() == p.data_ptr() and t is not p for t, (_, p) in zip(leaves, params))
    out = graphed_train.run_aliased(m.backbone, params, ids, leaves)
    weight = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(2))
    got = graphed_train.param_grads(out, weight, leaves)
    assert all(p.grad is None for _, p in params)
    want_out = m.backbone(ids)
    want = torch.autograd.grad(want_out, [p for _, p in params], weight, allow_unused=True)
    assert torch.equal(out, want_out)
    for (name, p), g, w in zip(params, got, want):
        assert (g is None) == (w is None), name
        assert w is None or torch.equal(g, w), name
    # an update in place is seen through the aliases
    with torch.no_grad():
        m.backbone.layers[0].mixer.out_proj.weight.mul_(2)
    again = graphed_train.run_aliased(m.backbone, params, ids, graphed_train.aliases(params))
    assert torch.equal(again, m.backbone(ids)) and not torch.equal(again, out)


def test_only_whole_plain_cuda_calls_with_gradients_are_eligible():
    m = model()
    ids = torch.randint(0, 20, (2, 40))
    assert not graphed_train.eligible(m, ids, None)  # CPU ids
    with torch.no_grad():
        assert not graphed_train.eligible(m, ids, None)
    m(ids).sum().backward()
    assert "_train_graphs" not in m.__dict__  # nothing attached off CUDA


def test_copies_start_without_graphs():
    m = model()
    graphs = graphed_train.graphs_of(m)
    graphs.seen["shape"] = True
    graphs.captures = 3
    twin = copy.deepcopy(m)
    assert graphed_train.graphs_of(twin) is not graphs and not graphed_train.graphs_of(twin).seen
    restored = pickle.loads(pickle.dumps(m))
    assert graphed_train.graphs_of(restored).captures == 0
