"""Fast CPU selective scan: the C++ kernel in ``csrc/cpu/``, JIT-built on first use.

The same extension holds the decode step of a whole pre-norm Mamba block (:func:`mamba_step`).

Layers: ``_fwd`` / ``_bwd`` launchers -> the ``torch.library`` custom ops
``genomamba::selective_scan_fwd_cpu`` / ``genomamba::selective_scan_bwd_cpu`` (fake kernels and
autograd registered, so ``torch.compile`` traces through them) -> :func:`selective_scan` (the
functional the dispatcher in ``genomamba.ops`` calls).

Build: :func:`available` compiles the sources once with ``torch.utils.cpp_extension.load`` into
``$TORCH_EXTENSIONS_DIR/<name>`` (default ``~/.cache/genomamba/torch_extensions/<name>``), where
``<name>`` carries a hash of the sources, flags and torch/python versions, so editing the kernel
rebuilds it and an unchanged kernel loads from the cache in well under a second. Installing
genomamba needs no compiler: without one (or without ninja, or with ``GENOMAMBA_NO_CPP=1``)
:func:`available` returns False and the dispatcher uses the torch scan.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from typing import Optional

import torch

from genomamba.ops._jit import build_or_load
from genomamba.ops._sources import csrc_dir

CSRC_DIR = csrc_dir("cpu")
SOURCES = ("selective_scan_cpu.cpp",)
# -march=native is safe: the kernel is always built on the machine that runs it.
# -fopenmp: at::parallel_for is header-inlined and runs serially unless compiled with OpenMP (the
# library it links, libgomp.so.1, is the one torch has already loaded).
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-DNDEBUG")
LDFLAGS = ("-fopenmp",)

_lock = threading.Lock()
_ext = None
_state: bool | None = None  # None: not tried yet
unavailable_reason: str | None = None


def extensions_dir() -> Path:
    """Root of the JIT build cache (``TORCH_EXTENSIONS_DIR`` or ``~/.cache/genomamba/torch_extensions``)."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genomamba" / "torch_extensions"


def _cpu_signature() -> str:
    """CPU model and ISA flags: a -march=native build must not be reused on another kind of CPU
    (a cache directory on a shared home would otherwise hand it an illegal instruction)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(sorted(set(keep)))


def _build_name() -> str:
    h = hashlib.sha256()
    for src in SOURCES:
        h.update((CSRC_DIR / src).read_bytes())
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    h.update(f"{torch.__version__}|{platform.python_version()}|{platform.machine()}".encode())
    h.update(_cpu_signature().encode())
    return f"genomamba_scan_cpu_{h.hexdigest()[:12]}"


def _fail(reason: str) -> bool:
    global _state, unavailable_reason
    _state, unavailable_reason = False, reason
    return False


@torch.compiler.assume_constant_result
def available() -> bool:
    """True when the C++ kernel is built and loaded (building it on the first call; cached).

    torch.compile runs it at trace time and keeps the answer as a constant (it takes a lock and
    may build, neither of which dynamo traces)."""
    global _ext, _state
    if _state is not None:
        return _state
    with _lock:
        if _state is not None:
            return _state
        if os.environ.get("GENOMAMBA_NO_CPP", "").strip() not in ("", "0"):
            return _fail("disabled by GENOMAMBA_NO_CPP")
        if not all((CSRC_DIR / s).is_file() for s in SOURCES):
            return _notice_fail(f"C++ sources not found under {CSRC_DIR} (needs an editable install)")
        from torch.utils import cpp_extension

        cxx = os.environ.get("CXX", "c++")
        if shutil.which(cxx) is None:
            return _notice_fail(f"no C++ compiler ({cxx!r}) on PATH")
        if not cpp_extension.is_ninja_available():
            return _notice_fail("ninja is not installed (pip install ninja)")
        try:
            name = _build_name()
            _ext = build_or_load(
                name,
                extensions_dir() / name,
                "the C++ CPU scan (about a minute)",
                sources=[str(CSRC_DIR / s) for s in SOURCES],
                extra_cflags=list(CFLAGS),
                extra_ldflags=list(LDFLAGS),
                verbose=os.environ.get("GENOMAMBA_VERBOSE_BUILD", "") not in ("", "0"),
            )
        except Exception as exc:  # a failed build must leave the torch path working
            msg = str(exc).strip().splitlines()
            return _notice_fail(f"build failed ({type(exc).__name__}: {msg[-1] if msg else ''})")
        _state = True
        return True


def _notice_fail(reason: str) -> bool:
    # The dispatcher treats False as "not here" silently; say once why the fast path is missing.
    print(f"genomamba: C++ CPU scan unavailable: {reason}; using the torch scan", file=sys.stderr)
    return _fail(reason)


def _require():
    if not available():
        raise RuntimeError(f"genomamba C++ CPU scan unavailable: {unavailable_reason}")
    return _ext


# ----------------------------------------------------------------------------- launchers


def _compute_dtype(*tensors) -> torch.dtype:
    fp64 = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if fp64 else torch.float32


def _prep(t, dtype):
    return None if t is None else t.to(dtype).contiguous()


def _prep_bc(M: torch.Tensor, dtype) -> torch.Tensor:
    """(b, n, l) or (b, g, n, l) -> contiguous (b, g, l, n): a time step's n values side by side."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.to(dtype).transpose(-1, -2).contiguous()


def _fwd(u, delta, A, Bt, Ct, D, z, delta_bias, delta_softplus, x0, save_ckpt):
    """All tensors contiguous in one dtype; Bt, Ct: (b, g, l, n). Returns out, final state, checkpoints."""
    return _require().fwd(u, delta, A, Bt, Ct, D, z, delta_bias, x0, bool(delta_softplus), bool(save_ckpt))


def _bwd(u, delta, A, Bt, Ct, D, z, delta_bias, delta_softplus, ckpt, dout, dfinal):
    """Returns du, ddelta, dA, dBt, dCt, dD, dz, ddelta_bias, dinitial_state (compute dtype)."""
    return _require().bwd(u, delta, A, Bt, Ct, D, z, delta_bias, ckpt, dout, dfinal, bool(delta_softplus))


# ----------------------------------------------------------------------------- torch.library ops
# The kernel's forward and backward are registered as custom ops so that torch.compile traces
# through them (fullgraph) instead of breaking the graph at an opaque autograd.Function. The ops
# see prepared tensors only (one compute dtype, contiguous, B/C as (b, g, l, n)); the casts and
# transposes around them are ordinary torch ops, differentiated by autograd.


def _chunk() -> int:
    """Time steps per backward checkpoint (the kernel's CHUNK)."""
    return int(_require().CHUNK)


@torch.library.custom_op("genomamba::selective_scan_fwd_cpu", mutates_args=(), device_types="cpu")
def _fwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bt: torch.Tensor,
    Ct: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    initial_state: Optional[torch.Tensor],
    softplus: bool,
    save_ckpt: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns out (b, d, l), final state (b, d, n), checkpoints (b, d, nchunk, n) or (0,)."""
    out, last, ckpt = _fwd(u, delta, A, Bt, Ct, D, z, delta_bias, softplus, initial_state, save_ckpt)
    return out, last, ckpt


@_fwd_op.register_fake
def _(u, delta, A, Bt, Ct, D, z, delta_bias, initial_state, softplus, save_ckpt):
    b, d, l = u.shape
    n = A.shape[1]
    if save_ckpt:
        c = _chunk()
        ckpt = u.new_empty((b, d, torch.sym_max(1, (l + c - 1) // c), n))
    else:
        ckpt = u.new_empty((0,))
    return torch.empty_like(u), u.new_empty((b, d, n)), ckpt


@torch.library.custom_op("genomamba::selective_scan_bwd_cpu", mutates_args=(), device_types="cpu")
def _bwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bt: torch.Tensor,
    Ct: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    ckpt: torch.Tensor,
    dout: torch.Tensor,
    dfinal: Optional[torch.Tensor],
    softplus: bool,
) -> list[torch.Tensor]:
    """Returns du, ddelta, dA, dBt, dCt, dD, dz ((0,) without z), ddelta_bias, dinitial_state."""
    return list(_bwd(u, delta, A, Bt, Ct, D, z, delta_bias, softplus, ckpt, dout, dfinal))


@_bwd_op.register_fake
def _(u, delta, A, Bt, Ct, D, z, delta_bias, ckpt, dout, dfinal, softplus):
    b, d, l = u.shape
    n = A.shape[1]
    return [
        torch.empty_like(u),
        torch.empty_like(u),
        u.new_empty((d, n)),
        torch.empty_like(Bt),
        torch.empty_like(Ct),
        u.new_empty((d,)),
        torch.empty_like(u) if z is not None else u.new_empty((0,)),
        u.new_empty((d,)),
        u.new_empty((b, d, n)),
    ]


def _fwd_setup_context(ctx, inputs, output):
    u, delta, A, Bt, Ct, D, z, bias, x0, softplus, save_ckpt = inputs
    ctx.save_for_backward(u, delta, A, Bt, Ct, D, z, bias, output[2])
    ctx.softplus, ctx.save_ckpt = softplus, save_ckpt


def _fwd_backward(ctx, dout, dlast, _dckpt):
    if not ctx.save_ckpt:
        raise RuntimeError("genomamba: the C++ CPU scan ran without checkpoints; no backward possible")
    u, delta, A, Bt, Ct, D, z, bias, ckpt = ctx.saved_tensors
    dout = torch.zeros_like(u) if dout is None else dout.to(u.dtype).contiguous()
    dlast = None if dlast is None else dlast.to(u.dtype).contiguous()
    du, ddelta, dA, dBt, dCt, dD, dz, dbias, dx0 = _bwd_op(
        u, delta, A, Bt, Ct, D, z, bias, ckpt, dout, dlast, ctx.softplus
    )
    need = ctx.needs_input_grad
    return (
        du if need[0] else None,
        ddelta if need[1] else None,
        dA if need[2] else None,
        dBt if need[3] else None,
        dCt if need[4] else None,
        dD if D is not None and need[5] else None,
        dz if z is not None and need[6] else None,
        dbias if bias is not None and need[7] else None,
        dx0 if need[8] else None,
        None,
        None,
    )


_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


# ----------------------------------------------------------------------------- functional


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
    """Selective scan on CPU tensors with the C++ kernel (arguments validated by ``genomamba.ops``).

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D, delta_bias: (d,);
    initial_state / final state: (b, d, n) in fp32 (fp64 for fp64 inputs). bf16/fp16 inputs are
    computed in fp32. Returns out (b, d, l) in u's dtype, or (out, final_state).
    """
    ct = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None]
    save = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    out, last, _ = _fwd_op(
        _prep(u, ct), _prep(delta, ct), _prep(A, ct), _prep_bc(B, ct), _prep_bc(C, ct),
        _prep(D, ct), _prep(z, ct), _prep(delta_bias, ct), _prep(initial_state, ct),
        bool(delta_softplus), save,
    )
    out = out.to(u.dtype)
    return (out, last) if return_final_state else out


# ----------------------------------------------------------------------------- decode step


def mamba_step(hidden, residual, conv_state, ssm_state, weights):
    """One token through a pre-norm Mamba block with the C++ kernel (``genomamba.ops.mamba_step``).

    Every tensor in one dtype, float32 or float64, except ssm_state (float32 or that dtype);
    conv_state and ssm_state are updated in place. Inference only (no backward), and called as a
    plain extension function, not a ``torch.library`` op: per token it is one call per block.
    """
    w = weights
    return _require().step(hidden.contiguous(), None if residual is None else residual.contiguous(), conv_state,
                           ssm_state, w.norm_weight, float(w.norm_eps), w.in_proj_weight, w.in_proj_bias,
                           w.conv_weight, w.conv_bias, w.x_proj_weight, w.dt_proj_weight, w.dt_proj_bias, w.A,
                           w.D, w.out_proj_weight, w.out_proj_bias)


__all__ = ["available", "selective_scan", "mamba_step", "extensions_dir", "unavailable_reason"]
