"""Triton backend: selective scan (fwd/bwd), selective_state_update, causal depthwise conv1d.

Kernels live in scan.py, state_update.py and conv1d.py (the scan module is not called
selective_scan.py: importing it would replace the op of that name on this package).

Importing this package never imports triton; the ops import their kernels on first call, so
``import genomamba`` works on machines without triton. ``available()`` is True where triton imports
and either a CUDA device is present or ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, for CI).
"""

from __future__ import annotations

import importlib.util
import os


def available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    import torch

    return torch.cuda.is_available()


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_final_state=False,
):
    from genomamba.ops.triton.scan import selective_scan as _f

    return _f(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state)


# The state-update and conv1d kernels are checked under the interpreter (tests/ops) but were not
# yet compiled on a GPU in this project's runs: if Triton fails to compile one there, that op
# falls back to its reference twin for the rest of the process (with a one-line notice) instead
# of breaking decoding or training. A compile error is raised before launch, so nothing (the
# in-place decoding state included) has been written when the fallback runs.
_fallen_back: set[str] = set()


def _guarded(name, kernel_fn, ref_fn, *args):
    if name not in _fallen_back:
        try:
            return kernel_fn(*args)
        except Exception as exc:
            if type(exc).__module__.split(".")[0] != "triton":
                raise  # a real error in the call, not a Triton build problem
            import sys

            _fallen_back.add(name)
            print(f"genomamba: triton {name} failed to build ({type(exc).__name__}); using torch", file=sys.stderr)
    return ref_fn(*args)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    from genomamba.ops.reference import selective_state_update_ref
    from genomamba.ops.triton.state_update import selective_state_update as _f

    return _guarded(
        "selective_state_update", _f, selective_state_update_ref, state, x, dt, A, B, C, D, z, dt_bias, dt_softplus
    )


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None, return_final_state=False):
    from genomamba.ops.reference import causal_conv1d_ref
    from genomamba.ops.triton.conv1d import causal_conv1d as _f

    return _guarded(
        "causal_conv1d", _f, causal_conv1d_ref, x, weight, bias, initial_state, activation, return_final_state
    )


__all__ = ["available", "selective_scan", "selective_state_update", "causal_conv1d"]
