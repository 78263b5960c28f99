"""JIT build of ``csrc/selective_scan`` for the local GPU, cached on disk.

The extension is cached under ``$GENOMAMBA_CACHE`` (default ``~/.cache/genomamba``) in a folder keyed
by a hash of the sources, the torch version, the CUDA version and the GPU architecture, so a
changed source or toolchain rebuilds (and re-tests) and an unchanged one loads in a second.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
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


def nvcc_version(nvcc: str | None = None) -> tuple[int, int] | None:
    """(major, minor) of ``nvcc --version`` ("... release 13.0, ..."), or None if it cannot be read."""
    nvcc = nvcc or _nvcc()
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def cuda_flags(arch: str, version: tuple[int, int] | None) -> list[str]:
    """nvcc flags of the build: only the local architecture (a short build, native code for this GPU);
    from CUDA 12.4 on also ``-split-compile=0``, which optimises the kernels of a source file on all
    CPU cores at once (the same machine code: every kernel section of the cubin is byte-identical
    with and without it under nvcc 13.0, sm_90; only the wall time of the build shrinks)."""
    flags = ["-O3", "-lineinfo", f"-gencode=arch=compute_{arch},code=sm_{arch}"]
    if version is not None and version >= (12, 4):
        flags.append("-split-compile=0")
    return flags


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
        extra_cuda_cflags=cuda_flags(arch, nvcc_version()),
        verbose=False,
    )
    return _ext
