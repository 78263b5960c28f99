"""The CUDA sources through nvcc on a machine without a GPU: what only shows when the extension is built
and loaded on a GPU machine, caught here instead.

- Every function a Python binding names is defined by the sources of its extension (an undefined
  symbol makes the whole module fail to load, and every CUDA kernel falls back).
- No kernel holds a half-precision load the compiler may move out of its loop or branch: cuda_fp16.h's
  and cuda_bf16.h's ``__ldg`` overloads are inline assembly without side effects (``ld.global.nc.b16``
  in the PTX), which the compiler hoists and so reads past the end of a tensor; where a tensor ends
  a memory segment that is an illegal-address fault.

The sources are compiled to objects holding PTX only (no machine code), a few minutes on two cores.
Needs nvcc and nm; skipped otherwise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from genomamba.ops._sources import csrc_dir
from genomamba.ops.cuda import build

EXTENSIONS = {"selective_scan": build.SOURCES, "model_step": build.STEP_SOURCES}


@pytest.fixture(scope="module")
def nvcc_flags(tmp_path_factory) -> tuple[str, list[str]]:
    nvcc, nm = build._nvcc(), shutil.which("nm")
    if nvcc is None or nm is None:
        pytest.skip("needs nvcc and nm")
    stub = tmp_path_factory.mktemp("stub_include")
    # a CPU build of torch lacks this generated header of its CUDA build; the sources need none of it
    macros = stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    macros.parent.mkdir(parents=True)
    macros.write_text("#pragma once\n")
    flags = ["-std=c++17", "-O3", "-gencode=arch=compute_90,code=compute_90", "-Xcompiler", "-fPIC",
             "-DTORCH_EXTENSION_NAME=genomamba_check", *cpp_extension.COMMON_NVCC_FLAGS,
             *[f"-I{p}" for p in cpp_extension.include_paths()], f"-I{sysconfig.get_paths()['include']}",
             f"-I{stub}"]
    return nvcc, flags


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{' '.join(cmd[:2])}...: {res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def objects(nvcc_flags, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """{(extension, source): the folder holding its object (device code as PTX) and nvcc's kept PTX}."""
    nvcc, flags = nvcc_flags
    out = tmp_path_factory.mktemp("cuda_objects")
    jobs = {(ext, src): out / f"{ext}_{src}" for ext, sources in EXTENSIONS.items() for src in sources}
    for folder in jobs.values():
        folder.mkdir()

    def compile_one(item):
        (ext, src), folder = item
        _run([nvcc, "-c", str(csrc_dir(ext) / src), "-o", str(folder / "obj.o"), "--keep", "--keep-dir", str(folder),
              *flags])

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(compile_one, jobs.items()))
    return jobs


def _bound_functions(ext: str) -> list[str]:
    """The C++ names (as written, namespace included) that the extension's pybind11 module binds."""
    names = []
    for src in EXTENSIONS[ext]:
        names += re.findall(r'm\.def\(\s*"[^"]+",\s*&([\w:]+)', (csrc_dir(ext) / src).read_text())
    return names


@pytest.mark.parametrize("ext", list(EXTENSIONS))
def test_every_bound_function_is_defined(ext, objects):
    bound = _bound_functions(ext)
    assert len(bound) >= 3, bound
    defined = set()
    for src in EXTENSIONS[ext]:
        obj = objects[ext, src] / "obj.o"
        out = subprocess.run(["nm", "-C", "--defined-only", str(obj)], capture_output=True, text=True, check=True)
        for line in out.stdout.splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[1] in ("T", "W"):
                defined.add(parts[2].split("(", 1)[0])
    missing = [name for name in bound if name not in defined]
    assert not missing, f"{ext}: bound but defined nowhere in {EXTENSIONS[ext]} (the module would not load): {missing}"


@pytest.mark.parametrize("ext, src", [(e, s) for e, srcs in EXTENSIONS.items() for s in srcs if s.endswith(".cu")])
def test_kernels_hold_no_movable_half_loads(ext, src, objects):
    kept = list(objects[ext, src].glob("*.ptx"))
    assert len(kept) == 1, kept
    text = kept[0].read_text()
    for form in ("ld.global.nc.b16", "ld.global.cg.b16", "ld.global.nc.b32"):
        assert form not in text, f"{src}: {form} (a cuda_fp16/cuda_bf16 __ldg the compiler may move)"
    if ext == "model_step":  # the decode steps read their fp16/bf16 weights through the integer load
        assert "ld.global.nc.u16" in text, f"{src}: the half-precision loads were not found at all"
