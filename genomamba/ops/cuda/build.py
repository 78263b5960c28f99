"""JIT build of ``csrc/selective_scan`` for the local GPU, cached on disk.

The extension is cached under ``$GENOMAMBA_CACHE`` (default ``~/.cache/genomamba``) in a folder keyed
by a hash of the sources, the torch version, the CUDA version and the GPU architecture, so a
changed source or toolchain rebuilds (and re-tests) and an unchanged one loads in a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from genomamba.ops._jit import build_or_load
from genomamba.ops._sources import csrc_dir

SRC_DIR = csrc_dir("selective_scan")
SOURCES = ("selective_scan_fwd.cu", "selective_scan_v2.cu", "bindings.cpp")

_ext = None
_build_dir: Path | None = None


def _nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME  # imports setuptools: only when building

    if CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return str(Path(CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


def build_dir() -> Path:
    """The cache folder of this build (sources x toolchain x GPU architecture)."""
    global _build_dir
    if _build_dir is None:
        major, minor = torch.cuda.get_device_capability()
        h = hashlib.sha256()
        for s in SOURCES:
            h.update((SRC_DIR / s).read_bytes())
        h.update(f"{torch.__version__}|{torch.version.cuda}|sm_{major}{minor}".encode())
        root = Path(os.environ.get("GENOMAMBA_CACHE", Path.home() / ".cache" / "genomamba"))
        _build_dir = root / "torch_ext" / f"selective_scan_{h.hexdigest()[:16]}"
    return _build_dir


def extension():
    """The compiled extension (built on the first call, then cached); raises RuntimeError saying
    why it cannot be built here."""
    global _ext
    if _ext is not None:
        return _ext
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    if torch.version.cuda is None:
        raise RuntimeError("torch was built without CUDA")
    if _nvcc() is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME)")
    if not all((SRC_DIR / s).exists() for s in SOURCES):
        raise RuntimeError(f"sources missing under {SRC_DIR}")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    folder = build_dir()
    _ext = build_or_load(
        f"genomamba_selective_scan_{folder.name.rsplit('_', 1)[-1]}",
        folder,
        "the CUDA scan kernels (a few minutes)",
        sources=[str(SRC_DIR / s) for s in SOURCES],
        extra_cflags=["-O3"],
        # only the local architecture: a short build, and native code for this GPU
        extra_cuda_cflags=["-O3", "-lineinfo", f"-gencode=arch=compute_{arch},code=sm_{arch}"],
        verbose=False,
    )
    return _ext
