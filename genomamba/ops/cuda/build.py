"""JIT builds of the CUDA extensions for the local GPU, cached on disk: ``csrc/selective_scan`` (the
scan kernels) and ``csrc/model_step`` (the whole-model decode step, built only when a model decodes).

Each extension is cached under ``$GENOMAMBA_CACHE`` (default ``~/.cache/genomamba``) in a folder keyed
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
STEP_DIR = csrc_dir("model_step")
STEP_SOURCES = ("model_step.cu", "model_step_mma.cu")

_built: dict = {}  # name -> module
_dirs: dict = {}  # name -> cache folder


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


def _folder(name: str, src_dir: Path, sources: tuple) -> Path:
    if name not in _dirs:
        major, minor = torch.cuda.get_device_capability()
        h = hashlib.sha256()
        for s in sources:
            h.update((src_dir / s).read_bytes())
        for header in sorted(p for p in src_dir.iterdir() if p.suffix in (".cuh", ".h")):  # included by the sources
            h.update(header.name.encode() + header.read_bytes())
        h.update(f"{torch.__version__}|{torch.version.cuda}|sm_{major}{minor}".encode())
        root = Path(os.environ.get("GENOMAMBA_CACHE", Path.home() / ".cache" / "genomamba"))
        _dirs[name] = root / "torch_ext" / f"{name}_{h.hexdigest()[:16]}"
    return _dirs[name]


def build_dir() -> Path:
    """The cache folder of the scan build (sources x toolchain x GPU architecture)."""
    return _folder("selective_scan", SRC_DIR, SOURCES)


def _compile(name: str, src_dir: Path, sources: tuple, what: str):
    """Extension ``name`` from ``src_dir`` (built on the first call, then cached); raises RuntimeError
    saying why it cannot be built here."""
    if name in _built:
        return _built[name]
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    if torch.version.cuda is None:
        raise RuntimeError("torch was built without CUDA")
    if _nvcc() is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME)")
    if not all((src_dir / s).exists() for s in sources):
        raise RuntimeError(f"sources missing under {src_dir}")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    folder = _folder(name, src_dir, sources)
    _built[name] = build_or_load(
        f"genomamba_{name}_{folder.name.rsplit('_', 1)[-1]}",
        folder,
        what,
        sources=[str(src_dir / s) for s in sources],
        extra_cflags=["-O3"],
        extra_cuda_cflags=cuda_flags(arch, nvcc_version()),
        verbose=False,
    )
    return _built[name]


def extension():
    """The compiled scan extension (built on the first call, then cached)."""
    return _compile("selective_scan", SRC_DIR, SOURCES, "the CUDA scan kernels (a few minutes)")


def step_extension():
    """The compiled whole-model decode step (built on the first call, then cached)."""
    return _compile("model_step", STEP_DIR, STEP_SOURCES, "the CUDA decode step (about a minute)")
