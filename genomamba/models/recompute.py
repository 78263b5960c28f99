"""Activations rebuilt in the backward instead of kept: saved-tensor hooks for the Mamba mixer.

In training, the scan keeps its inputs u (the conv's output) and delta (dt_proj's output) for its
backward, x_proj keeps u as well, and in_proj keeps its input (the block's normed hidden state):
d_model + 2 d_inner values per token and layer, the largest share of a layer's activations. All
three are cheap to rebuild from tensors that stay saved anyway (the residual stream, which the norm
keeps; in_proj's output, which the conv and the gate keep; x_proj's small output). Inside :func:`rebuilt`,
autograd saves a recipe in their place; the backward runs the recipe once, shared by every node
that saved the tensor, under the autocast state of the forward, with the same kernels on the same
inputs, so the gradients are bit for bit those of keeping the tensors.

Layers run under activation checkpointing (``MambaLM.gradient_checkpointing_enable``) rebuild
everything anyway; :func:`plain_saves` turns the recipes off there.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import torch

_state = threading.local()


@contextlib.contextmanager
def plain_saves() -> Iterator[None]:
    """Inside: :func:`rebuilt` keeps tensors as autograd normally does (no recipes)."""
    before = getattr(_state, "off", False)
    _state.off = True
    try:
        yield
    finally:
        _state.off = before


def keep_activations(module: torch.nn.Module, keep: bool = True) -> int:
    """Every Mamba mixer inside ``module`` keeps its activations for the backward (``keep``:
    ``rebuild_inputs = False``) or goes back to the default (None: rebuilt on GPUs). Returns how many
    mixers were set."""
    n = 0
    for m in module.modules():
        if hasattr(m, "rebuild_inputs") and hasattr(m, "A_log"):
            m.rebuild_inputs = False if keep else None
            n += 1
    return n


def recipes_allowed() -> bool:
    return not getattr(_state, "off", False)


def _key(t: torch.Tensor) -> tuple:
    # what identifies a tensor, and the views of it that start where it starts and span as many
    # elements (a transpose or a reshape a matmul saves), while the forward runs: it is alive then,
    # so its memory is not reused
    return (t.data_ptr(), t.dtype, t.device, t.numel(), t._version)


class _Target:
    __slots__ = ("key", "layout", "make", "value", "device_type", "autocast", "dtype")

    def __init__(self, tensor: torch.Tensor, make: Callable[[], torch.Tensor]):
        self.key = _key(tensor)
        self.layout = (tuple(tensor.shape), tuple(tensor.stride()))
        self.make = make
        self.value = None
        self.device_type = tensor.device.type
        self.autocast = torch.is_autocast_enabled(self.device_type)
        self.dtype = torch.get_autocast_dtype(self.device_type)

    def build(self) -> torch.Tensor:
        if self.value is None:
            with torch.no_grad(), torch.autocast(self.device_type, dtype=self.dtype, enabled=self.autocast):
                value = self.make()
            got = (value.dtype, value.device, (tuple(value.shape), tuple(value.stride())))
            want = (self.key[1], self.key[2], self.layout)
            if got != want:
                raise RuntimeError(f"genomamba: a rebuilt activation differs from the one it replaces "
                                   f"({got} vs {want})")
            self.value = value
        return self.value


class _Recipe:
    """A saved tensor as its target and the view of it that was saved."""

    __slots__ = ("target", "shape", "stride")

    def __init__(self, target: _Target, saved: torch.Tensor):
        self.target = target
        self.shape, self.stride = tuple(saved.shape), tuple(saved.stride())

    def build(self) -> torch.Tensor:
        base = self.target.build()
        if (self.shape, self.stride) == self.target.layout:
            return base
        return base.as_strided(self.shape, self.stride, base.storage_offset())


@contextlib.contextmanager
def rebuilt(enabled: bool = True) -> Iterator[Callable[[torch.Tensor, Callable[[], torch.Tensor]], None]]:
    """``with rebuilt() as recipe: recipe(t, make); ...``: tensors autograd saves inside the block
    that are ``t`` (or a view of all of it from its first element) are saved as ``make`` (called
    once, in the backward, without gradients) instead of as memory. ``make`` must recompute ``t``
    exactly, with its layout, from tensors that stay alive. Disabled (or under :func:`plain_saves`),
    the block runs as it would without this."""
    if not (enabled and recipes_allowed() and torch.is_grad_enabled()):
        yield lambda t, make: None
        return
    targets: list[_Target] = []

    def recipe(t: torch.Tensor, make: Callable[[], torch.Tensor]) -> None:
        targets.append(_Target(t, make))

    def pack(t: torch.Tensor):
        if targets:
            k = _key(t)
            for target in targets:
                if target.key == k:
                    return _Recipe(target, t)
        return t

    def unpack(saved):
        return saved.build() if isinstance(saved, _Recipe) else saved

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield recipe
