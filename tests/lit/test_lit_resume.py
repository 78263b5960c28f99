"""kill -9 in the middle of `genomamba pretrain`, then `--resume`: the run continues from the last
checkpoint and ends at the configured step count (a real subprocess and a real SIGKILL)."""

import os
import re
import signal
import subprocess
import sys
import time

import torch
import yaml

MAX_STEPS = 60


def _cmd(*args):
    return [sys.executable, "-m", "genomamba", "pretrain", *args]


def _steps_on_disk(ckpt_dir):
    names = [re.fullmatch(r"step(\d+)\.ckpt", p.name) for p in ckpt_dir.glob("step*.ckpt")]
    return sorted(int(m.group(1)) for m in names if m)


def test_kill9_then_resume_ends_with_same_step_count(tmp_path):
    from tests.lit.conftest import tiny_pretrain_doc

    run = tmp_path / "run"
    doc = tiny_pretrain_doc(run, max_steps=MAX_STEPS, seq_len=128)
    doc["trainer"].update(ckpt_every=4, val_every=20)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_cmd("-c", str(cfg)), stdout=log, stderr=subprocess.STDOUT, env=env)
    ckpts = run / "checkpoints"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            steps = _steps_on_disk(ckpts) if ckpts.exists() else []
            if steps and steps[-1] >= 12:
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        else:
            raise AssertionError("no checkpoint at step >= 12 within 240 s")
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "results.json").exists()  # it really died mid-run
    killed_at = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    # stepN.ckpt lands just before last.ckpt is rewritten: a kill in between leaves last.ckpt one
    # checkpoint (4 steps) behind, which is still a mid-run resume point
    assert 8 <= killed_at < MAX_STEPS

    # resume with nothing but the run directory: the config comes from RUN_DIR/config.yaml
    out = subprocess.run(_cmd("--resume", "--run-dir", str(run)), capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"done: step {MAX_STEPS}" in out.stdout
    final = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == MAX_STEPS
    # the second launch logged only steps after the checkpoint it resumed from
    v1 = (run / "logs" / "version_1" / "metrics.csv").read_text().splitlines()
    header = v1[0].split(",")
    steps = [int(r.split(",")[header.index("step")]) for r in v1[1:] if r.split(",")[header.index("step")]]
    assert min(steps) >= killed_at and max(steps) == MAX_STEPS - 1
    # the curve history survived the kill (it lives in the checkpoint): it starts at the beginning
    hist = [v for k, v in final["callbacks"].items() if k.startswith("TrainingCurves")][0]["history"]
    train_steps = [s for s, _ in hist["train/loss"]]
    assert min(train_steps) < killed_at and max(train_steps) >= MAX_STEPS - 1
    assert (run / "model" / "model.safetensors").exists()
