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


def test_configs_ship_in_the_wheel():
    from genomamba.lit.config import configs_dir

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"]["genomamba._configs"] == "configs"
    assert "genomamba._configs" in cfg["packages"]
    patterns = cfg["package-data"]["genomamba._configs"]
    yamls = sorted((ROOT / "configs").rglob("*.yaml"))
    assert yamls and all(any(p.relative_to(ROOT / "configs").match(pat) for pat in patterns) for p in yamls)
    assert configs_dir() == ROOT / "configs"


def test_wheel_carries_configs_and_commands(tmp_path):
    """Build the wheel for real and run the shipped-config resolver from the installed layout."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("genomamba", "csrc", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and "No module named pip" in res.stderr:
        pytest.skip("pip is not installed")
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = tmp_path.glob("genomamba-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"genomamba/_configs/{p.relative_to(ROOT / 'configs').as_posix()}"
               for p in (ROOT / "configs").rglob("*.yaml")}
    assert shipped <= names
    assert {"genomamba/commands/demo.py", "genomamba/files.py", "genomamba/data/corpus.py"} <= names
    kernels = {f"genomamba/_csrc/{p.relative_to(ROOT / 'csrc').as_posix()}" for p in (ROOT / "csrc").rglob("*")
               if p.suffix in (".cu", ".cuh", ".cpp", ".h")}
    assert kernels and kernels <= names, sorted(kernels - names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from genomamba.lit.config import configs_dir, load_config; print(configs_dir()); "
            "print(load_config('configs/pretrain/dna_7m_1m.yaml').data.seq_len)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(site)}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == [str(site / "genomamba" / "_configs"), "1048576"]
