"""The wheel carries every subpackage, the shipped genomes and the kernel sources (csrc -> genomamba/_csrc)."""

from pathlib import Path

import pytest

from genomamba.ops._sources import csrc_dir

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_the_wheel():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "genomamba").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert cfg["package-dir"]["genomamba._csrc"] == "csrc"


def test_kernel_sources_are_found():
    assert (csrc_dir("cpu") / "selective_scan_cpu.cpp").is_file()
    assert (csrc_dir("selective_scan") / "bindings.cpp").is_file()
