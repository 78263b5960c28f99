"""CUDA C++ backend (``csrc/selective_scan``): JIT-built on first GPU use, for the local GPU only.

* :mod:`~genomamba.ops.cuda.build`: compile and cache the extension;
* :mod:`~genomamba.ops.cuda.selftest`: test every kernel against the fp64 oracle on this GPU;
* :mod:`~genomamba.ops.cuda.knobs`: environment knobs, self-test verdicts, which kernel runs;
* :mod:`~genomamba.ops.cuda.kernels`: the custom ops and the functional the dispatcher calls.

:func:`available` is False, never raising, where there is no CUDA device, no nvcc, the build fails,
or no forward passed its self-test (one-line notice); the dispatch table then moves on to the next
backend. Importing this package needs no GPU and builds nothing.
"""

from __future__ import annotations

import sys

import torch

from genomamba.ops.cuda import build, kernels, selftest
from genomamba.ops.cuda.knobs import (
    CHAN_PARTS,
    CONFIG,
    STATUS,
    chan_lanes,
    cuda_backward_enabled,
    forward_variant,
    fwd_build,
    prefetch_settings,
    use_lean,
)

_ready: bool | None = None  # None: not tried yet
unavailable_reason: str | None = None


def _lanes_part() -> str:
    """The self-test part the configured lane count needs (auto may take four lanes)."""
    return "chan4" if CONFIG["chan_lanes"] < 0 else CHAN_PARTS[chan_lanes()]


def available() -> bool:
    """True when the kernels are built, self-tested, and at least one forward passed (cached)."""
    global _ready, unavailable_reason
    if _ready is not None:
        return _ready
    try:
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        build.extension()
        STATUS.update(selftest.verdicts(build.build_dir()))
        if STATUS["v1"] is not True and STATUS["v2"] is not True:
            raise RuntimeError(f"self-test failed: v1: {STATUS['v1']}; v2: {STATUS['v2']}")
        wanted = (["v2", "bwd"] + ["lean"] * bool(CONFIG["fwd_lean"]) + ["pair"] * bool(CONFIG["fwd_pair_states"])
                  + ["chan"] * bool(CONFIG["fwd_chan"])
                  + [_lanes_part()] * (chan_lanes() > 1 or CONFIG["chan_lanes"] < 0)
                  + ["bwdchan"] * (CONFIG["bwd_chan"] == 1) + ["bwdchan2"] * (CONFIG["bwd_chan"] == 2)
                  + ["prefetch"] * bool(CONFIG["bwd_prefetch"] >= 0 or CONFIG["bwd_prefetch_fp32"] >= 0
                                      or CONFIG["fix_prefetch"] or CONFIG["l2_prefetch"]))
        for part in wanted:  # fwd_lean -1 (auto) counts
            if STATUS.get(part) is not True:
                print(f"genomamba: CUDA {part} kernel not used ({STATUS[part]})", file=sys.stderr)
        _ready = True
    except Exception as exc:  # no compiler / failed build / failed self-test: the next backend runs
        unavailable_reason = f"{type(exc).__name__}: {exc}"
        if torch.cuda.is_available():
            print(f"genomamba: CUDA kernels unavailable ({unavailable_reason})", file=sys.stderr)
        _ready = False
    return _ready


def selective_scan(*args, **kwargs):
    """:func:`genomamba.ops.cuda.kernels.selective_scan` once the kernels are built and their
    self-test verdicts loaded (what the dispatcher checks before calling it), so that a direct call
    runs only verified builds; without the kernels it raises, saying why. Through the dispatcher the
    check is one module attribute read (what torch.compile traces)."""
    if _ready is not True and not available():
        raise RuntimeError(f"genomamba CUDA scan kernels unavailable ({unavailable_reason}); "
                           f"genomamba.ops.selective_scan picks a backend that runs here")
    return kernels.selective_scan(*args, **kwargs)


__all__ = [
    "available",
    "selective_scan",
    "forward_variant",
    "cuda_backward_enabled",
    "use_lean",
    "fwd_build",
    "prefetch_settings",
    "STATUS",
    "CONFIG",
    "unavailable_reason",
]
