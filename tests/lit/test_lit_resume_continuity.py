"""What a resumed run continues: fresh training windows (not the first ones again), an LR schedule that
ends at the new step count, text models, and a run stopped by SIGTERM (a preempted job)."""

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import genomamba.commands.pretrain as pretrain_cmd
from genomamba.commands.pretrain import run_pretrain
from genomamba.lit._pl import pl
from genomamba.lit.config import load_config
from genomamba.lit.optim import warmup_cosine
from tests.lit.conftest import tiny_pretrain_doc

ROOT = Path(__file__).resolve().parents[2]


class _BatchLog(pl.Callback):
    """(global step, digest of the batch's token ids) of every training batch."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        ids = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.seen.append((int(trainer.global_step), hashlib.sha1(ids.numpy().tobytes()).hexdigest()))


@pytest.fixture
def batch_log(monkeypatch):
    """Runs of ``run_pretrain`` record their training batches in the returned list of logs."""
    logs = []
    real = pretrain_cmd.build_trainer

    def build(tc, run_dir, callbacks, *args, **kwargs):
        logs.append(_BatchLog())
        return real(tc, run_dir, list(callbacks) + [logs[-1]], *args, **kwargs)

    monkeypatch.setattr(pretrain_cmd, "build_trainer", build)
    return logs


def test_resume_draws_new_windows_instead_of_replaying_the_first(tiny_pretrain, batch_log):
    doc = tiny_pretrain(max_steps=4, seq_len=128)
    run_pretrain(load_config(doc=doc), quiet=True)
    doc["trainer"]["max_steps"] = 8
    run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    first, second = batch_log
    assert [s for s, _ in first.seen] == [0, 1, 2, 3] and [s for s, _ in second.seen] == [4, 5, 6, 7]
    before, after = {h for _, h in first.seen}, {h for _, h in second.seen}
    assert len(before) == 4 and len(after) == 4
    assert not before & after, "the resumed run trained on windows the first launch already used"


def test_each_epoch_draws_new_windows_with_loader_workers(tiny_pretrain, batch_log):
    """A worker process keeps the dataset it started with: the training loader's workers restart each
    epoch so the next epoch's seed reaches them."""
    doc = tiny_pretrain(max_steps=4, seq_len=128)
    doc["data"].update(train_samples=8, num_workers=1)  # 2 batches of 4 per epoch: 2 epochs
    run_pretrain(load_config(doc=doc), quiet=True)
    (log,) = batch_log
    hashes = [h for _, h in log.seen]
    assert len(hashes) == 4 and len(set(hashes)) == 4, "the second epoch replayed the first one's windows"


def _lrs(run_dir):
    out = {}
    for f in sorted((run_dir / "logs").glob("version_*/metrics.csv")):
        for r in csv.DictReader(open(f)):
            key = next((k for k in r if k.startswith("lr-")), None)
            if key and r[key]:
                out[int(r["step"])] = float(r[key])
    return out


def test_resume_with_more_steps_ends_the_schedule_at_the_new_count(tiny_pretrain, tmp_path, capsys):
    doc = tiny_pretrain(max_steps=6, seq_len=128)
    doc["optim"].update(warmup_steps=2, min_lr_ratio=0.1)
    run_pretrain(load_config(doc=doc), quiet=True)
    doc["trainer"]["max_steps"] = 12
    doc["optim"]["lr"] = 0.03  # not used: the optimizer continues from the checkpoint, with a warning
    run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    assert "optim.lr: checkpoint 0.005, config 0.03" in capsys.readouterr().err
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 12 and ck["lr_schedulers"][0]["lr_lambdas"][0]["total"] == 12
    lr = _lrs(tmp_path / "run")
    # the added steps follow the cosine that ends at step 12 (not the floor the first launch ended on)
    assert [lr[s] for s in range(6, 12)] == pytest.approx([5e-3 * warmup_cosine(s, 2, 12, 0.1) for s in range(6, 12)])
    assert lr[6] > 5 * 5e-3 * 0.1


def test_text_run_resumes(tmp_path):
    """The adapter's vocabulary (bytes), not DNA's, is what a resumed text run is checked against."""
    cfg = ROOT / "configs" / "adapters" / "text_kjv_tiny_cpu.yaml"
    common = [f"run_dir={tmp_path / 'run'}", "trainer.progress=false", "trainer.threads=2", "trainer.max_minutes=null",
              "stream_test=null", "test_after_fit=false"]
    run_pretrain(load_config(cfg, [*common, "trainer.max_steps=3"]), quiet=True)
    res = run_pretrain(load_config(cfg, [*common, "trainer.max_steps=5"]), resume="last", quiet=True)
    assert res["global_step"] == 5


def test_sigterm_saves_the_step_and_exits_143_then_resume_finishes(tmp_path):
    """A scheduler's SIGTERM, sent to the whole process group (loader workers included): the step in
    progress ends, its state is saved, the exit code says it was stopped, and --resume continues from
    that step (not from the last periodic checkpoint)."""
    run = tmp_path / "run"
    doc = tiny_pretrain_doc(run, max_steps=5000, seq_len=128)
    doc["trainer"].update(ckpt_every=5, val_every=1000)
    doc["data"]["num_workers"] = 2
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "genomamba", "pretrain"]
    proc = subprocess.Popen([*cmd, "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.time() + 240
    while not list((run / "checkpoints").glob("step*.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    time.sleep(0.2)  # most likely between periodic checkpoints: the saved step is the one in progress
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    line = [x for x in err.splitlines() if "stopped:" in x]
    assert line and "SIGTERM at step" in line[0] and "--resume" in line[0], err[-3000:]
    step = int(line[0].split("SIGTERM at step ")[1].split(":")[0])
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert saved == step and step < 5000
    assert not (run / "results.json").exists()
    doc["trainer"]["max_steps"] = step + 3
    cfg.write_text(yaml.safe_dump(doc))
    out = subprocess.run([*cmd, "-c", str(cfg), "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"done: step {step + 3}" in out.stdout


class _SigtermWhen(pl.Callback):
    """Sends this process a SIGTERM (as a scheduler would) at the first batch of the test, or of a
    validation run after fit (the final validation that ``keep: best`` asks for)."""

    def __init__(self, phase: str):
        self.phase, self.sent = phase, False

    def _send(self):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.phase == "test":
            self._send()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.phase == "validation" and not trainer.training and trainer.state.fn == "validate":
            self._send()


@pytest.mark.parametrize("phase, what", [("test", "the test"), ("validation", "the final validation")])
def test_sigterm_after_training_is_a_stop_not_a_finished_run(tiny_pretrain, monkeypatch, phase, what):
    """Lightning turns a SIGTERM during its test or validate calls into an exit with status 0; after fit
    that must still say the run was stopped (status 143 through StoppedBySignal), write no results.json,
    and leave a last.ckpt from which --resume does the rest."""
    from genomamba.errors import StoppedBySignal

    real = pretrain_cmd.build_trainer
    monkeypatch.setattr(pretrain_cmd, "build_trainer",
                        lambda tc, run_dir, callbacks, *a, **k: real(tc, run_dir, [*callbacks, _SigtermWhen(phase)],
                                                                     *a, **k))
    doc = tiny_pretrain(max_steps=4, seq_len=128)
    # step 4 is not validated in fit (keep: best validates it after) nor saved by a periodic checkpoint
    doc["trainer"].update(val_every=3, ckpt_every=3, keep="best")
    doc["test_after_fit"] = True
    doc["data"]["sources"][0]["splits"] = ["train", "val", "test"]
    with pytest.raises(StoppedBySignal, match=f"SIGTERM during {what} after step 4: .*last.ckpt; --resume"):
        run_pretrain(load_config(doc=doc), quiet=True)
    run = Path(doc["run_dir"])
    assert not (run / "results.json").exists()
    # last.ckpt is the one written after fit (final weights, logger counter one less): the stop saved
    # no other over it, nor a step checkpoint of the kept weights
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step0000003.ckpt"]
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 4
    assert ck["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == 3
    monkeypatch.setattr(pretrain_cmd, "build_trainer", real)
    res = run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    assert res["global_step"] == 4 and (run / "results.json").exists()


class _SigtermMidWindow(pl.Callback):
    """Sends this process a SIGTERM at the first micro-batch of optimizer step ``at`` + 1."""

    def __init__(self, at: int):
        self.at, self.sent = at, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.sent and trainer.global_step == self.at:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_between_micro_batches_stops_after_the_whole_step(tiny_pretrain, monkeypatch):
    """With trainer.accumulate 2, a SIGTERM during the first micro-batch of step 3 stops the run after
    that step's second micro-batch and optimizer step: the checkpoint holds step 3 with 6 micro-batches
    done (not step 2 and a half), and --resume starts step 4 at a window's first micro-batch."""
    from genomamba.errors import StoppedBySignal

    real = pretrain_cmd.build_trainer
    monkeypatch.setattr(pretrain_cmd, "build_trainer",
                        lambda tc, run_dir, callbacks, *a, **k: real(tc, run_dir, [*callbacks, _SigtermMidWindow(2)],
                                                                     *a, **k))
    doc = tiny_pretrain(max_steps=5, seq_len=128, accumulate=2, val_every=100, ckpt_every=100, keep="last")
    with pytest.raises(StoppedBySignal, match="SIGTERM at step 3: "):
        run_pretrain(load_config(doc=doc), quiet=True)
    ck = torch.load(Path(doc["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 3
    done = ck["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
    assert done == 6, done
    monkeypatch.setattr(pretrain_cmd, "build_trainer", real)
    res = run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    assert res["global_step"] == 5


def test_sigterm_after_every_callback_of_a_micro_batch_still_waits_for_the_step(tiny_pretrain, monkeypatch):
    """The signal may land after the callbacks of a micro-batch ran and before Lightning looks for it
    (here: from the module's own end-of-batch hook, which runs last): the step still completes."""
    from genomamba.errors import StoppedBySignal
    from genomamba.lit.pretrain import PretrainModule

    def late(self, outputs, batch, batch_idx):
        if self.trainer.global_step == 2 and self.trainer.fit_loop.epoch_loop._should_accumulate():
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(PretrainModule, "on_train_batch_end", late, raising=False)
    doc = tiny_pretrain(max_steps=5, seq_len=128, accumulate=2, val_every=100, ckpt_every=100, keep="last")
    with pytest.raises(StoppedBySignal, match="SIGTERM at step 3: "):
        run_pretrain(load_config(doc=doc), quiet=True)
    ck = torch.load(Path(doc["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 3
    assert ck["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 6


def test_resumes_with_nothing_to_train_leave_the_logged_steps_alone(tiny_pretrain):
    """A --resume of a finished run (nothing left to train) writes last.ckpt again; the logger's step
    counter in it must stay where it was, or the next real resume logs its steps over earlier ones."""
    doc = tiny_pretrain(max_steps=4, seq_len=128)
    run = Path(doc["run_dir"])
    run_pretrain(load_config(doc=doc), quiet=True)
    last = run / "checkpoints" / "last.ckpt"

    def counter():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        return ck["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]

    before = counter()
    for _ in range(2):
        run_pretrain(load_config(doc=doc), resume="last", quiet=True)
        assert counter() == before
    doc["trainer"]["max_steps"] = 6
    run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    steps = []
    for f in sorted((run / "logs").glob("version_*/metrics.csv")):
        with open(f) as fh:
            steps.append([int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss")])
    first, *_, final = steps
    assert first == [0, 1, 2, 3] and final == [4, 5], steps


def test_the_final_validation_is_in_last_ckpt(tiny_pretrain):
    """keep: best validates a final step that fit did not; that score must be in last.ckpt, or a run
    continued with --resume could lose the best weights of the whole run."""
    doc = tiny_pretrain(max_steps=5, seq_len=128)
    doc["trainer"].update(val_every=3, keep="best")
    res = run_pretrain(load_config(doc=doc), quiet=True)
    ck = torch.load(Path(doc["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    best = next(v for k, v in ck["callbacks"].items() if k.startswith("BestWeights"))
    assert best["last_step"] == 5  # the final validation happened before last.ckpt was written
    assert res["kept"]["step"] == best["best_step"]


def test_a_resume_whose_time_limit_is_spent_says_so(tiny_pretrain, capsys):
    """trainer.max_minutes covers the whole run; a resume past it trains nothing, and says why."""
    doc = tiny_pretrain(max_steps=3, seq_len=128, max_minutes=10.0)
    run_pretrain(load_config(doc=doc), quiet=True)
    doc["trainer"].update(max_steps=50, max_minutes=1e-4)
    capsys.readouterr()
    res = run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    err = capsys.readouterr().err
    assert "trainer.max_minutes is 0.0001, which covers the whole run (resumes included): nothing is left" in err
    assert res["global_step"] == 3


class _SigtermInValidation(pl.Callback):
    """Sends this process a SIGTERM at the second batch of the validation fit runs after step ``at``."""

    def __init__(self, at: int):
        self.at, self.sent = at, False

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not self.sent and trainer.state.fn == "fit" and trainer.global_step == self.at and batch_idx == 1:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


class _ValidationLog(pl.Callback):
    """(global step, batch index) of every validation batch, and the loss each validation ends with."""

    def __init__(self):
        self.batches, self.losses = [], {}

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches.append((int(trainer.global_step), batch_idx))

    def on_validation_end(self, trainer, pl_module):
        self.losses[int(trainer.global_step)] = float(trainer.callback_metrics["val/loss"])


def test_sigterm_during_a_validation_in_fit_is_validated_again_on_resume(tmp_path, monkeypatch, batch_log):
    """A SIGTERM at the second of four validation batches after step 2: the run stops there, and
    --resume first validates step 2 on the whole validation set (the same loss as a run never stopped;
    keep: best weighs it), then trains steps 3 and 4 once each."""
    from genomamba.errors import StoppedBySignal

    def run(name, *extra, resume=None):
        doc = tiny_pretrain_doc(tmp_path / name, max_steps=4, seq_len=128)
        doc["trainer"].update(val_every=2, ckpt_every=100, keep="best")
        doc["data"]["val_windows"] = 16  # four validation batches of 4
        log = _ValidationLog()
        real = batch_log_build[0]
        monkeypatch.setattr(pretrain_cmd, "build_trainer",
                            lambda tc, rd, cbs, *a, **k: real(tc, rd, [*cbs, *extra, log], *a, **k))
        return run_pretrain(load_config(doc=doc), resume=resume, quiet=True), log

    batch_log_build = [pretrain_cmd.build_trainer]  # records training batches (batch_log), then adds ours
    straight, straight_log = run("straight")
    assert straight_log.batches == [(2, i) for i in range(4)] + [(4, i) for i in range(4)]
    with pytest.raises(StoppedBySignal, match="SIGTERM at step 2: "):
        run("stopped", _SigtermInValidation(2))
    ck = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 2
    res, resumed = run("stopped", resume="last")
    assert resumed.batches == straight_log.batches
    # step 2's weights are the same either way (a resume trains on windows of its own afterwards)
    assert resumed.losses[2] == pytest.approx(straight_log.losses[2], rel=1e-6)
    assert [s for s, _ in batch_log[-1].seen] == [2, 3], "the resumed run trained a step twice or skipped one"
    assert res["global_step"] == 4
    assert res["kept"]["value"] == pytest.approx(min(resumed.losses.values()), rel=1e-6)
    assert res["kept"]["step"] == min(resumed.losses, key=resumed.losses.get)
