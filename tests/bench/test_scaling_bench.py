"""`genomamba bench scaling` on CPU: the real pretrain command on 1 and 2 processes (gloo) for the
same training tokens, with the measured throughput and memory of every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from genomamba.bench.scaling import held_out, steps_for
from tests.lit.conftest import tiny_pretrain_doc

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_steps_give_every_run_the_same_tokens():
    assert steps_for(8192, 1, 4, 256) == 8 and steps_for(8192, 2, 4, 256) == 4
    assert steps_for(8192, 3, 4, 256) == 3  # rounded up: never fewer tokens than asked
    assert steps_for(1, 8, 4, 256) == 1


def test_held_out_prefers_the_test_split():
    res = {"test": {"test/loss": 0.9, "test/bpb": 1.91}, "metrics": {"val/bpb": 1.95}}
    assert held_out(res) == ("test/bpb", 1.91)
    assert held_out({"metrics": {"val/bits_per_byte": 2.5, "train/bits_per_byte": 2.4}}) == ("val/bits_per_byte", 2.5)
    assert held_out({"metrics": {"train/bpb": 2.0}}) == (None, None)


def test_ddp_one_and_two_processes_same_tokens(tmp_path):
    doc = tiny_pretrain_doc(tmp_path / "unused", max_steps=8, seq_len=256, accelerator="cpu")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [sys.executable, "-m", "genomamba", "bench", "scaling", "-c", str(cfg), "--devices", "1", "2",
         "--work-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path), "--set", "trainer.threads=1"],
        capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads((tmp_path / "scaling_cpu.json").read_text())["rows"]
    one, two = rows
    assert (one["devices"], one["steps"]) == (1, 8) and (two["devices"], two["steps"]) == (2, 4)
    assert one["train_tokens"] == two["train_tokens"] == 8 * 4 * 256
    for r in rows:  # measured after the 2 skipped steps, over every process
        tp = r["throughput"]
        assert tp["tokens"] == (r["steps"] - 2) * r["devices"] * 4 * 256
        assert tp["processes"] == r["devices"] and len(r["peak_memory_gib"]) == r["devices"]
        assert r["tokens_per_s"] > 0 and 0.05 < r["peak_memory_gib_max"] < 16
        assert r["held_out_key"] == "val/bpb" and 0.5 < r["held_out_bits"] < 6.0  # a few steps: near chance
    assert one["speedup"] == 1.0 and two["speedup"] > 0
    assert "speedup" in out.stdout and "held_out_bits" in out.stdout  # the printed table


def test_bad_arguments_are_named(tmp_path):
    for args, says in [(["--devices", "0"], "--devices"),
                       (["-c", str(tmp_path / "missing.yaml")], "missing.yaml"),
                       (["-c", "configs/adapters/digits_classifier_tiny_cpu.yaml"], "pretraining config"),
                       (["--strategy", "fsdp"], "fsdp needs GPUs")]:
        out = subprocess.run([sys.executable, "-m", "genomamba", "bench", "scaling", *args,
                              "--out-dir", str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=120)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert says in out.stderr, (args, out.stderr)


def test_results_json_of_a_run_has_its_throughput(tmp_path):
    """A plain pretrain run records the same block (one process)."""
    run = tmp_path / "run"
    doc = tiny_pretrain_doc(run, max_steps=4, seq_len=128)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    out = subprocess.run([sys.executable, "-m", "genomamba", "pretrain", "--no-progress", "-c", str(cfg)],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    tp = json.loads((run / "results.json").read_text())["throughput"]
    assert f"trained at {tp['tokens_per_s']:,.0f} tokens/s" in out.stdout  # the run's last line says it too
    assert tp["timed_steps"] == 2 and tp["tokens"] == 2 * 4 * 128 and tp["processes"] == 1
    # seconds are written to the millisecond: the rate must match them to within that rounding
    assert tp["seconds"] > 0 and abs(tp["tokens"] / tp["tokens_per_s"] - tp["seconds"]) <= 0.0005 + 1e-6
