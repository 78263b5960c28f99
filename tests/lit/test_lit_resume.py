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


def test_resume_keeps_the_best_weights_of_the_whole_run(tmp_path):
    """trainer.keep: best across a resume: the best weights seen before the resume travel in the
    checkpoint, so the resumed run saves them when nothing after the resume beats them."""
    from safetensors.torch import load_file

    from genomamba.commands.pretrain import run_pretrain
    from genomamba.lit.config import load_config
    from tests.lit.conftest import tiny_pretrain_doc

    doc = tiny_pretrain_doc(tmp_path / "run", max_steps=6, seq_len=128, val_every=2, ckpt_every=2)
    first = run_pretrain(load_config(doc=doc), quiet=True)
    assert first["kept"]["weights"] == "best"
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ck = torch.load(last, map_location="cpu", weights_only=True)
    best = [v for k, v in ck["callbacks"].items() if k.startswith("BestWeights")][0]
    assert best["best_step"] == first["kept"]["step"] and best["weights"] is not None
    saved = load_file(tmp_path / "run" / "model" / "model.safetensors")
    for name, t in saved.items():  # the checkpoint's best weights are those the run saved
        assert torch.equal(best["weights"]["model." + name].to(t.dtype), t), name
    # make the pre-resume best unbeatable (a loss of 0 at step 2, with recognisable weights): the
    # resumed run must keep it, though every validation after the resume is worse
    marked = {k: torch.full_like(v, 0.25) if v.is_floating_point() else v for k, v in best["weights"].items()}
    best.update(best=0.0, best_step=2, weights=marked)
    torch.save(ck, last)
    doc["trainer"]["max_steps"] = 10
    second = run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    assert second["global_step"] == 10
    assert second["kept"]["step"] == 2 and second["kept"]["value"] == 0.0
    saved = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert all(torch.all(t == 0.25) for t in saved.values() if t.is_floating_point())
