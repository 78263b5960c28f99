"""The README's main command: `genomamba demo` end to end (shortened), and its configs in configs/."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from genomamba import demo

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_demo_configs_are_the_shipped_yaml():
    assert yaml.safe_load((CONFIGS / "pretrain" / "tiny_cpu.yaml").read_text()) == demo.PRETRAIN
    assert yaml.safe_load((CONFIGS / "classify" / "species_tiny_cpu.yaml").read_text()) == demo.CLASSIFY


def test_demo_runs_end_to_end_short(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "genomamba", "demo", "--out", str(out), "--pretrain-steps", "3",
                          "--classify-steps", "3", "--per-label", "4", "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "genomamba demo report" in res.stdout and "bits/base on held-out sequence" in res.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["pretrain"]["steps"] == 3 and rep["classify"]["steps"] == 3
    assert rep["classify"]["n_windows"] == 20
    assert set(rep["classify"]["baselines_same_windows"]) == {"gc", "nb4"}
    assert 1.0 < rep["pretrain"]["heldout_bits_per_base"] < 6.0  # 3 steps: barely trained
    assert rep["embed"]["records"] == 10 and rep["embed"]["shape"] == [10, 64]  # 5 strains x 2 records
    assert (out / "classify" / "confusion_test.png").exists()
    assert (out / "pretrain" / "training_curves.png").exists()
