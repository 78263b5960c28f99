"""Training forwards and backwards replayed from CUDA graphs.

At the shapes most training runs use (a few thousand tokens a row, a few dozen rows) a step of a
small model is bound by the host: every layer launches a few dozen kernels in its forward and
backward, each behind Python and autograd bookkeeping, and the GPU waits between them. With
gradients on CUDA, ``MambaLM.forward`` and ``MambaLM.hidden_states`` therefore capture the
backbone's forward and its backward (into the gradients of every backbone parameter) as two CUDA
graphs on the second call of a shape, and later calls replay them through one autograd node:

- the forward copies the ids into the graph's static input, replays, and returns a copy of the
  hidden states; the LM head and the loss run eagerly after it, as does the optimizer;
- the backward copies the incoming gradient into the graph's static input, replays, and hands
  autograd new gradient tensors (one multi-tensor copy), which it accumulates into ``.grad`` as
  it would the eager backward's (``zero_grad(set_to_none=...)`` either way, gradient accumulation,
  tied weights).

Exactness: a capture is compared once with the eager forward and backward of the same inputs and
dropped with one warning if anything differs (that shape then runs eagerly). A replayed forward
overwrites the activations of the one before it; a backward whose activations were overwritten
(two forwards of one shape before their backwards, a second backward through a retained graph)
recomputes its forward eagerly from the saved ids and is exact too, only slower.

Captured only where a forward is whole and plain: CUDA, no cache, no segments, no context
parallelism, no activation checkpointing, no dropout while training, and at most
``GENOMAMBA_CUDA_GRAPH_FORWARD_ELEMENTS`` (batch x length x d_inner, default 2^26) elements: longer
calls keep the GPU busy on their own, and a graph keeps one step's activations allocated between
steps. At most two shapes are kept per model (least recently used dropped first), and a model
captures at most eight times: a run whose batch shapes keep changing then trains eagerly rather
than capturing again and again. The switch is the one for every graph replay,
``GENOMAMBA_CUDA_GRAPH=0``.

Memory: a replayed graph allocates nothing through the caching allocator, so
``torch.cuda.max_memory_allocated`` does not see its intermediate tensors;
``torch.cuda.max_memory_reserved`` does (the graph's pool is reserved memory). The pool is private:
the gradients handed to autograd each step are ordinary allocations that cannot reuse the pool's
activation memory, so a loop that frees its gradients before the next forward
(``zero_grad(set_to_none=True)`` first) reserves about one set of parameter gradients more than the
same loop run eagerly, where the next forward's activations take the gradients' place.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch

from genomamba.models import graphed
from genomamba.ops.checks import first_mismatch

MAX_GRAPHS = 2  # captured training shapes kept per model: each holds one step's activations
MAX_CAPTURES = 8  # captures per model: a run whose shapes keep changing trains eagerly after that


def eligible(model, input_ids: torch.Tensor, cache) -> bool:
    """Whether this call may replay a captured training forward and backward."""
    if cache is not None or not input_ids.is_cuda or not torch.is_grad_enabled():
        return False
    if torch.is_inference_mode_enabled() or getattr(graphed._local, "when", "second") == "never":
        return False
    if not graphed.use_cuda_graph(None, input_ids.device) or torch.cuda.is_current_stream_capturing():
        return False
    backbone = model.backbone
    b, l = input_ids.shape
    if backbone.segment_len is not None and l > backbone.segment_len:
        return False
    if backbone.gradient_checkpointing and model.training:
        return False
    if model.training and float(model.config.dropout):
        return False
    if not backbone.layers or backbone.layers[0].mixer.context_parallel is not None:
        return False
    if not any(p.requires_grad for p in backbone.parameters()):
        return False
    return 0 < b * l * model.config.d_inner <= graphed.max_elements()


def aliases(params: list) -> list:
    """New leaves sharing the memory of the (name, parameter) pairs ``params``: a forward through
    them reads the weights (and sees updates in place) while autograd sums into the leaves' own
    accumulators, not the parameters'."""
    return [p.detach().requires_grad_(True) for _, p in params]


def run_aliased(backbone, params: list, input_ids: torch.Tensor, leaves: list) -> torch.Tensor:
    """``backbone(input_ids)`` with ``leaves`` standing in for the parameters named in ``params``."""
    weights = {name: t for (name, _), t in zip(params, leaves)}
    return torch.func.functional_call(backbone, weights, (input_ids,), tie_weights=False)


def param_grads(out: torch.Tensor, grad_out: torch.Tensor, leaves: list) -> list:
    """The gradients of ``out`` (weighted by ``grad_out``) for ``leaves``; None for those it does not
    depend on (autograd then leaves their ``.grad`` alone, as the eager backward does)."""
    return list(torch.autograd.grad(out, leaves, grad_out, allow_unused=True))


def _probe(t: torch.Tensor) -> torch.Tensor:
    """``t`` filled in place with the capture check's incoming gradient (the same values every time)."""
    return t.normal_(generator=torch.Generator(t.device).manual_seed(0))


class TrainGraph:
    """One captured shape: the backbone's forward from ``ids`` to ``out`` and its backward from
    ``grad_out`` to ``grads`` (one per parameter in ``params``), in one memory pool."""

    def __init__(self, backbone, input_ids: torch.Tensor, params: list, fingerprint: tuple):
        self.backbone, self.params, self.fingerprint = backbone, params, fingerprint
        self.generation = 0  # bumped by every forward replay and consumed by a backward replay
        self.replays = self.recomputes = 0  # backwards replayed, backwards recomputed eagerly
        device = input_ids.device
        self.ids = input_ids.clone()
        # the blocks cached by the eager steps before it go back first, and the warm-up's blocks
        # before the capture: the graph's pool then takes their place instead of adding to them
        with torch.cuda.device(device):
            torch.cuda.empty_cache()
        side = graphed.side_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # kernels compile, self-tests run and backends are picked outside the capture
            for _ in range(2):
                leaves = aliases(self.params)
                out = run_aliased(self.backbone, self.params, self.ids, leaves)
                want_grads = param_grads(out, _probe(torch.empty_like(out)), leaves)
            # the eager results wait for the comparison in host memory, not beside the pool being filled
            want_out = out.detach().cpu()
            want_grads = [None if g is None else g.cpu() for g in want_grads]
            del out, leaves
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        with torch.cuda.device(device):
            torch.cuda.empty_cache()
        # the graphs differentiate with respect to aliases of the parameters (same memory, so updates
        # in place are seen): the parameters' own gradient accumulators may belong to an earlier
        # step's autograd graph that the caller still holds, on another stream
        leaves = aliases(self.params)
        pool = torch.cuda.graph_pool_handle()
        self.forward_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.forward_graph, pool=pool):
            out = run_aliased(self.backbone, self.params, self.ids, leaves)
        self.out = out.detach()
        # the incoming gradient lands where the forward left its output: the output is copied out by every
        # forward replay (``forward``) and the backward reads only what the forward saved (the final
        # norm keeps its input, not its output), so one (b, l, d_model) buffer serves both; the check
        # below compares the replay with the eager step and would catch a backward that read it
        self.grad_out = self.out
        self.backward_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.backward_graph, pool=pool):
            grads = param_grads(out, self.grad_out, leaves)
            self.unused = [g is None for g in grads]
            self.grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
        del out, leaves
        # once against the eager forward and backward of the same inputs (compared in host memory, one
        # tensor at a time)
        self.forward_graph.replay()
        tol = 1e-3 if self.out.dtype in (torch.float32, torch.float64) else 5e-2
        bad = first_mismatch((("output", self.out.cpu(), want_out),), tol)
        _probe(self.grad_out)
        self.backward_graph.replay()
        for name, got, want in zip((n for n, _ in params), self.grads, want_grads):
            if bad is None and want is not None:
                bad = first_mismatch(((f"gradient of {name}", got.cpu(), want),), tol)
        if bad is not None:
            raise RuntimeError(f"the replayed training step differs from the eager one ({bad[0]}, "
                               f"max |diff| {bad[1]:.3g})")

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        self.ids.copy_(input_ids)
        self.forward_graph.replay()
        self.generation += 1
        return self.out.clone(), self.generation

    def backward(self, generation: int, grad_out: torch.Tensor, input_ids: torch.Tensor, autocast) -> list:
        if generation != self.generation:  # its activations are gone: the forward again, eagerly
            self.recomputes += 1
            leaves = aliases(self.params)
            with torch.enable_grad(), torch.autocast("cuda", dtype=autocast[1], enabled=autocast[0]):
                out = run_aliased(self.backbone, self.params, input_ids, leaves)
            return param_grads(out, grad_out.to(out.dtype), leaves)
        self.grad_out.copy_(grad_out)
        self.backward_graph.replay()
        self.replays += 1
        self.generation += 1  # the backward reuses the activations' memory
        return [None if unused else g for unused, g in zip(self.unused, torch._foreach_mul(self.grads, 1.0))]


class _Replayed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, graph: TrainGraph, autocast, input_ids, *leaves):
        out, ctx.generation = graph.forward(input_ids)
        ctx.graph, ctx.autocast = graph, autocast
        ctx.save_for_backward(input_ids)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (input_ids,) = ctx.saved_tensors
        grads = ctx.graph.backward(ctx.generation, grad_out.contiguous(), input_ids, ctx.autocast)
        return (None, None, None, *grads)


class TrainGraphs:
    """The captured training shapes of one model; copies and pickles of a model start empty."""

    def __init__(self):
        self.graphs: OrderedDict = OrderedDict()
        self.seen: OrderedDict = OrderedDict()
        self.captures = 0

    def __deepcopy__(self, memo):
        return TrainGraphs()

    def __reduce__(self):
        return (TrainGraphs, ())

    def run(self, model, input_ids: torch.Tensor) -> Optional[torch.Tensor]:
        """The backbone's output for ``input_ids`` through a replayed forward (its backward replayed
        too), or None: run it eagerly (first sighting of this shape, or its capture failed)."""
        params = [(n, p) for n, p in model.backbone.named_parameters() if p.requires_grad]
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        key = (tuple(input_ids.shape), input_ids.dtype, str(input_ids.device), autocast, model.training,
               tuple(n for n, _ in params))
        fp = graphed._fingerprint(model)
        graph = self.graphs.get(key)
        if graph is not None and graph.fingerprint != fp:
            del self.graphs[key]
            graph = None
        elif graph is None and key in self.graphs:
            return None  # its capture failed: eager from then on
        if graph is None:
            if self.captures >= MAX_CAPTURES:
                return None
            if key not in self.seen:
                self.seen[key] = True
                while len(self.seen) > graphed.MAX_SEEN:
                    self.seen.popitem(last=False)
                return None
            graph = self._capture(model, input_ids, params, fp, key)
            if graph is None:
                return None
        self.graphs.move_to_end(key)
        return _Replayed.apply(graph, autocast, input_ids, *(p for _, p in params))

    def _capture(self, model, input_ids, params, fp, key) -> Optional[TrainGraph]:
        # a shape dropped from the table frees its pool before the next one is captured
        while len(self.graphs) >= MAX_GRAPHS:
            self.graphs.popitem(last=False)
        self.captures += 1
        graph = graphed.try_capture(lambda: TrainGraph(model.backbone, input_ids, params, fp), input_ids.device,
                                    f"training steps of shape {tuple(input_ids.shape)}", stacklevel=5)
        self.graphs[key] = graph
        return graph


def graphs_of(model) -> TrainGraphs:
    return graphed.attached(model, "_train_graphs", TrainGraphs)
