"""trainer.ema_decay: real Lightning runs keep an exponential moving average of the weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

from genomamba.commands.pretrain import run_pretrain
from genomamba.lit.config import ConfigError, load_config
from tests.lit.conftest import tiny_pretrain_doc


def _run(tmp_path, name, steps, **trainer):
    doc = tiny_pretrain_doc(tmp_path / name, max_steps=steps, **trainer)
    return run_pretrain(load_config(doc=doc), quiet=True), tmp_path / name


def _ckpt(run):
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _net(state: dict) -> dict:
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def test_ema_is_the_average_of_the_raw_weights_and_the_run_ends_with_it(tmp_path):
    """Two runs from the same seed: after step 1 the average is the raw weights w1; after step 2 it is
    d * w1 + (1 - d) * w2. The saved model is the average, while last.ckpt keeps the raw weights to
    resume from."""
    d = 0.6
    res1, run1 = _run(tmp_path, "one", 1, ema_decay=d, ema_warmup=False)
    res2, run2 = _run(tmp_path, "two", 2, ema_decay=d, ema_warmup=False)
    assert res2["kept"] == {"weights": "ema", "decay": d, "warmup": False, "from_step": 0, "updates": 2}
    w1 = _net(_ckpt(run1)["current_model_state"])
    ck2 = _ckpt(run2)
    w2 = _net(ck2["current_model_state"])
    avg = _net(ck2["state_dict"])
    saved = load_file(str(run2 / "model" / "model.safetensors"))
    moved = 0
    for k, v in saved.items():
        want = d * w1[k].double() + (1 - d) * w2[k].double()
        torch.testing.assert_close(v.double(), want, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(avg[k], v, msg=k)
        moved += int(not torch.equal(w1[k], w2[k]))
    assert moved > 0, "the second step must change some weights, or the test proves nothing"
    # the first run's average after one update is its raw weights
    for k, v in load_file(str(run1 / "model" / "model.safetensors")).items():
        torch.testing.assert_close(v, w1[k], msg=k)


def test_resume_continues_the_average(tmp_path):
    """--resume last with a larger max_steps continues from the raw weights and the saved average:
    after the resumed step 3 the average is d * avg2 + (1 - d) * w3 (not restarted from w3)."""
    d = 0.5
    _, run = _run(tmp_path, "part", 2, ema_decay=d, ema_warmup=False)
    ck2 = _ckpt(run)
    avg2 = _net(ck2["state_dict"])
    doc = tiny_pretrain_doc(run, max_steps=3, ema_decay=d, ema_warmup=False)
    res = run_pretrain(load_config(doc=doc), resume="last", quiet=True)
    assert res["global_step"] == 3 and res["kept"]["updates"] == 3
    ck3 = _ckpt(run)
    w3 = _net(ck3["current_model_state"])
    moved = 0
    for k, v in load_file(str(run / "model" / "model.safetensors")).items():
        torch.testing.assert_close(v.double(), d * avg2[k].double() + (1 - d) * w3[k].double(),
                                   rtol=1e-5, atol=1e-6, msg=k)
        moved += int(not torch.equal(avg2[k], w3[k]))
    assert moved > 0


def test_warmed_up_decay_follows_the_early_weights(tmp_path):
    """With the default warm-up, update k uses min(d, (1 + k) / (10 + k)): three runs from the same
    seed give the raw weights w1, w2, w3, and the third run's saved average is
    a2 = w1 + (w2 - w1)(1 - 2/11), a3 = a2 + (w3 - a2)(1 - 3/12) (d = 0.99 never binds here)."""
    d = 0.99
    raws = []
    for steps in (1, 2, 3):
        res, run = _run(tmp_path, f"w{steps}", steps, ema_decay=d)
        raws.append(_net(_ckpt(run)["current_model_state"]))
    assert res["kept"] == {"weights": "ema", "decay": d, "warmup": True, "from_step": 0, "updates": 3}
    w1, w2, w3 = raws
    moved = 0
    for k, v in load_file(str(run / "model" / "model.safetensors")).items():
        a2 = w1[k].double() + (w2[k].double() - w1[k].double()) * (1 - 2 / 11)
        a3 = a2 + (w3[k].double() - a2) * (1 - 3 / 12)
        torch.testing.assert_close(v.double(), a3, rtol=1e-5, atol=1e-6, msg=k)
        moved += int(not torch.equal(w2[k], w3[k]))
    assert moved > 0


def test_ema_that_never_started_keeps_the_last_weights(tmp_path):
    with pytest.warns(UserWarning, match="ema_start=50"):
        res, run = _run(tmp_path, "late", 2, ema_decay=0.9, ema_start=50)
    assert res["kept"]["weights"] == "last" and res["kept"]["updates"] == 0
    raw = _net(_ckpt(run)["current_model_state"])
    for k, v in load_file(str(run / "model" / "model.safetensors")).items():
        torch.testing.assert_close(v, raw[k], msg=k)
    assert json.loads((run / "results.json").read_text())["kept"]["weights"] == "last"


@pytest.mark.parametrize("trainer,msg", [
    ({"ema_decay": 1.0}, "trainer.ema_decay: expected a number in \\(0, 1\\)"),
    ({"ema_decay": "high"}, "trainer.ema_decay"),
    ({"ema_decay": 0.99, "strategy": "fsdp"}, "does not work with the sharded strategy fsdp"),
    ({"ema_decay": 0.99, "ema_start": -1}, "trainer.ema_start: expected a step >= 0"),
    ({"ema_decay": 0.99, "ema_warmup": "yes"}, "trainer.ema_warmup: expected bool"),
])
def test_bad_ema_settings_are_refused(tmp_path, trainer, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(doc=tiny_pretrain_doc(tmp_path / "bad", **trainer))
