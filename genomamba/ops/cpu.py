"""Fast CPU selective scan: the C++ kernel in ``csrc/cpu/``, JIT-built on first use.

Layers (STYLE.md rule 2): ``_fwd`` / ``_bwd`` launchers -> ``SelectiveScanCpu`` (autograd Function)
-> :func:`selective_scan` (the functional the dispatcher in ``genomamba.ops`` calls).

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

import torch

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


def available() -> bool:
    """True when the C++ kernel is built and loaded (building it on the first call; cached)."""
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
            build_dir = extensions_dir() / name
            build_dir.mkdir(parents=True, exist_ok=True)
            if not any(build_dir.glob(f"{name}*.so")):
                print(f"genomamba: building the C++ CPU scan once (about a minute); cached in {build_dir}",
                      file=sys.stderr)
            _ext = cpp_extension.load(
                name=name,
                sources=[str(CSRC_DIR / s) for s in SOURCES],
                extra_cflags=list(CFLAGS),
                extra_ldflags=list(LDFLAGS),
                build_directory=str(build_dir),
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


# ----------------------------------------------------------------------------- autograd


class SelectiveScanCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
        ct = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
        uc, dc, Ac = _prep(u, ct), _prep(delta, ct), _prep(A, ct)
        Dc, zc, bc, x0 = _prep(D, ct), _prep(z, ct), _prep(delta_bias, ct), _prep(initial_state, ct)
        Bt, Ct = _prep_bc(B, ct), _prep_bc(C, ct)
        need_grad = any(ctx.needs_input_grad)
        out, last, ckpt = _fwd(uc, dc, Ac, Bt, Ct, Dc, zc, bc, delta_softplus, x0, need_grad)
        if need_grad:
            ctx.save_for_backward(uc, dc, Ac, Bt, Ct, Dc, zc, bc, ckpt)
            ctx.softplus = bool(delta_softplus)
            inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
            ctx.meta = (B.dim(), [None if t is None else t.dtype for t in inputs])
        ctx.set_materialize_grads(False)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, dout, dlast):
        uc, dc, Ac, Bt, Ct, Dc, zc, bc, ckpt = ctx.saved_tensors
        bc_dim, dtypes = ctx.meta
        dout = torch.zeros_like(uc) if dout is None else dout.to(uc.dtype).contiguous()
        dlast = None if dlast is None else dlast.to(uc.dtype).contiguous()
        du, ddelta, dA, dBt, dCt, dD, dz, dbias, dx0 = _bwd(
            uc, dc, Ac, Bt, Ct, Dc, zc, bc, ctx.softplus, ckpt, dout, dlast
        )

        def bc_grad(g):
            g = g.transpose(-1, -2)  # (b, g, l, n) -> (b, g, n, l)
            return g.squeeze(1) if bc_dim == 3 else g

        grads = [du, ddelta, dA, bc_grad(dBt), bc_grad(dCt), dD, dz, dbias, dx0]
        out = []
        for g, dt, need in zip(grads, dtypes, [ctx.needs_input_grad[i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 9)]):
            out.append(g.to(dt) if need and dt is not None else None)
        u_g, delta_g, A_g, B_g, C_g, D_g, z_g, bias_g, x0_g = out
        return u_g, delta_g, A_g, B_g, C_g, D_g, z_g, bias_g, None, x0_g


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
    softplus = bool(delta_softplus)
    out, last = SelectiveScanCpu.apply(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state)
    return (out, last) if return_final_state else out


__all__ = ["available", "selective_scan", "extensions_dir", "unavailable_reason"]
