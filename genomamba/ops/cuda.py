"""CUDA C++ backend (csrc/selective_scan): JIT-built on first GPU use, for the local GPU only.

What is here is what has been verified on an H100 (tests/gpu): the selective-scan *forward*.
Calls that need gradients (grad mode on and any input requiring grad), mixed input dtypes, fp64
or n > 64 are handed to the Triton backend, which has a verified forward and backward; the
CUDA backward is not written yet. ``available()`` is False, never raising, where there is no CUDA
device, no nvcc, or the build fails (with a one-line notice), so the dispatcher falls through to
Triton and then torch.

The extension is cached under ``$GENOMAMBA_CACHE`` (default ``~/.cache/genomamba``) in a folder keyed
by a hash of the sources, the torch version, the CUDA version and the GPU architecture, so a
changed source or toolchain rebuilds and an unchanged one loads in a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch

_SRC_DIR = Path(__file__).resolve().parents[2] / "csrc" / "selective_scan"
_SOURCES = ["selective_scan_fwd.cu"]
_ext = None
_failed: str | None = None
# npt: states per thread (4: four threads per channel at n = 16; 16: one thread per channel).
# target_threads: threads to aim for when choosing how many chunks to cut l into (each chunk past
# the first costs a second pass over the inputs for the chunk end states). Defaults: the fastest
# of the three variants timed on an H100 on 2026-11-23 (npt 4 / 96K: 0.89 ms on the first row of
# issue 5 against 1.58 ms for npt 16 / 32K and 2.99 ms for npt 16 / 8K); all three passed parity.
CONFIG = {
    "npt": int(os.environ.get("GENOMAMBA_CUDA_NPT", 4)),
    "target_threads": int(os.environ.get("GENOMAMBA_CUDA_TARGET_THREADS", 96 * 1024)),
}


def _nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return str(Path(CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _build():
    global _ext, _failed
    if _ext is not None or _failed is not None:
        return _ext
    try:
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        if torch.version.cuda is None:
            raise RuntimeError("torch was built without CUDA")
        if _nvcc() is None:
            raise RuntimeError("nvcc not found (set CUDA_HOME)")
        if not all((_SRC_DIR / s).exists() for s in _SOURCES):
            raise RuntimeError(f"sources missing under {_SRC_DIR}")
        major, minor = torch.cuda.get_device_capability()
        arch = f"{major}{minor}"
        h = hashlib.sha256()
        for s in _SOURCES:
            h.update((_SRC_DIR / s).read_bytes())
        h.update(f"{torch.__version__}|{torch.version.cuda}|sm_{arch}".encode())
        key = h.hexdigest()[:16]
        root = Path(os.environ.get("GENOMAMBA_CACHE", Path.home() / ".cache" / "genomamba"))
        build_dir = root / "torch_ext" / f"selective_scan_{key}"
        build_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.cpp_extension import load

        _ext = load(
            name=f"genomamba_selective_scan_{key}",
            sources=[str(_SRC_DIR / s) for s in _SOURCES],
            build_directory=str(build_dir),
            extra_cflags=["-O3"],
            # only the local architecture: a short build, and native code for this GPU
            extra_cuda_cflags=["-O3", "-lineinfo", f"-gencode=arch=compute_{arch},code=sm_{arch}"],
            verbose=False,
        )
        _self_test(_ext)
    except Exception as exc:  # no compiler / failed build / failed self-test: fall back, say so once
        _failed = f"{type(exc).__name__}: {exc}"
        print(f"genomamba: CUDA kernels unavailable ({_failed}); using Triton/torch", file=sys.stderr)
        _ext = None
    return _ext


def _self_test(ext) -> None:
    """A few small cases vs the fp64 oracle on this GPU (several chunks, grouped B/C, odd n, bf16):
    a build that computes wrong numbers here is never selected."""
    from genomamba.ops.reference import selective_scan_ref

    g = torch.Generator(device="cuda").manual_seed(0)
    for b, d, n, l, dtype, groups in (
        (2, 24, 16, 300, torch.float32, None),
        (1, 16, 5, 700, torch.float32, 2),
        (1, 32, 16, 257, torch.bfloat16, None),
    ):

        def r(*shape):
            return torch.randn(*shape, device="cuda", generator=g).to(dtype)

        bc = (b, n, l) if groups is None else (b, groups, n, l)
        u, delta, z, B, C = r(b, d, l), r(b, d, l), r(b, d, l), r(*bc), r(*bc)
        A = -torch.rand(d, n, device="cuda", generator=g) - 0.5
        D, bias = torch.randn(d, device="cuda", generator=g), torch.randn(d, device="cuda", generator=g)
        h0 = torch.randn(b, d, n, device="cuda", generator=g)
        # 1024 target threads: forces several chunks, so the chunk-passing path is checked too
        ref = [t.double() for t in (u, delta, A, B, C, D, z, bias)]
        rout, rst = selective_scan_ref(*ref, True, h0.double(), True)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        for npt in (4, 16):
            out, st = ext.selective_scan_fwd(u, delta, A, B, C, D, z, bias, True, h0, 1024, npt)
            for name, x, y in (("out", out, rout), ("final_state", st, rst)):
                err = ((x.double() - y).norm() / y.norm()).item()
                if not err < tol:  # also catches NaN
                    raise RuntimeError(
                        f"self-test failed: {name} rel. error {err:.2e} at {(b, d, n, l, dtype)}, npt={npt}"
                    )


def available() -> bool:
    try:
        return torch.cuda.is_available() and _build() is not None
    except Exception:
        return False


# ----------------------------------------------------------------------------- torch.library op


@torch.library.custom_op("genomamba::selective_scan_fwd_cuda", mutates_args=())
def _scan_fwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    out, final = _build().selective_scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, CONFIG["target_threads"], CONFIG["npt"]
    )
    return out, final


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state):
    b, d, l = u.shape
    return u.new_empty((b, d, l)), u.new_empty((b, d, A.shape[1]), dtype=torch.float32)


def _needs_triton(u, delta, A, B, C, D, z, delta_bias, initial_state) -> bool:
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True  # no CUDA backward yet: Triton does forward and backward
    if any(t.dtype == torch.float64 for t in tensors) or A.shape[1] > 64:
        return True
    return any(t.dtype != u.dtype for t in (delta, B, C) + ((z,) if z is not None else ()))


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
    """Arguments as :func:`genomamba.ops.selective_scan` (validated there)."""
    if _needs_triton(u, delta, A, B, C, D, z, delta_bias, initial_state):
        from genomamba.ops.triton.scan import selective_scan as tri

        return tri(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state)

    def unit(t):
        return t if t is None or t.stride(-1) == 1 else t.contiguous()

    out, final = _scan_fwd_op(
        unit(u), unit(delta), A.float(), unit(B), unit(C), D, unit(z), delta_bias, bool(delta_softplus), initial_state
    )
    return (out, final) if return_final_state else out


__all__ = ["available", "selective_scan"]
