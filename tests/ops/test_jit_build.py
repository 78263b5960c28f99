"""A first-use kernel build killed half-way (kill -9) is followed by a normal next use: no lock is
left for the next process to wait on, the dead builder's private folder is cleaned, and the
library, once built, loads without building again."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.utils import cpp_extension

import genomamba.ops.cpu as cpu

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import genomamba.ops.cpu as c; ok = c.available(); print('AVAILABLE', ok, c.unavailable_reason)"

pytestmark = pytest.mark.skipif(
    not cpp_extension.is_ninja_available() or cpu.shutil.which(os.environ.get("CXX", "c++")) is None,
    reason="needs a C++ compiler and ninja",
)


def _env(cache: Path) -> dict:
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(cache), PYTHONPATH=str(ROOT))
    env.pop("GENOMAMBA_NO_CPP", None)
    return env


@pytest.mark.slow
def test_killed_build_then_normal_use(tmp_path):
    cache = tmp_path / "ext"
    env = _env(cache)
    victim = subprocess.Popen([sys.executable, "-c", PROBE], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    private = None
    while time.time() < deadline and victim.poll() is None:
        found = [p for p in cache.glob(f"*.build-{victim.pid}") if any(p.iterdir())] if cache.exists() else []
        if found:
            private = found[0]
            break
        time.sleep(0.2)
    assert private is not None, "the build never started"
    time.sleep(1.0)  # let the compiler get going
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    final = cache / private.name.split(".build-")[0]
    # what an interrupted build of an older layout leaves behind: a lock file in the cache folder
    final.mkdir(parents=True, exist_ok=True)
    (final / "lock").write_text("")

    again = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr
    assert "AVAILABLE True" in again.stdout, again.stdout + again.stderr
    assert "building the C++ CPU scan" in again.stderr
    assert not private.exists(), "the killed builder's private folder was not cleaned"
    assert (final / f"{final.name}.so").is_file()

    third = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert "AVAILABLE True" in third.stdout and "building" not in third.stderr, third.stderr
