"""Build a C++/CUDA extension once per machine, safely against killed builds and concurrent ones.

``torch.utils.cpp_extension.load`` guards its build folder with a lock file; a build killed half-way
(Ctrl-C, a job killed while compiling) leaves that lock behind and every later use waits on it
forever. Here each build runs in a private folder named after its process; the finished library is
moved into the shared cache folder with one atomic rename, and a later use imports it from there
without touching any lock. Private folders of builders that are no longer alive are removed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from genomamba.files import pid_alive

_PRIVATE = ".build-"  # <cache>/<name>.build-<pid>/


def _clean_stale(cache: Path, name: str) -> None:
    for folder in cache.glob(f"{name}{_PRIVATE}*"):
        try:
            pid = int(folder.name.rsplit("-", 1)[-1])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _import(name: str, library: Path):
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the extension {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def library_path(folder: Path, name: str) -> Path:
    """Where the built library of extension ``name`` lives in its cache ``folder``."""
    return folder / f"{name}.so"


def build_or_load(name: str, folder: Path, what: str, **load_kwargs):
    """Import extension ``name`` from its cache ``folder``, building it first if it is not there.

    ``what`` names the extension in the one line printed before a build; ``load_kwargs`` go to
    ``torch.utils.cpp_extension.load`` (sources, flags)."""
    library = library_path(folder, name)
    if library.is_file():
        return _import(name, library)
    folder.mkdir(parents=True, exist_ok=True)
    _clean_stale(folder.parent, folder.name)
    private = folder.parent / f"{folder.name}{_PRIVATE}{os.getpid()}"
    shutil.rmtree(private, ignore_errors=True)
    private.mkdir()
    print(f"genomamba: building {what} once; cached in {folder}", file=sys.stderr)
    from torch.utils.cpp_extension import load  # imports setuptools: only when building

    try:
        module = load(name=name, build_directory=str(private), **load_kwargs)
        built = library_path(private, name)
        if not built.is_file():
            raise RuntimeError(f"the build of {name} produced no {built.name}")
        os.replace(built, library)  # atomic: a concurrent builder's identical library may be replaced
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return module
