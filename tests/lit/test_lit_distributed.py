"""Pretraining over several processes through Lightning's DDP strategy on CPU (gloo), launched the
way a user launches it: ``genomamba pretrain ... --set trainer.devices=2`` in a real subprocess
(Lightning starts the second rank)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from genomamba.lit.config import ConfigError, load_config, shipped_config
from genomamba.lit.datamodules import PretrainDataModule
from genomamba.lit.trainer import resolve_strategy
from genomamba.tokenizers.dna import DNATokenizer

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _pretrain(*args, timeout=300):
    out = subprocess.run([sys.executable, "-m", "genomamba", "pretrain", "--no-progress", *args],
                         capture_output=True, text=True, env=ENV, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _metrics(run_dir, version=0) -> list[dict]:
    with open(run_dir / "logs" / f"version_{version}" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _last(rows, key):
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)][-1]


def test_context_parallel_run_logs_the_plain_runs_losses(tmp_path):
    """3 steps of the shipped tiny config, plain vs 2 processes holding one sequence each half."""
    common = ["-c", "configs/pretrain/tiny_cpu.yaml", "--max-steps", "3", "--set", "trainer.log_every=1",
              "--set", "trainer.val_every=3", "--set", "data.val_windows=8", "--set", "test_after_fit=false",
              "--set", "trainer.threads=1", "--set", "trainer.budget_minutes=null"]
    _pretrain(*common, "--run-dir", str(tmp_path / "plain"))
    out = _pretrain(*common, "--run-dir", str(tmp_path / "cp"), "--set", "trainer.accelerator=cpu",
                    "--set", "trainer.devices=2", "--set", "trainer.context_parallel=2")
    assert out.stdout.count("done: step 3") == 1  # one line, from rank 0
    plain, cp = _metrics(tmp_path / "plain"), _metrics(tmp_path / "cp")
    for key in ("train/loss", "val/loss", "val/bases"):
        (s0, v0), (s1, v1) = _last(plain, key), _last(cp, key)
        assert s0 == s1 and abs(v0 - v1) <= 1e-4, (key, v0, v1)
    res = json.loads((tmp_path / "cp" / "results.json").read_text())
    assert res["processes"] == 2 and res["context_parallel"] == 2 and res["global_step"] == 3
    # the timed tokens: each rank counts its slice, so the group counts each window once
    plain_res = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert res["throughput"]["tokens"] == plain_res["throughput"]["tokens"] > 0


def _expected_val_bases(doc) -> int:
    """Bases the validation windows score, each window once."""
    d = doc["data"]
    tok = DNATokenizer()
    dm = PretrainDataModule(d["sources"], d["seq_len"], d["batch_size"], d["train_samples"], d["val_windows"])
    dm.setup("fit")
    ok = torch.zeros(32, dtype=torch.bool)
    ok[[tok.a_id, tok.c_id, tok.g_id, tok.t_id]] = True
    n = 0
    for i in range(len(dm.val_ds)):
        ids, mask = dm.val_ds[i]
        n += int((ok[ids[1:]] & mask[1:] & mask[:-1]).sum())
    return n


def test_ddp_two_processes_validate_once_per_window_and_resume(tmp_path):
    from tests.lit.conftest import tiny_pretrain_doc

    run = tmp_path / "run"
    doc = tiny_pretrain_doc(run, max_steps=4, seq_len=128, accelerator="cpu", devices=2)
    doc["trainer"].update(ckpt_every=2, val_every=2)
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    out = _pretrain("-c", str(cfg))
    assert "done: step 4" in out.stdout
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    res = json.loads((run / "results.json").read_text())
    assert res["processes"] == 2 and "context_parallel" in res
    rows = _metrics(run)
    val_bases = [float(r["val/bases"]) for r in rows if r.get("val/bases")]
    assert len(val_bases) == 2 and set(val_bases) == {float(_expected_val_bases(doc))}  # no window twice

    out = _pretrain("--resume", "--run-dir", str(run), "--max-steps", "6")
    assert "done: step 6" in out.stdout
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    steps = [int(r["step"]) for r in _metrics(run, version=1) if r.get("train/loss")]
    assert steps and min(steps) >= 4  # only steps after the checkpoint it resumed from


def test_parallel_keys_are_checked(tmp_path):
    path = shipped_config("pretrain/tiny_cpu.yaml")
    cfg = load_config(path, ["trainer.devices=4", "trainer.context_parallel=2", "trainer.num_nodes=2"])
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.context_parallel) == (4, 2, 2)
    for bad, match in [(["trainer.devices=3", "trainer.context_parallel=2"], "divide the number of processes"),
                       (["trainer.devices=2", "trainer.context_parallel=2", "data.seq_len=1001"], "multiple"),
                       (["trainer.devices=2", "trainer.context_parallel=2", "data.seq_len=4"],
                        r"data.seq_len=4 over trainer.context_parallel=2 gives slices of 2 tokens, shorter than "
                        r"the conv's 3-token halo"),
                       (["trainer.devices=2", "trainer.strategy=ddp_spawn"], "spawn-launched strategies"),
                       (["trainer.context_parallel=0"], "expected >= 1"),
                       (["trainer.num_nodes=0"], "expected >= 1")]:
        with pytest.raises(ConfigError, match=match):
            load_config(path, bad)
    with pytest.raises(ConfigError, match="only pretraining"):
        load_config(shipped_config("classify/species_tiny_cpu.yaml"), ["trainer.context_parallel=2",
                                                                      "trainer.devices=2"])
    assert resolve_strategy(load_config(path).trainer) == "auto"
    ddp = resolve_strategy(load_config(path, ["trainer.devices=2"]).trainer)
    assert type(ddp).__name__ == "DDPStrategy"
    assert resolve_strategy(load_config(path, ["trainer.devices=2", "trainer.strategy=fsdp"]).trainer) == "fsdp"


def test_ddp_classifier_stops_together_and_tests_every_window_once(tmp_path):
    """The species classifier on 2 processes: every rank draws the same number of training windows
    (no rank waits forever in a collective), and the test windows are sharded without repeats, so
    the reduced confusion matrix equals a single-process evaluation of the saved model."""
    run = tmp_path / "clf"
    out = subprocess.run(
        [sys.executable, "-m", "genomamba", "classify", "fit", "-c", "configs/classify/species_tiny_cpu.yaml",
         "--no-progress", "--max-steps", "3", "--run-dir", str(run), "--set", "trainer.accelerator=cpu",
         "--set", "trainer.devices=2", "--set", "trainer.threads=1", "--set", "trainer.budget_minutes=null",
         "--set", "init_from=null", "--set", "model={d_model: 16, n_layer: 1}", "--set", "data.test_per_label=7",
         "--set", "baselines=[]"],
        capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Starting with 2 processes" in out.stderr + out.stdout
    test = json.loads((run / "results.json").read_text())["test"]
    assert test["n_windows"] == 35 and sum(map(sum, test["confusion"])) == 35
    ev = subprocess.run(
        [sys.executable, "-m", "genomamba", "classify", "evaluate", "--model", str(run / "model"), "--split", "test",
         "--length", "1024", "--per-label", "7", "--baselines", "", "--out", str(tmp_path / "eval.json")],
        capture_output=True, text=True, env=ENV, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    single = json.loads((tmp_path / "eval.json").read_text())
    assert single["confusion"] == test["confusion"]
    assert abs(single["acc"] - test["acc"]) < 1e-6
