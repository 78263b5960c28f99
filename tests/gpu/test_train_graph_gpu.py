"""GPU training steps replayed from CUDA graphs equal eager steps: losses and weights over several
optimizer steps (fp32 and bf16 autocast), two forwards before one backward, a second backward
through a retained graph, gradient accumulation into existing gradients, weights replaced after a
capture, and the calls that must never be captured; skipped without CUDA.

On a CUDA machine: ``python -m pytest tests/gpu/test_train_graph_gpu.py -q``.
"""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from genomamba import MambaConfig, MambaLM
from genomamba.models import graphed, graphed_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CFG = dict(d_model=64, n_layer=3, vocab_size=50, d_state=16)


def twins():
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(**CFG)).cuda().train()
    return m, copy.deepcopy(m)


def ids(b, l, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (b, l), generator=g).cuda()


def captured(m):
    return [k for k, g in graphed_train.graphs_of(m).graphs.items() if g is not None]


def counts(m):
    """(backwards replayed, backwards recomputed eagerly) over the model's captured shapes."""
    graphs = [g for g in graphed_train.graphs_of(m).graphs.values() if g is not None]
    return sum(g.replays for g in graphs), sum(g.recomputes for g in graphs)


def policy(graph: bool):
    return contextlib.nullcontext() if graph else graphed.capture_policy("never")


def loss_of(m, x, amp):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        logits = m(x[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def close(a, b, tol):
    return float((a.float() - b.float()).abs().max()) <= tol * (float(b.float().abs().max()) + 1.0)


@pytest.mark.parametrize("amp", [False, True])
def test_replayed_steps_equal_eager_steps(amp):
    graph_model, eager_model = twins()
    losses = {}
    for name, m in (("graph", graph_model), ("eager", eager_model)):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1)
        losses[name] = []
        for step in range(5):
            with policy(name == "graph"):
                loss = loss_of(m, ids(4, 257, seed=step), amp)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[name].append(loss.item())
    assert captured(graph_model), "the second call of a shape should have been captured"
    assert counts(graph_model) == (4, 0)  # the first call ran eagerly, the second captured; 2-5 replayed
    assert not captured(eager_model)
    tol = 1e-4 if not amp else 2e-2
    for a, b in zip(losses["graph"], losses["eager"]):
        assert abs(a - b) <= tol * max(1.0, abs(b)), (losses["graph"], losses["eager"])
    for (name, p), q in zip(graph_model.named_parameters(), eager_model.parameters()):
        assert close(p.detach(), q.detach(), 1e-3 if not amp else 5e-2), name


def grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def same_grads(graph_model, eager_model):
    got, want = grads(graph_model), grads(eager_model)
    for name in want:
        assert close(got[name], want[name], 1e-4), name


def warm(m, x):
    """Two calls of this shape: the second captures it."""
    for _ in range(2):
        loss_of(m, x, False).backward()
    m.zero_grad(set_to_none=True)
    assert captured(m)


def test_two_forwards_of_one_shape_before_their_backward():
    graph_model, eager_model = twins()
    a, b = ids(2, 129, seed=1), ids(2, 129, seed=2)
    warm(graph_model, a)
    (loss_of(graph_model, a, False) + 2 * loss_of(graph_model, b, False)).backward()
    with graphed.capture_policy("never"):
        (loss_of(eager_model, a, False) + 2 * loss_of(eager_model, b, False)).backward()
    assert counts(graph_model) == (2, 1)  # warm's call and b's backward replayed, a's recomputed
    assert grads(graph_model).keys() == grads(eager_model).keys()
    same_grads(graph_model, eager_model)


def test_second_backward_through_a_retained_graph_and_accumulation():
    graph_model, eager_model = twins()
    x, y = ids(2, 129, seed=3), ids(2, 129, seed=4)
    warm(graph_model, x)
    for m, graph in ((graph_model, True), (eager_model, False)):
        with policy(graph):
            loss = loss_of(m, x, False)
            loss.backward(retain_graph=True)
            loss.backward()  # activations of the replay are gone: recomputed, still exact
            loss_of(m, y, False).backward()  # accumulated into the existing gradients
    assert counts(graph_model) == (3, 1)  # warm, the first backward and y's replayed; the second recomputed
    same_grads(graph_model, eager_model)


def test_replaced_weights_are_captured_again():
    graph_model, eager_model = twins()
    x = ids(2, 65, seed=5)
    warm(graph_model, x)
    first = captured(graph_model)[0]
    before = graphed_train.graphs_of(graph_model).graphs[first]
    for m in (graph_model, eager_model):  # new tensors: the graph read the old ones
        for p in m.parameters():
            p.data = p.data * 0.5
    loss_of(graph_model, x, False).backward()
    with graphed.capture_policy("never"):
        loss_of(eager_model, x, False).backward()
    after = graphed_train.graphs_of(graph_model).graphs.get(first)
    assert after is not None and after is not before
    same_grads(graph_model, eager_model)


def test_calls_that_are_never_captured():
    m, _ = twins()
    x = ids(2, 65, seed=6)
    m.set_segment_len(32)
    for _ in range(3):
        loss_of(m, x, False).backward()
    m.set_segment_len(None)
    m.gradient_checkpointing_enable()
    for _ in range(3):
        loss_of(m, x, False).backward()
    m.gradient_checkpointing_enable(False)
    with torch.no_grad():
        for _ in range(3):
            m(x)
    assert not captured(m)


def test_models_trained_one_after_another_leave_no_memory_behind():
    """Each fresh model's captured training step (and its warm-up) holds nothing once the model is
    gone: three models trained in turn end where the first one started, within a few MiB; the
    captures warm up on one stream per device, so cuBLAS keeps one workspace, not one per capture."""
    import gc

    def train_one():
        m, _ = twins()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        for step in range(3):
            loss = loss_of(m, ids(4, 257, seed=step), True)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        assert captured(m)

    train_one()  # the first model pays for what stays for the process (workspaces, kernels)
    gc.collect()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    for _ in range(3):
        train_one()
        gc.collect()
        torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - base
    assert grown <= 4 << 20, f"{grown / 2**20:.1f} MiB still allocated after three models were dropped"
    assert len(graphed._side_streams) == 1
