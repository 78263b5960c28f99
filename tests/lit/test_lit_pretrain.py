"""Real Lightning Trainer runs of next-base pretraining on the shipped genome slices."""

import csv
import json

import pytest
import torch

from genomamba import MambaLM
from genomamba.commands.pretrain import run_pretrain
from genomamba.lit.config import load_config
from genomamba.lit.optim import warmup_cosine
from genomamba.lit.pretrain import next_base_loss
from genomamba.tokenizers.dna import DNATokenizer


def _rows(run_dir):
    rows = []
    for f in sorted((run_dir / "logs").glob("version_*/metrics.csv")):
        with open(f) as fh:
            rows += list(csv.DictReader(fh))
    return rows


def test_pretrain_loss_decreases_and_saves_model(tiny_pretrain, tmp_path):
    doc = tiny_pretrain(max_steps=40)
    doc["test_after_fit"] = True
    doc["data"]["sources"] = [{"assets": "pretrain"}]
    doc["data"]["test_windows"] = 8
    cfg = load_config(doc=doc)
    res = run_pretrain(cfg, quiet=True)
    run = tmp_path / "run"
    assert res["global_step"] == 40
    losses = [float(r["train/loss"]) for r in _rows(run) if r.get("train/loss")]
    assert len(losses) >= 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.2, (first, last)  # from ~2.0 bits/base of a random init (ln 11 nats)
    assert res["test"]["test/bpb"] < 2.3
    assert 0 < res["metrics"]["val/bpb"] < 2.3
    # the saved model is a plain MambaLM directory with the tokenizer beside it
    lm = MambaLM.from_pretrained(run / "model")
    assert lm.config.extra["trained_steps"] == 40
    assert DNATokenizer.from_pretrained(run / "model") == DNATokenizer()
    assert (run / "training_curves.png").stat().st_size > 1000
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert list((run / "tb").rglob("events.out.tfevents*"))
    assert json.loads((run / "results.json").read_text())["global_step"] == 40


def test_next_base_loss_ignores_pad_and_n():
    tok = DNATokenizer()
    ids = torch.tensor([[tok.a_id, tok.c_id, tok.n_id, tok.g_id, tok.pad_id]])
    mask = torch.tensor([[True, True, True, True, False]])
    ok = torch.zeros(16, dtype=torch.bool)
    ok[[tok.a_id, tok.c_id, tok.g_id, tok.t_id]] = True
    logits = torch.zeros(1, 5, 16)
    _, total, correct, n = next_base_loss(logits, ids, mask, ok)
    # scored targets: C (after A), G (after N); N itself and the pad are never targets
    assert int(n) == 2
    assert torch.isclose(total, 2 * torch.log(torch.tensor(16.0)))
    assert int(correct) == 0


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_optimizer_groups_follow_no_weight_decay_tags(tiny_pretrain):
    from genomamba.lit._pl import pl
    from genomamba.lit.pretrain import PretrainModule

    cfg = load_config(doc=tiny_pretrain())
    module = PretrainModule(cfg.model.to_dict(), {"weight_decay": 0.1})
    trainer = pl.Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    opt = module.configure_optimizers()["optimizer"]
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    nd = {names[id(p)].split(".")[-1] for p in no_decay["params"]}
    assert {"A_log", "D", "weight"} >= nd or {"A_log", "D"} <= nd
    assert any(names[id(p)].endswith("A_log") for p in no_decay["params"])
    assert not any(names[id(p)].endswith("A_log") for p in decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])


def test_segment_wise_training_logs_the_same_losses(tmp_path):
    """trainer.segment_len reads each 256-token window in 64-token segments; the optimizer sees the
    same gradients, so a 3-step run logs the same losses as the whole-window run."""
    from tests.lit.conftest import tiny_pretrain_doc

    runs = {}
    for name, seg in (("whole", None), ("segments", 64)):
        doc = tiny_pretrain_doc(tmp_path / name, max_steps=3, segment_len=seg)
        res = run_pretrain(load_config(doc=doc), quiet=True)
        assert res["global_step"] == 3 and res["segment_len"] == seg
        runs[name] = [float(r["train/loss"]) for r in _rows(tmp_path / name) if r.get("train/loss")]
        runs[name + "_val"] = res["metrics"]["val/loss"]
    assert len(runs["whole"]) == 3
    for a, b in zip(runs["whole"], runs["segments"]):
        assert abs(a - b) < 1e-4, runs
    assert abs(runs["whole_val"] - runs["segments_val"]) < 1e-4


def test_keep_activations_reaches_every_layer_and_changes_no_loss(tmp_path):
    """trainer.keep_activations sets every mixer to keep its activations (rebuild_inputs False, also
    inside a classifier) and a 3-step run logs the same losses as the default."""
    from genomamba.lit.classify import ClassifierModule
    from genomamba.lit.pretrain import PretrainModule
    from genomamba.models.recompute import keep_activations
    from tests.lit.conftest import TINY_MODEL, tiny_pretrain_doc

    for module in (PretrainModule(dict(TINY_MODEL)), ClassifierModule(["a", "b"], model=dict(TINY_MODEL))):
        mixers = [m for m in module.modules() if hasattr(m, "rebuild_inputs")]
        assert len(mixers) == TINY_MODEL["n_layer"] and all(m.rebuild_inputs is None for m in mixers)
        assert keep_activations(module) == TINY_MODEL["n_layer"]
        assert all(m.rebuild_inputs is False for m in mixers)
        keep_activations(module, False)
        assert all(m.rebuild_inputs is None for m in mixers)
    losses = {}
    for keep in (False, True):
        doc = tiny_pretrain_doc(tmp_path / str(keep), max_steps=3, keep_activations=keep)
        res = run_pretrain(load_config(doc=doc), quiet=True)
        assert res["keep_activations"] is keep
        losses[keep] = [float(r["train/loss"]) for r in _rows(tmp_path / str(keep)) if r.get("train/loss")]
    assert len(losses[True]) == 3 and losses[True] == losses[False]


@pytest.mark.parametrize("trainer, match", [
    ({"keep_activations": "yes"}, "trainer.keep_activations: expected bool"),
    ({"keep_activations": True, "gradient_checkpointing": True}, "keep_activations and trainer.gradient_checkpointing"),
    ({"segment_len": 0}, "segment_len: expected a positive int"),
    ({"segment_len": "64k"}, "segment_len"),
    ({"segment_len": 64, "context_parallel": 2, "devices": 2}, "do not combine"),
])
def test_segment_len_config_errors(tiny_pretrain, trainer, match):
    from genomamba.lit.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_config(doc=tiny_pretrain(**trainer))


def _val_loss_of(model_dir, cfg):
    """The validation loss of a saved model on the run's validation windows, through a fresh Trainer."""
    from genomamba.lit._pl import pl
    from genomamba.lit.datamodules import PretrainDataModule
    from genomamba.lit.pretrain import PretrainModule

    d = cfg.data
    dm = PretrainDataModule(d.sources, d.seq_len, d.batch_size, d.train_samples, d.val_windows, d.test_windows,
                            d.rc_prob, d.max_n_frac, 0, cfg.trainer.seed, DNATokenizer())
    lm = MambaLM.from_pretrained(model_dir)
    module = PretrainModule(lm.config.to_dict(), {}, DNATokenizer().to_dict())
    module.model.load_state_dict(lm.state_dict())
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    return float(trainer.callback_metrics["val/loss"])


@pytest.mark.parametrize("keep", ["best", "last"])
def test_a_run_keeps_its_best_validated_weights(tiny_pretrain, tmp_path, keep):
    """``trainer.keep: best`` (the default) saves and tests the weights of the lowest validation loss,
    the final step validated too; ``last`` those of the final step."""
    doc = tiny_pretrain(max_steps=23, val_every=5, keep=keep)
    doc["optim"]["lr"] = 0.05  # large steps: the validation loss moves both ways
    cfg = load_config(doc=doc)
    res = run_pretrain(cfg, quiet=True)
    run = tmp_path / "run"
    vals = [float(r["val/loss"]) for r in _rows(run) if r.get("val/loss")]
    saved = _val_loss_of(run / "model", cfg)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    last_w = {k.removeprefix("model."): v for k, v in last["state_dict"].items() if k.startswith("model.")}
    kept_w = MambaLM.from_pretrained(run / "model").state_dict()
    same_as_last = all(torch.equal(v, last_w[k]) for k, v in kept_w.items())
    if keep == "last":
        assert res["kept"] == {"weights": "last"} and len(vals) == 4  # steps 5, 10, 15, 20
        assert same_as_last
        return
    assert len(vals) == 5, vals  # steps 5, 10, 15, 20 and the final 23
    kept = res["kept"]
    assert kept["weights"] == "best" and kept["value"] == pytest.approx(min(vals), abs=1e-6)
    assert saved == pytest.approx(min(vals), abs=1e-5)  # what was saved is what scored best
    assert same_as_last == (kept["step"] == 23)
    assert MambaLM.from_pretrained(run / "model").config.extra["trained_steps"] == kept["step"]
    assert json.loads((run / "results.json").read_text())["kept"]["step"] == kept["step"]


@pytest.mark.parametrize("how", ["no validation split", "trainer.limit_val_batches is 0"])
def test_keep_best_without_validation_says_so_up_front_and_in_results(tiny_pretrain, tmp_path, capfd, how):
    """With nothing validated there is no best: the run says at its start that it keeps its last
    weights, and results.json says why (it said only ``weights: last``)."""
    if how == "no validation split":
        doc = tiny_pretrain(max_steps=3)
        doc["data"]["sources"] = [{"assets": "pretrain", "splits": ["train"]}]
    else:
        doc = tiny_pretrain(max_steps=3, limit_val_batches=0)
    with pytest.warns(UserWarning, match=r"trainer.keep=best: the last weights are kept"):
        res = run_pretrain(load_config(doc=doc), quiet=True)
    assert res["kept"]["weights"] == "last" and res["kept"]["why"] == how, res["kept"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["kept"]["why"] == how
    err = capfd.readouterr().err
    assert f"warning: trainer.keep=best compares validation losses, but this run validates nothing ({how})" in err, err
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    kept = MambaLM.from_pretrained(tmp_path / "run" / "model").state_dict()
    assert all(torch.equal(v, last["state_dict"]["model." + k]) for k, v in kept.items())


def test_validation_interval_counts_optimizer_steps_with_accumulation(tiny_pretrain, tmp_path):
    """``trainer.val_every`` is in optimizer steps: with two micro-batches a step, validation runs at
    steps 2 and 4 of 5 (and after the final one), not every micro-batch pair."""
    doc = tiny_pretrain(max_steps=5, val_every=2, accumulate=2, keep="last")
    res = run_pretrain(load_config(doc=doc), quiet=True)
    steps = [int(r["step"]) for r in _rows(tmp_path / "run") if r.get("val/loss")]
    assert len(steps) == 2, steps  # at optimizer steps 2 and 4 (logged one lower: 1 and 3)
    assert steps == [1, 3], steps
    # the throughput clock skips two optimizer steps too, then counts steps 3-5, each of two micro-batches
    tp = res["throughput"]
    assert tp["timed_steps"] == 3 and tp["tokens"] == 3 * 2 * 4 * 256, tp
