"""Inference forwards replayed from CUDA graphs.

A forward of a few thousand tokens is bound by the host, not the GPU: every layer launches a
dozen kernels, each behind Python dispatch, and the GPU waits for them. Without gradients on
CUDA, ``MambaLM.forward`` and ``MambaLM.hidden_states`` therefore capture a shape on its second
call (the same batch, length, dtype and mode; with or without carried states) into a
``torch.cuda.CUDAGraph``, and later calls of that shape copy their ids (and states) into the
graph's static inputs and replay it: one launch for the whole backbone. The LM head runs after the
replay (one matrix product), so a graph never holds a (batch, length, vocabulary) tensor, and a
shape's forward and hidden states share one graph. The chunked API (``embed`` /
``score`` / ``classify``, 16,384 tokens a chunk) and ``generate``'s prefill capture on the first call
(:func:`capture_policy`): their chunks, and the decode that follows, run at the GPU's speed.
A capture costs about two eager forwards, once per shape.

Results are copies, never the graph's own buffers, and equal the eager forward's: the first
replay of every capture is compared with the eager forward of the same inputs, and a capture
that fails or disagrees is dropped with one warning (that shape then runs eagerly). A graph
reads the weights where they were at capture: in-place updates are seen, while weights moved or
replaced (``.to(...)``, ``load_state_dict(assign=True)``) mean capturing again.

Only forwards up to ``GENOMAMBA_CUDA_GRAPH_FORWARD_ELEMENTS`` (batch x length x d_inner, default
2^26) are captured: each graph keeps its forward's intermediate tensors allocated, and longer
forwards keep the GPU busy on their own. ``GENOMAMBA_CUDA_GRAPH=0`` turns all replay off.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections import OrderedDict
from typing import Optional

import torch

from genomamba.models.cache import InferenceCache
from genomamba.ops.checks import first_mismatch

ENV_CUDA_GRAPH = "GENOMAMBA_CUDA_GRAPH"  # the one switch for every graph replay (forwards and decode steps)
ENV_ELEMENTS = "GENOMAMBA_CUDA_GRAPH_FORWARD_ELEMENTS"
DEFAULT_ELEMENTS = 1 << 26
MAX_GRAPHS = 4  # captured forward shapes kept per model (least recently used dropped first)
MAX_SEEN = 64  # shapes remembered while waiting for their second call
_warned: set = set()
_local = threading.local()  # capture_policy's setting, per thread
_side_streams: dict = {}  # device index -> the stream every capture on it warms up on


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream captures on ``device`` warm up on (kernels compile and backends are picked there,
    outside the capture), one per device for the whole process. cuBLAS keeps a workspace for every
    stream it has run on until the process ends (on an H100, 32 MiB after one fp32 matrix product,
    64 MiB after a bf16 training step), so a fresh stream per capture held that much more for every
    model and shape ever captured."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    stream = _side_streams.get(index)
    if stream is None:
        stream = _side_streams.setdefault(index, torch.cuda.Stream(index))
    return stream


def use_cuda_graph(requested: Optional[bool], device: torch.device) -> bool:
    """Whether to replay forwards and decode steps from CUDA graphs: never off CUDA; else ``requested``, else the
    ``GENOMAMBA_CUDA_GRAPH`` variable (``auto``: on)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if requested is not None:
        return bool(requested)
    env = os.environ.get(ENV_CUDA_GRAPH, "auto").strip().lower() or "auto"
    if env in ("0", "off", "false", "no"):
        return False
    if env in ("1", "on", "true", "yes", "auto"):
        return True
    raise ValueError(f"{ENV_CUDA_GRAPH}={env!r}: expected auto, 0 or 1")


def max_elements() -> int:
    raw = os.environ.get(ENV_ELEMENTS, "").strip()
    if not raw:
        return DEFAULT_ELEMENTS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{ENV_ELEMENTS}={raw!r}: expected a whole number >= 0 (0: never capture a forward)")
    return value


def eligible(model, input_ids: torch.Tensor, cache: Optional[InferenceCache]) -> bool:
    """Whether this call may replay a captured forward: CUDA, no gradients, evaluation mode, whole
    sequences on one device (no segments, no context parallelism), small enough, graphs not off."""
    if not input_ids.is_cuda or torch.is_grad_enabled() or model.training:
        return False
    if getattr(_local, "when", "second") == "never":
        return False
    if not use_cuda_graph(None, input_ids.device) or torch.cuda.is_current_stream_capturing():
        return False
    backbone = model.backbone
    b, l = input_ids.shape
    if backbone.segment_len is not None and l > backbone.segment_len:
        return False
    if not backbone.layers or backbone.layers[0].mixer.context_parallel is not None:
        return False
    if cache is not None and (len(cache.layers) != len(backbone.layers)
                              or any(c.conv_state.shape[0] != b for c in cache.layers)):
        return False  # the eager forward reports the mismatch
    return 0 < b * l * model.config.d_inner <= max_elements()


def _fingerprint(model) -> tuple:
    return tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in [*model.parameters(), *model.buffers()])


def _cache_layout(cache: Optional[InferenceCache]) -> Optional[tuple]:
    if cache is None:
        return None
    return tuple((c.conv_state.dtype, tuple(c.conv_state.shape), c.ssm_state.dtype, tuple(c.ssm_state.shape))
                 for c in cache.layers)


class ForwardGraph:
    """One captured forward: ``ids`` (and the states in ``states_in``) in, ``out`` (and the final
    states in ``states_out``) out."""

    def __init__(self, run, input_ids: torch.Tensor, cache: Optional[InferenceCache], fingerprint: tuple):
        self.fingerprint = fingerprint
        device = input_ids.device
        self.ids = input_ids.clone()
        side = side_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # kernels compile and backends are picked outside the capture
            expected, expected_states = self._run(run, None if cache is None else cache.clone())
        torch.cuda.current_stream(device).wait_stream(side)
        # the forward replaces a cache's tensors with the final states: the ones it reads are the
        # graph's static state inputs, the ones it leaves are its static state outputs
        capture_cache = None if cache is None else cache.clone()
        self.states_in = None if cache is None else [(c.conv_state, c.ssm_state) for c in capture_cache.layers]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out, self.states_out = self._run(run, capture_cache)
        self.graph.replay()
        tol = 1e-3 if self.out.dtype in (torch.float32, torch.float64) else 5e-2
        pairs = [("output", self.out, expected)]
        for i, (mine, ref) in enumerate(zip(self.states_out or (), expected_states or ())):
            pairs += [(f"layer {i} conv state", mine[0], ref[0]), (f"layer {i} ssm state", mine[1], ref[1])]
        bad = first_mismatch(tuple(pairs), tol)
        if bad is not None:
            raise RuntimeError(f"the replayed forward differs from the eager forward ({bad[0]}, "
                               f"max |diff| {bad[1]:.3g})")

    def _run(self, run, cache: Optional[InferenceCache]):
        out = run(self.ids, cache)
        return out, None if cache is None else [(c.conv_state, c.ssm_state) for c in cache.layers]

    def replay(self, input_ids: torch.Tensor, cache: Optional[InferenceCache]) -> torch.Tensor:
        self.ids.copy_(input_ids)
        if cache is not None:
            for (conv, ssm), theirs in zip(self.states_in, cache.layers):
                conv.copy_(theirs.conv_state)
                ssm.copy_(theirs.ssm_state)
        self.graph.replay()
        if cache is not None:  # new tensors, as the eager forward leaves
            for (conv, ssm), theirs in zip(self.states_out, cache.layers):
                theirs.conv_state = conv.clone()
                theirs.ssm_state = ssm.clone()
        return self.out.clone()


class ForwardGraphs:
    """The captured forwards of one model, by call shape; copies and pickles of a model start empty."""

    def __init__(self):
        self.graphs: OrderedDict = OrderedDict()
        self.seen: OrderedDict = OrderedDict()

    def __deepcopy__(self, memo):
        return ForwardGraphs()

    def __reduce__(self):
        return (ForwardGraphs, ())

    def run(self, model, run, input_ids: torch.Tensor, cache: Optional[InferenceCache]) -> Optional[torch.Tensor]:
        """The output of ``run(input_ids, cache)`` from a replayed graph, or None: run it eagerly
        (first sighting of this shape, or its capture failed)."""
        key = (tuple(input_ids.shape), input_ids.dtype, str(input_ids.device), _cache_layout(cache),
               torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cuda"),
               torch.get_autocast_dtype("cuda"))
        graph = self.graphs.get(key)
        fp = None
        if graph is not None:
            fp = _fingerprint(model)
            if graph.fingerprint != fp:
                del self.graphs[key]
                graph = None
        elif key in self.graphs:
            return None  # its capture failed: eager from then on
        if graph is None:
            if key not in self.seen and getattr(_local, "when", "second") != "first":
                self.seen[key] = True
                while len(self.seen) > MAX_SEEN:
                    self.seen.popitem(last=False)
                return None
            graph = self._capture(model, run, input_ids, cache, fp or _fingerprint(model), key)
            if graph is None:
                return None
        self.graphs.move_to_end(key)
        return graph.replay(input_ids, cache)

    def _capture(self, model, run, input_ids, cache, fp, key) -> Optional[ForwardGraph]:
        graph = try_capture(lambda: ForwardGraph(run, input_ids, cache, fp), input_ids.device,
                            f"a forward of shape {tuple(input_ids.shape)}", stacklevel=4)
        self.graphs[key] = graph
        self.graphs.move_to_end(key)
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        return graph


def try_capture(make, device: torch.device, what: str, stacklevel: int):
    """``make()``, or None after one warning per distinct failure: anything that breaks a capture
    makes ``what`` run eagerly, never return a wrong result."""
    try:
        return make()
    except Exception as exc:
        try:
            torch.cuda.synchronize(device)
        except Exception:
            pass
        why = f"{type(exc).__name__}: {str(exc)[:300]}"
        if why not in _warned:
            _warned.add(why)
            warnings.warn(f"genomamba: {what} could not be replayed from CUDA graphs ({why}); running eagerly. "
                          f"Set GENOMAMBA_CUDA_GRAPH=0 to skip the attempt.", RuntimeWarning, stacklevel=stacklevel)
        return None


@contextlib.contextmanager
def capture_policy(when: str):
    """When a shape is captured inside this block: ``"second"`` call (the default), ``"first"`` call
    (for loops that call one shape many times: a long record's chunks, a prompt's prefill before its
    decode; waiting a call would only cost time), or ``"never"`` (eager forwards)."""
    if when not in ("first", "second", "never"):
        raise ValueError(f"when: expected 'first', 'second' or 'never', got {when!r}")
    before = getattr(_local, "when", "second")
    _local.when = when
    try:
        yield
    finally:
        _local.when = before


def attached(model, key: str, make):
    """The object kept on ``model`` under ``key`` (made by ``make()`` on first use); outside the
    module's parameters and buffers, so it is never saved, moved or copied with the model's state."""
    obj = model.__dict__.get(key)
    if obj is None:
        obj = model.__dict__[key] = make()
    return obj


def graphs_of(model) -> ForwardGraphs:
    return attached(model, "_forward_graphs", ForwardGraphs)
