"""Triton backend: selective scan (fwd/bwd), selective_state_update, causal depthwise conv1d.

Kernels live in scan.py, state_update.py and conv1d.py; the dispatch table
(:mod:`genomamba.ops.dispatch`) imports them only when this backend is chosen, so importing
genomamba never imports triton. The kernels keep an fp32 state: fp64 calls go to other backends.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def available(device: str = "cuda") -> bool:
    """True where triton imports and either ``device`` is a CUDA device that is present, or
    ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, for tests on machines without a GPU)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    return device == "cuda" and torch.cuda.is_available()


def unavailable_reason() -> str:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if torch.cuda.is_available():  # then only a call on CPU tensors can find it unavailable
        return "the tensors are on the CPU, where its kernels run only under TRITON_INTERPRET=1"
    return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU)"


def is_build_error(exc: BaseException) -> bool:
    """True if ``exc`` comes from Triton compiling a kernel (raised before launch), not from the call."""
    return type(exc).__module__.split(".")[0] == "triton"


__all__ = ["available", "unavailable_reason", "is_build_error"]
