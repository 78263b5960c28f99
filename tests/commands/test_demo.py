"""`genomamba demo` end to end (shortened), and that it runs the tiny configs shipped in configs/."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from genomamba.commands import demo
from genomamba.lit.config import load_config, shipped_config, to_plain

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_demo_configs_are_the_shipped_yaml(tmp_path):
    assert shipped_config(demo.PRETRAIN_CONFIG) == CONFIGS / "pretrain" / "tiny_cpu.yaml"
    assert shipped_config(demo.CLASSIFY_CONFIG) == CONFIGS / "classify" / "species_tiny_cpu.yaml"
    pre, cls = demo.demo_configs(demo.parser().parse_args(["--out", str(tmp_path)]))
    want_pre = to_plain(load_config(CONFIGS / "pretrain" / "tiny_cpu.yaml"))
    want_cls = to_plain(load_config(CONFIGS / "classify" / "species_tiny_cpu.yaml"))
    # only the output folders (and progress bars, off unless --progress) differ from the YAML
    want_pre["run_dir"], want_pre["trainer"]["progress"] = str(tmp_path / "pretrain"), False
    want_cls["run_dir"], want_cls["trainer"]["progress"] = str(tmp_path / "classify"), False
    want_cls["init_from"] = str(tmp_path / "pretrain" / "model")
    assert to_plain(pre) == want_pre and to_plain(cls) == want_cls


def test_demo_runs_end_to_end_short(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "genomamba", "demo", "--out", str(out), "--pretrain-steps", "3",
                          "--classify-steps", "3", "--per-label", "4", "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "genomamba demo report" in res.stdout and "bits/base on held-out sequence" in res.stdout
    assert "genomamba data fetch bacteria" in res.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["pretrain"]["steps"] == 3 and rep["classify"]["steps"] == 3
    assert rep["classify"]["n_windows"] == 20
    assert set(rep["classify"]["baselines_same_windows"]) == {"gc", "nb4"}
    assert 1.0 < rep["pretrain"]["heldout_bits_per_base"] < 6.0  # 3 steps: barely trained
    assert rep["embed"]["records"] == 10 and rep["embed"]["shape"] == [10, 64]  # 5 strains x 2 records
    assert (out / "classify" / "confusion_test.png").exists()
    assert (out / "pretrain" / "training_curves.png").exists()
    # the run directories hold the shipped tiny configs, fully expanded, with the demo's few changes
    ran = yaml.safe_load((out / "pretrain" / "config.yaml").read_text())
    shipped = to_plain(load_config(CONFIGS / "pretrain" / "tiny_cpu.yaml"))
    assert ran["model"] == shipped["model"] and ran["data"] == shipped["data"] and ran["optim"] == shipped["optim"]
    assert ran["trainer"] == {**shipped["trainer"], "max_steps": 3, "progress": False}
