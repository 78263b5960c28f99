"""Sequence-length warmup: the schedule, real Trainer runs, and resume mid-warmup."""

import csv
import warnings

import pytest
import torch

from genomamba.commands.pretrain import run_pretrain
from genomamba.lit.callbacks import SeqLenWarmup
from genomamba.lit.config import ConfigError, load_config


def test_schedule_doubles_from_start_and_stops_at_final():
    w = SeqLenWarmup(final_len=8192, start_len=1024, stage_steps=100)
    assert w.num_stages == 4 and w.warmup_steps == 300
    assert [w.length_at(s) for s in (0, 99, 100, 199, 200, 300, 10**6)] == [1024, 1024, 2048, 2048, 4096, 8192, 8192]
    assert w.schedule(250) == [(0, 1024), (100, 2048), (200, 4096)]
    with pytest.raises(ValueError, match="power of two"):
        SeqLenWarmup(final_len=3000, start_len=1024)


def _seq_lens(run_dir):
    """Logged train/seq_len of every optimizer step, in order, over all launches of the run."""
    out = []
    for f in sorted((run_dir / "logs").glob("version_*/metrics.csv")):
        out += [int(float(r["train/seq_len"])) for r in csv.DictReader(open(f)) if r.get("train/seq_len")]
    return out


def test_warmup_run_keeps_tokens_per_step_and_resumes_mid_stage(tiny_pretrain, tmp_path):
    doc = tiny_pretrain(max_steps=7, seq_len=256)
    doc["seqlen_warmup"] = {"start": 64, "stage_steps": 4}
    res = run_pretrain(load_config(doc=doc), quiet=True)
    assert res["global_step"] == 7
    run = tmp_path / "run"
    # stop at step 7 (inside the 128 stage), then continue to 14 from the checkpoint
    doc["trainer"]["max_steps"] = 14
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    assert res["global_step"] == 14
    # windows come from the global step, so Lightning's mid-epoch resume warning is not shown
    assert not [w for w in caught if "resuming from a checkpoint that ended before" in str(w.message)]
    # one entry per step (the second launch starts at the final checkpoint of the first, step 7),
    # each the schedule's length at that step: 64 x4, 128 x4, then 256
    assert _seq_lens(run) == [64 * 2 ** min(s // 4, 2) for s in range(14)]
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = [v for k, v in ck["callbacks"].items() if k.startswith("SeqLenWarmup")][0]
    assert state == {"start_len": 64, "final_len": 256, "stage_steps": 4}
    # a changed data.seq_len cannot continue that schedule: refused before anything in the run changes
    config_yaml = (run / "config.yaml").read_text()
    doc["trainer"]["max_steps"] = 16
    doc["data"]["seq_len"] = 128
    with pytest.raises(ConfigError, match=r"warmup .* ends at 256 tokens, but data\.seq_len is 128; resume with "
                                          r"data\.seq_len=256"):
        run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    assert (run / "config.yaml").read_text() == config_yaml


def test_checkpoint_schedule_wins_over_changed_config_on_resume():
    w = SeqLenWarmup(final_len=256, start_len=64, stage_steps=10)
    with pytest.warns(UserWarning, match="continuing the checkpoint's"):
        w.load_state_dict({"start_len": 64, "final_len": 256, "stage_steps": 4})
    assert w.length_at(5) == 128


def test_warmup_config_must_divide_window(tiny_pretrain):
    doc = tiny_pretrain(seq_len=256)
    doc["seqlen_warmup"] = {"start": 96, "stage_steps": 4}
    with pytest.raises(ConfigError, match="power of two"):
        load_config(doc=doc)


def test_time_budget_plans_steps_and_retargets_the_schedule(tiny_pretrain, tmp_path):
    doc = tiny_pretrain(max_steps=500, seq_len=128)
    doc["trainer"]["budget_minutes"] = 0.02  # ~1 s: the plan lands right after the 25-step probe
    res = run_pretrain(load_config(doc=doc), quiet=True)
    assert 25 < res["global_step"] < 500
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    plan = [v for k, v in ck["callbacks"].items() if k.startswith("TimeBudget")][0]["planned"]
    assert plan == res["global_step"]
    # the cosine schedule now ends at the planned step: the last lr is the floor
    lam = ck["lr_schedulers"][0]["lr_lambdas"][0]
    assert lam["total"] == plan
    # resumed with the same max_steps: the plan stands (nothing left to train)
    res = run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    assert res["global_step"] == plan
    # resumed with another max_steps (--resume --max-steps N): N is trained to, the schedule ends there
    doc["trainer"]["max_steps"] = plan + 4
    res = run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    assert res["global_step"] == plan + 4
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["lr_schedulers"][0]["lr_lambdas"][0]["total"] == plan + 4


class _WritesAFile:
    """Pickles to a call of open(path, "w"): what a booby-trapped checkpoint could run on load."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_refuses_a_checkpoint_with_pickled_code(tiny_pretrain, tmp_path):
    doc = tiny_pretrain(max_steps=3, seq_len=128)
    run_pretrain(load_config(doc=doc), quiet=True)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ck = torch.load(last, map_location="cpu", weights_only=True)  # our own checkpoints are plain data
    marker = tmp_path / "pwned"
    ck["extra"] = _WritesAFile(marker)
    bad = tmp_path / "bad.ckpt"
    torch.save(ck, bad)
    doc["trainer"]["max_steps"] = 6
    with pytest.raises(ConfigError, match=r"refused to load .*bad\.ckpt.*never unpickled as code "
                                          r"\((?i:[^)]*global[^)]*open)\)$") as err:
        run_pretrain(load_config(doc=doc), resume=str(bad), quiet=True)
    assert "weights_only" not in str(err.value)  # torch's advice to load it unrestricted is not passed on
    assert not marker.exists()  # the pickled call never ran
    res = run_pretrain(load_config(doc=doc), resume="last", quiet=True)  # the clean one still resumes
    assert res["global_step"] == 6


def test_time_budget_plans_in_a_run_resumed_before_its_probe_ended(tiny_pretrain, tmp_path):
    """A run stopped before its probe finished (here at step 10 of skip 5 + probe 20) plans when
    resumed: the probe runs again from the launch's first step, and the time used before counts."""
    doc = tiny_pretrain(max_steps=10, seq_len=128)
    doc["trainer"]["budget_minutes"] = 0.05
    assert run_pretrain(load_config(doc=doc), quiet=True)["global_step"] == 10
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = [v for k, v in ck["callbacks"].items() if k.startswith("TimeBudget")][0]
    assert state["planned"] is None and state["elapsed"] > 0
    doc["trainer"]["max_steps"] = 5000
    res = run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    plan = [v for k, v in ck["callbacks"].items() if k.startswith("TimeBudget")][0]["planned"]
    assert plan is not None and 10 + 25 <= res["global_step"] == plan < 5000
