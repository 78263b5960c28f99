"""The one dispatch table: for each op and device an ordered list of backends, and one loop that picks.

Every backend declares what it supports (:class:`~genomamba.ops.backend.Backend`: devices, dtypes,
state size, grouped B/C, mixed dtypes, a backward and whether it passed its self-test, compiled or
not). For each call :func:`choose` walks the list for the op and the tensors' device and takes the
first backend that supports the call and is available; each backend skipped for a reason other
than "not built here" is reported once, in one line. A backend whose kernels fail to compile at
their first call is dropped for that op for the rest of the process (once, in one line), and the
call runs on the next one: a compile error is raised before launch, so nothing has been written.

``GENOMAMBA_SCAN_BACKEND`` (environment) or :func:`use_backend` puts one backend first
(``auto`` restores the table): a backend that is not available here is an error; one that
cannot run a particular call hands it down the table, saying why once.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch

from genomamba.errors import UserError
from genomamba.ops import cpu, cuda, triton
from genomamba.ops.backend import FAST_FLOATS, Backend, Call
from genomamba.ops.reference import (
    add_rms_norm_ref,
    causal_conv1d_ref,
    mamba_step_ref,
    selective_scan_ref,
    selective_state_update_ref,
)
from genomamba.ops.torch_conv import causal_conv1d_torch
from genomamba.ops.torch_scan import selective_scan_chunked


# Loaders: plain import statements (torch.compile traces an ``import``, not importlib), and the
# Triton kernels are imported only when that backend is chosen.
def _triton_scan():
    from genomamba.ops.triton.scan import selective_scan

    return selective_scan


def _triton_conv():
    from genomamba.ops.triton.conv1d import causal_conv1d

    return causal_conv1d


def _triton_update():
    from genomamba.ops.triton.state_update import selective_state_update

    return selective_state_update


def _triton_norm():
    from genomamba.ops.triton.norm import add_rms_norm

    return add_rms_norm


def _triton_step():
    from genomamba.ops.triton.step import mamba_step

    return mamba_step


def _triton_step_limits(call: Call):
    """The Triton block step: inference, the model in fp32/bf16/fp16 (the backend's dtypes), ssm_state float32."""
    if call.needs_grad:
        return "has no backward for mamba_step"
    if call.dtypes[-1] != torch.float32:  # ssm_state comes last (``genomamba.ops._step_call``)
        return "keeps ssm_state in float32 for mamba_step"
    return None


def _cpp_step_limits(call: Call):
    """The C++ block step: inference in float32 or float64, one dtype (ssm_state float32 or that one)."""
    if call.needs_grad:
        return "has no backward for mamba_step"
    if call.mixed or call.dtypes[0] not in (torch.float32, torch.float64) or (
            torch.float64 in call.dtypes and call.dtypes[0] != torch.float64):
        return "takes mamba_step in float32 or float64, one dtype for hidden, weights and states"
    return None


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            name="cuda",
            summary="CUDA C++ scan from csrc/selective_scan, JIT-built and self-tested on first use",
            devices=("cuda",),
            ops={"selective_scan": lambda: cuda.selective_scan},
            dtypes=FAST_FLOATS,
            max_state=64,
            mixed_dtypes=False,
            backward_verified=cuda.cuda_backward_enabled,
            compiled=True,
            available=lambda device: cuda.available(),
            why_unavailable=lambda: cuda.unavailable_reason or "no CUDA kernels",
        ),
        Backend(
            name="triton",
            summary="Triton kernels (on CPU only under TRITON_INTERPRET=1)",
            devices=("cuda", "cpu"),
            ops={"selective_scan": _triton_scan, "causal_conv1d": _triton_conv,
                 "selective_state_update": _triton_update, "mamba_step": _triton_step,
                 "add_rms_norm": _triton_norm},
            dtypes=FAST_FLOATS,
            compiled=True,
            available=triton.available,
            why_unavailable=triton.unavailable_reason,
            build_error=triton.is_build_error,
            op_limits={"mamba_step": _triton_step_limits},
        ),
        Backend(
            name="cpp",
            summary="C++ CPU scan from csrc/cpu, JIT-built on first use",
            devices=("cpu",),
            ops={"selective_scan": lambda: cpu.selective_scan, "mamba_step": lambda: cpu.mamba_step},
            compiled=True,
            available=lambda device: cpu.available(),
            why_unavailable=lambda: cpu.unavailable_reason or "not built",
            op_limits={"mamba_step": _cpp_step_limits},
        ),
        Backend(
            name="torch",
            summary="pure PyTorch: chunked scan, shifted multiply-add conv1d",
            devices=("cpu", "cuda", "mps", "xpu"),
            ops={"selective_scan": lambda: selective_scan_chunked, "causal_conv1d": lambda: causal_conv1d_torch},
        ),
        Backend(
            name="ref",
            summary="sequential reference twins (the oracles)",
            devices=("cpu", "cuda", "mps", "xpu"),
            ops={"selective_scan": lambda: selective_scan_ref, "causal_conv1d": lambda: causal_conv1d_ref,
                 "selective_state_update": lambda: selective_state_update_ref,
                 "mamba_step": lambda: mamba_step_ref, "add_rms_norm": lambda: add_rms_norm_ref},
        ),
    )
}

# op -> device type -> backends in order of preference ("*": any other device)
TABLE: dict[str, dict[str, tuple]] = {
    "selective_scan": {"cuda": ("cuda", "triton", "torch", "ref"), "cpu": ("cpp", "torch", "ref"),
                       "*": ("torch", "ref")},
    "causal_conv1d": {"cuda": ("triton", "torch", "ref"), "cpu": ("torch", "ref"), "*": ("torch", "ref")},
    "selective_state_update": {"cuda": ("triton", "ref"), "cpu": ("ref",), "*": ("ref",)},
    "mamba_step": {"cuda": ("triton", "ref"), "cpu": ("cpp", "ref"), "*": ("ref",)},
    "add_rms_norm": {"cuda": ("triton", "ref"), "cpu": ("ref",), "*": ("ref",)},
}

NAMES = ("auto",) + tuple(BACKENDS)
_forced: str | None = None
_notices: set = set()
_broken: set = set()  # (backend, op) pairs whose kernels failed to compile here


def notice(key, msg: str) -> None:
    """One line on stderr, once per process."""
    if key not in _notices:
        _notices.add(key)
        print(f"genomamba: {msg}", file=sys.stderr)


def requested_backend() -> str:
    """The forced backend name, or ``auto``."""
    name = _forced or os.environ.get("GENOMAMBA_SCAN_BACKEND", "auto").strip().lower() or "auto"
    if name not in NAMES:
        raise ValueError(f"GENOMAMBA_SCAN_BACKEND={name!r}: expected one of {', '.join(NAMES)}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Put backend ``name`` first inside a ``with`` block (``auto`` restores the table)."""
    global _forced
    if name not in NAMES:
        raise ValueError(f"backend {name!r}: expected one of {', '.join(NAMES)}")
    prev, _forced = _forced, name
    try:
        yield
    finally:
        _forced = prev


class BackendUnavailable(UserError, RuntimeError):
    """A backend was asked for (``GENOMAMBA_SCAN_BACKEND`` or ``use_backend``) where it cannot run."""


def order(op: str, device: str) -> tuple:
    """The backends tried for ``op`` on ``device`` (a device type), forced one first."""
    rows = TABLE[op]
    names = rows.get(device, rows["*"])
    forced = requested_backend()
    if forced != "auto":
        backend = BACKENDS[forced]
        if device not in backend.devices or not backend.available(device):
            asked = f"use_backend({forced!r})" if _forced else f"GENOMAMBA_SCAN_BACKEND={forced}"
            raise BackendUnavailable(
                f"{asked}: backend {forced!r} was requested but is not available on this machine "
                f"({backend.why_unavailable() if device in backend.devices else f'does not run on {device}'}); "
                "unset it (auto) or pick another backend"
            )
        names = (forced,) + tuple(n for n in names if n != forced)
    return names


def choose(call: Call) -> Backend:
    """The backend that runs ``call``: the first in its row that supports it and is available."""
    skipped = []
    for name in order(call.op, call.device):
        backend = BACKENDS[name]
        why = "failed to compile or to match its reference here" if (name, call.op) in _broken \
            else backend.refuses(call)
        if why is not None and why == backend.unverified(call) and backend.available(call.device):
            # the verdict of a compiled backend's self-test exists only once it is built: ask again
            why = backend.unverified(call)
        if why is None and backend.available(call.device):
            for other, reason in skipped:
                notice((other, call.op, reason), f"{call.op} on {call.device}: {other} {reason}; using {name}")
            return backend
        if why is not None:  # (an unavailable backend has said why itself, once)
            skipped.append((name, why))
    raise RuntimeError(f"no backend can run {call.op} on {call.device}: {skipped}")


def run(call: Call, *args):
    """Run ``call`` on the chosen backend; a compile failure drops that backend for the op."""
    while True:
        backend = choose(call)
        fn = backend.function(call.op)
        if backend.build_error is None:
            return fn(*args)
        try:
            return fn(*args)
        except Exception as exc:
            if not backend.build_error(exc):
                raise  # a real error in the call, not a failed compile
            drop(backend, call.op, exc)


def drop(backend: Backend, op: str, exc: BaseException) -> None:
    """Drop ``backend`` for ``op`` for the rest of the process: its kernels failed to compile."""
    _broken.add((backend.name, op))
    notice((backend.name, op, "build"),
           f"{backend.name} {op} failed to compile ({type(exc).__name__}); using the next backend")


def distrust(backend: Backend, op: str, why: str) -> None:
    """Drop ``backend`` for ``op`` for the rest of the process: it ran, but its result disagreed with
    the reference twin."""
    _broken.add((backend.name, op))
    notice((backend.name, op, "wrong"), f"{backend.name} {op} {why}; using the next backend")


def table(device_types=("cuda", "cpu")) -> list[dict]:
    """The table as rows (op, device, order, and per backend whether it is available here), for
    printing (``genomamba bench verify``) and for tests. Checking availability may build kernels."""
    rows = []
    for op, per_device in TABLE.items():
        for device in device_types:
            names = per_device.get(device, per_device["*"])
            rows.append({
                "op": op,
                "device": device,
                "order": list(names),
                "available": {n: bool(BACKENDS[n].available(device)) for n in names},
            })
    return rows


def format_table(rows: list[dict]) -> str:
    """The table as text: one line per op and device, unavailable backends in brackets."""
    lines = [f"{'op':<24} {'device':<7} backends in order ([x]: not available here)"]
    for r in rows:
        names = " -> ".join(n if r["available"][n] else f"[{n}]" for n in r["order"])
        lines.append(f"{r['op']:<24} {r['device']:<7} {names}")
    return "\n".join(lines)
