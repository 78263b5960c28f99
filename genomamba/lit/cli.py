"""``genomamba pretrain`` and ``genomamba classify {fit,evaluate,predict}``.

Options come from typed dataclass configs read from YAML (``--config configs/pretrain/x.yaml``),
then ``--set section.key=value`` overrides (values parsed as YAML), then the few flags below.
A run directory holds everything a run writes::

    run_dir/config.yaml          the resolved config (``--resume`` without --config reads it)
    run_dir/checkpoints/         last.ckpt + the latest step checkpoint (atomic writes)
    run_dir/logs/version_N/      CSV metrics (one version per launch); run_dir/tb/: TensorBoard
    run_dir/training_curves.png  whole-run curves (history kept in the checkpoint across resumes)
    run_dir/model/               save_pretrained model (+ tokenizer.json), written when fit ends
    run_dir/results.json         final metrics
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A bad config file / override; the message names the file and the key."""


# ----------------------------------------------------------------------------- typed configs
@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.1
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    head_lr_mult: float = 1.0  # classifier only: the head's lr = lr * head_lr_mult


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    max_minutes: Optional[float] = None  # wall-clock cap (Lightning Timer); training stops cleanly
    budget_minutes: Optional[float] = None  # plan max_steps from measured speed so the LR schedule fits
    val_every: int = 200  # optimizer steps between validations
    limit_val_batches: Optional[int] = None
    precision: str = "auto"  # auto: bf16-mixed on GPU (fp32 params), 32-true on CPU
    accelerator: str = "auto"
    devices: Any = 1
    grad_clip: float = 1.0
    accumulate: int = 1
    log_every: int = 10
    ckpt_every: int = 100
    seed: int = 0
    progress: bool = True
    gradient_checkpointing: bool = False
    threads: Optional[int] = None  # torch.set_num_threads on CPU


@dataclass
class SeqLenWarmupConfig:
    start: int = 1024
    stage_steps: int = 1000


@dataclass
class PretrainDataConfig:
    sources: list = field(default_factory=lambda: [{"assets": "pretrain"}])
    seq_len: int = 1024
    batch_size: int = 8
    train_samples: int = 100_000
    val_windows: Optional[int] = 64
    test_windows: Optional[int] = None
    rc_prob: float = 0.5
    max_n_frac: float = 0.1
    num_workers: int = 0


@dataclass
class PretrainConfig:
    kind: str = "pretrain"
    name: str = ""
    description: str = ""
    model: dict = field(default_factory=dict)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seqlen_warmup: Optional[SeqLenWarmupConfig] = None
    test_after_fit: bool = True
    run_dir: str = "runs/pretrain"


@dataclass
class HeadConfig:
    pooling: str = "mean"
    freeze_backbone: bool = False
    dropout: float = 0.0
    tta_rc: bool = True  # evaluate on both strands (mean class probability of window + reverse complement)


@dataclass
class SpeciesDataConfig:
    manifest: str = "assets"  # a path, "assets" (shipped slices) or "fetch:bacteria" (full genomes)
    length: int = 1024  # evaluation (and, by default, training) window length
    train_length: Optional[int] = None  # shorter training windows: more windows per second on a CPU
    batch_size: int = 32
    train_samples: int = 20_000
    val_per_label: int = 100
    test_per_label: int = 200
    rc_prob: float = 0.5
    num_workers: int = 0


@dataclass
class ClassifyConfig:
    kind: str = "classify"
    name: str = ""
    description: str = ""
    # a pretrained model dir (save_pretrained), or a classifier's (its head is kept when the labels match);
    # else model: from scratch
    init_from: Optional[str] = None
    model: dict = field(default_factory=dict)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: SpeciesDataConfig = field(default_factory=SpeciesDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    baselines: list = field(default_factory=lambda: [4])  # k of the k-mer NB baselines scored at test
    run_dir: str = "runs/classify"


KINDS = {"pretrain": PretrainConfig, "classify": ClassifyConfig}


def _check_type(value, tp, where: str):
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _check_type(value, inner, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "3e-3" as a string
        except ValueError:
            pass
    base = origin or tp
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an int, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(f"{where}: expected {getattr(base, '__name__', base)}, got {value!r}")
    return value


def from_dict(cls, d, where: str):
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types (naming ``where``)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    return cls(**{k: _check_type(v, hints[k], f"{where}.{k}") for k, v in d.items()})


def apply_override(doc: dict, assignment: str) -> None:
    """``a.b.c=value`` (value parsed as YAML) into the nested mapping ``doc``."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({e})") from None
    node = doc
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"--set {assignment!r}: {p!r} is not a section")
        node = node[p]
    node[parts[-1]] = value


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--config {path}: no such file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return doc


def load_config(path=None, overrides=(), kind: Optional[str] = None, doc: Optional[dict] = None):
    """YAML file (+ overrides) -> PretrainConfig / ClassifyConfig, chosen by the top-level ``kind:``."""
    doc = dict(read_yaml(path)) if doc is None else doc
    for o in overrides:
        apply_override(doc, o)
    where = str(path) if path else "config"
    k = doc.get("kind", kind)
    if k not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {sorted(KINDS)}, got {k!r}")
    if kind is not None and k != kind:
        raise ConfigError(f"{where}: is a {k!r} config, expected {kind!r}")
    cfg = from_dict(KINDS[k], doc, where)
    if cfg.model:
        from genomamba.config import MambaConfig

        try:
            MambaConfig.from_dict(dict(cfg.model))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: model: {e}") from None
    if k == "pretrain" and not cfg.model:
        raise ConfigError(f"{where}: model: missing (MambaConfig fields, e.g. d_model, n_layer, vocab_size)")
    if k == "pretrain" and cfg.seqlen_warmup is not None:
        from genomamba.lit.callbacks import _is_pow2_multiple

        if not _is_pow2_multiple(cfg.data.seq_len, cfg.seqlen_warmup.start):
            raise ConfigError(f"{where}: seqlen_warmup.start={cfg.seqlen_warmup.start} must divide data.seq_len="
                              f"{cfg.data.seq_len} by a power of two")
    if k == "classify" and not cfg.model and not cfg.init_from:
        raise ConfigError(f"{where}: give init_from (a pretrained model dir) or model (train from scratch)")
    return cfg


def to_plain(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------- trainer
def _atomic_checkpoint_io():
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Write to ``<path>.tmp`` then rename: a kill -9 mid-save never leaves a torn checkpoint."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)

    return AtomicCheckpointIO()


def resolve_precision(tc: TrainerConfig) -> str:
    import torch

    if tc.precision != "auto":
        return tc.precision
    gpu = torch.cuda.is_available() and tc.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if gpu else "32-true"


def build_trainer(tc: TrainerConfig, run_dir: Path, callbacks: list, monitor_title: str, train_keys, val_keys,
                  has_val: bool = True, quiet: bool = False):
    import torch

    from genomamba.lit._pl import pl
    from genomamba.lit.callbacks import TimeBudget, TrainingCurves
    from genomamba.lit.data import EpochSeed

    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    # Denormal floats (tiny activations/gradients early in training) make CPU kernels (the depthwise
    # conv1d backward above all) 10-100x slower; flushing them to zero changes nothing measurable.
    torch.set_flush_denormal(True)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:07d}",
                                        auto_insert_metric_name=False, every_n_train_steps=tc.ckpt_every,
                                        save_last=True, save_top_k=1, save_on_train_epoch_end=False)
    cbs = [ckpt, EpochSeed(), pl.callbacks.LearningRateMonitor(logging_interval="step"),
           TrainingCurves(run_dir / "training_curves.png", train_keys, val_keys, every=max(1, tc.log_every),
                          title=monitor_title)] + callbacks
    if tc.budget_minutes:
        cbs.append(TimeBudget(tc.budget_minutes))
    if tc.progress:
        cbs.append(pl.callbacks.TQDMProgressBar(refresh_rate=max(1, tc.log_every)))
    loggers = [pl.loggers.CSVLogger(str(run_dir), name="logs")]
    try:
        import tensorboard  # noqa: F401

        loggers.append(pl.loggers.TensorBoardLogger(str(run_dir), name="tb", default_hp_metric=False))
    except ImportError:
        print("genomamba: tensorboard not installed; logging CSV only", file=sys.stderr)
    kw = {}
    if tc.max_minutes:
        kw["max_time"] = datetime.timedelta(minutes=float(tc.max_minutes))
    return pl.Trainer(
        max_steps=tc.max_steps, accelerator=tc.accelerator, devices=tc.devices, precision=resolve_precision(tc),
        gradient_clip_val=tc.grad_clip or None, accumulate_grad_batches=tc.accumulate,
        val_check_interval=tc.val_every if has_val else None, check_val_every_n_epoch=None if has_val else 1,
        limit_val_batches=tc.limit_val_batches if has_val else 0, num_sanity_val_steps=0,
        log_every_n_steps=tc.log_every, callbacks=cbs, logger=loggers, default_root_dir=str(run_dir),
        enable_progress_bar=tc.progress, plugins=[_atomic_checkpoint_io()], max_epochs=-1,
        enable_model_summary=not quiet, **kw,
    )


def _final_checkpoint(trainer, run_dir: Path) -> None:
    """last.ckpt at the step fit ended on, so ``--resume`` with a larger max_steps continues from there."""
    if not trainer.interrupted:
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def _resume_path(arg, run_dir: Path) -> Optional[str]:
    if arg is None:
        return None
    p = Path(arg) if arg != "last" else run_dir / "checkpoints" / "last.ckpt"
    if not p.exists():
        raise ConfigError(f"--resume: checkpoint {p} does not exist (nothing to resume in {run_dir})")
    return str(p)


def _fit(trainer, module, dm, ckpt_path: Optional[str]) -> None:
    """trainer.fit, resuming (if asked) with ``weights_only=True``: a checkpoint is read as tensors and
    plain data only, never as pickled code, and one that holds anything else is refused by name."""
    import pickle

    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except pickle.UnpicklingError as exc:
        if ckpt_path is None:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--resume: refused to load {ckpt_path}: it holds pickled objects beyond tensors and "
                          f"plain data, and checkpoints are never unpickled as code ({first[:300]})") from None


def _common_args(ap: argparse.ArgumentParser):
    ap.add_argument("--config", "-c", help="YAML config (configs/...); default: RUN_DIR/config.yaml when resuming")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set trainer.max_steps=500 (repeatable)")
    ap.add_argument("--run-dir", help="output directory (overrides run_dir)")
    ap.add_argument("--max-steps", type=int, help="overrides trainer.max_steps")
    ap.add_argument("--max-minutes", type=float, help="overrides trainer.max_minutes (wall-clock cap)")
    ap.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                    help="continue from RUN_DIR/checkpoints/last.ckpt (or the given checkpoint)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config_from_args(args, kind: str):
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.max_steps is not None:
        overrides.append(f"trainer.max_steps={args.max_steps}")
    if args.max_minutes is not None:
        overrides.append(f"trainer.max_minutes={args.max_minutes}")
    if args.no_progress:
        overrides.append("trainer.progress=false")
    path = args.config
    if path is None:
        if args.resume is not None and args.run_dir and (Path(args.run_dir) / "config.yaml").exists():
            path = Path(args.run_dir) / "config.yaml"
        else:
            raise ConfigError("--config is required (or --resume with --run-dir of an earlier run)")
    return load_config(path, overrides, kind=kind)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _scalar_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


# ----------------------------------------------------------------------------- pretrain
def run_pretrain(cfg: PretrainConfig, resume: Optional[str] = None, quiet: bool = False) -> dict:
    """Fit (and test) a DNA LM from a PretrainConfig; returns the results dict (also results.json)."""
    import torch

    from genomamba.lit._pl import pl
    from genomamba.lit.callbacks import SeqLenWarmup
    from genomamba.lit.data import PretrainDataModule
    from genomamba.lit.pretrain import PretrainModule
    from genomamba.tokenizers.dna import DNATokenizer

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = _resume_path(resume, run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False))
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    tok = DNATokenizer()
    d = cfg.data
    dm = PretrainDataModule(d.sources, d.seq_len, d.batch_size, d.train_samples, d.val_windows, d.test_windows,
                            d.rc_prob, d.max_n_frac, d.num_workers, cfg.trainer.seed, tok)
    t0 = time.time()
    dm.setup("fit")
    if not quiet:
        s = dm.summary()
        print(f"corpus: {s['sources']} sources, {s['contigs']} contigs; bases train {s['bases']['train']:,} "
              f"val {s['bases']['val']:,} test {s['bases']['test']:,} ({time.time() - t0:.1f}s)", flush=True)
    model_cfg = {"vocab_size": tok.vocab_size, **cfg.model}
    optim = {k: v for k, v in to_plain(cfg.optim).items() if k != "head_lr_mult"}
    module = PretrainModule(model_cfg, optim, tok.to_dict(), gradient_checkpointing=cfg.trainer.gradient_checkpointing)
    callbacks = []
    if cfg.seqlen_warmup is not None:
        callbacks.append(SeqLenWarmup(d.seq_len, cfg.seqlen_warmup.start, cfg.seqlen_warmup.stage_steps))
    title = f"{cfg.name or 'pretrain'}: {module.model.num_parameters():,} params, L={d.seq_len}"
    trainer = build_trainer(cfg.trainer, run_dir, callbacks, title, ("train/loss", "train/bpb"),
                            ("val/loss", "val/bpb", "val/acc"), has_val=dm.val_ds is not None, quiet=quiet)
    t0 = time.time()
    _fit(trainer, module, dm, ckpt_path)
    fit_s = time.time() - t0
    _final_checkpoint(trainer, run_dir)
    results = {"kind": "pretrain", "name": cfg.name, "global_step": int(trainer.global_step),
               "params": module.model.num_parameters(), "fit_seconds": round(fit_s, 1),
               "precision": resolve_precision(cfg.trainer), "seq_len": d.seq_len,
               "device": str(trainer.strategy.root_device), "metrics": _scalar_metrics(trainer.callback_metrics)}
    if trainer.interrupted:
        results["interrupted"] = True
    module.model.config.extra.update({"task": "dna-lm", "tokenizer": "genomamba.DNATokenizer",
                                      "train_seq_len": d.seq_len, "trained_steps": int(trainer.global_step)})
    out = module.model.save_pretrained(run_dir / "model")
    tok.save_pretrained(out)
    if cfg.test_after_fit and dm.test_ds is not None:
        test = trainer.test(module, datamodule=dm, verbose=not quiet)
        results["test"] = test[0] if test else {}
    results["model_dir"] = str(out)
    _write_json(run_dir / "results.json", results)
    if torch.cuda.is_available():
        results["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return results


def pretrain_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="genomamba pretrain", description="Pretrain a DNA language model (next base).")
    _common_args(ap)
    args = ap.parse_args(argv)
    try:
        cfg = _config_from_args(args, "pretrain")
        res = run_pretrain(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"genomamba pretrain: error: {e}", file=sys.stderr)
        return 2
    bpb = res.get("test", {}).get("test/bpb")
    print(f"done: step {res['global_step']}, model saved to {res['model_dir']}"
          + (f", held-out {bpb:.3f} bits/base" if bpb is not None else ""))
    return 0


# ----------------------------------------------------------------------------- classify
def run_classify(cfg: ClassifyConfig, resume: Optional[str] = None, quiet: bool = False) -> dict:
    """Fine-tune (or train) the species classifier; test on the held-out strains; save; results dict."""
    from genomamba.lit._pl import pl
    from genomamba.lit.classify import ClassifierModule
    from genomamba.lit.data import SpeciesDataModule
    from genomamba.tokenizers.dna import DNATokenizer

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = _resume_path(resume, run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False))
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    tok = DNATokenizer()
    d = cfg.data
    dm = SpeciesDataModule(d.manifest, d.length, d.batch_size, d.train_samples, d.val_per_label, d.test_per_label,
                           d.rc_prob, d.num_workers, cfg.trainer.seed, tokenizer=tok, train_length=d.train_length)
    dm.setup("fit")
    if cfg.init_from and not (Path(cfg.init_from) / "config.json").exists():
        raise ConfigError(f"init_from: {cfg.init_from} is not a saved model directory (no config.json)")
    model_cfg = {"vocab_size": tok.vocab_size, **cfg.model} if cfg.model else None
    module = ClassifierModule(dm.labels, model=model_cfg, init_from=cfg.init_from, pooling=cfg.head.pooling,
                              freeze_backbone=cfg.head.freeze_backbone, dropout=cfg.head.dropout,
                              optim=to_plain(cfg.optim), plot_dir=str(run_dir), tta_rc=cfg.head.tta_rc)
    title = f"{cfg.name or 'classify'}: L={d.length}, " + ("from " + cfg.init_from if cfg.init_from else "scratch")
    trainer = build_trainer(cfg.trainer, run_dir, [], title, ("train/loss", "train/acc"),
                            ("val/loss", "val/acc", "val/f1_macro"), has_val=dm.val_ds is not None, quiet=quiet)
    t0 = time.time()
    _fit(trainer, module, dm, ckpt_path)
    fit_s = time.time() - t0
    _final_checkpoint(trainer, run_dir)
    out = module.net.save_pretrained(run_dir / "model")
    tok.save_pretrained(out)
    results = {"kind": "classify", "name": cfg.name, "global_step": int(trainer.global_step),
               "fit_seconds": round(fit_s, 1), "length": d.length, "labels": dm.labels, "model_dir": str(out),
               "init_from": cfg.init_from, "head_from": module.head_from}
    if getattr(dm, "test_ds", None) is not None:
        trainer.test(module, datamodule=dm, verbose=not quiet)
        results["test"] = module.last_results.get("test", {})
        results["test"]["n_windows"] = len(dm.test_ds)
        if cfg.baselines:
            from genomamba.baselines import species_baselines

            results["baselines"] = species_baselines(dm.manifest, d.length, ks=cfg.baselines,
                                                     eval_windows=dm.test_ds)
    _write_json(run_dir / "results.json", results)
    return results


def evaluate_classifier(net, dataset, batch_size: int = 32, device=None) -> dict:
    """Accuracy, macro-F1, confusion matrix of a SequenceClassifier on (ids, mask, label) windows."""
    import torch
    from torch.utils.data import DataLoader
    from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_f1_score

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(device).eval()
    preds, ys, probs = [], [], []
    with torch.no_grad():
        for ids, mask, y in DataLoader(dataset, batch_size=batch_size):
            logits = net(ids.to(device), mask.to(device)).float()
            probs.append(logits.softmax(-1).cpu())
            preds.append(logits.argmax(-1).cpu())
            ys.append(y)
    p, y = torch.cat(preds), torch.cat(ys)
    n = len(net.labels)
    return {"acc": float((p == y).float().mean()), "f1_macro": float(multiclass_f1_score(p, y, n, average="macro")),
            "confusion": multiclass_confusion_matrix(p, y, n).tolist(), "labels": list(net.labels),
            "n_windows": int(len(y)), "probs": torch.cat(probs)}


def _classify_fit(argv) -> int:
    ap = argparse.ArgumentParser(prog="genomamba classify fit", description="Fine-tune the species classifier.")
    _common_args(ap)
    ap.add_argument("--init-from", help="pretrained model dir, or a classifier dir whose head is kept when the "
                                        "labels match, e.g. 1 kb -> 16 kb windows (overrides init_from)")
    args = ap.parse_args(argv)
    if args.init_from:
        args.overrides.append(f"init_from={args.init_from}")
    cfg = _config_from_args(args, "classify")
    res = run_classify(cfg, resume=args.resume)
    t = res.get("test", {})
    line = f"done: step {res['global_step']}, model saved to {res['model_dir']}"
    if t:
        line += f"; held-out accuracy {t['acc']:.3f}, macro-F1 {t['f1_macro']:.3f} on {t['n_windows']} windows"
    for k, v in res.get("baselines", {}).items():
        if k.startswith("nb") or k == "gc":
            line += f"; {k} {v:.3f}"
    print(line)
    return 0


def _classify_evaluate(argv) -> int:
    import numpy as np

    from genomamba.data.species import SpeciesEvalWindows, SpeciesManifest
    from genomamba.lit.classify import save_confusion_png
    from genomamba.lit.data import _resolve_species_manifest
    from genomamba.models.heads import SequenceClassifier

    ap = argparse.ArgumentParser(prog="genomamba classify evaluate",
                                 description="Score a saved classifier on a manifest split (held-out strains).")
    ap.add_argument("--model", required=True, help="classifier dir (classify fit's RUN_DIR/model)")
    ap.add_argument("--manifest", default="assets", help="manifest path, 'assets' or 'fetch:bacteria'")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--per-label", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--baselines", default="4", help="comma-separated k of k-mer NB baselines ('' for none)")
    ap.add_argument("--out", help="write JSON (and a confusion PNG beside it)")
    args = ap.parse_args(argv)
    if not (Path(args.model) / "head.json").exists():
        raise ConfigError(f"--model {args.model}: not a classifier directory (no head.json)")
    net = SequenceClassifier.from_pretrained(args.model)
    man = SpeciesManifest.from_file(_resolve_species_manifest(args.manifest))
    if list(man.labels) != list(net.labels):
        raise ConfigError(f"--manifest labels {man.labels} differ from the model's {net.labels}")
    ds = SpeciesEvalWindows(man, args.split, args.length, per_label=args.per_label, seed=args.seed,
                            return_mask=True)
    res = evaluate_classifier(net, ds, args.batch_size)
    res.pop("probs")
    ks = [int(k) for k in args.baselines.split(",") if k.strip()]
    if ks:
        from genomamba.baselines import species_baselines

        res["baselines"] = species_baselines(man, args.length, ks=ks, eval_windows=ds)
    print(f"{args.split}: accuracy {res['acc']:.4f}, macro-F1 {res['f1_macro']:.4f} "
          f"({res['n_windows']} windows of {args.length} bp)")
    for k, v in res.get("baselines", {}).items():
        if k == "gc" or k.startswith("nb"):
            print(f"  baseline {k}: {v:.4f}")
    if args.out:
        _write_json(Path(args.out), res)
        save_confusion_png(np.array(res["confusion"]), net.labels,
                           Path(args.out).with_suffix(".png"), f"{args.split}: acc {res['acc']:.3f}")
    return 0


def _classify_predict(argv) -> int:
    import numpy as np
    import torch

    from genomamba.data.fasta import read_records
    from genomamba.models.heads import SequenceClassifier
    from genomamba.tokenizers.dna import DNATokenizer

    ap = argparse.ArgumentParser(prog="genomamba classify predict",
                                 description="Label each FASTA record (window probabilities averaged).")
    ap.add_argument("fasta", nargs="+")
    ap.add_argument("--model", required=True)
    ap.add_argument("--length", type=int, default=1024, help="window length")
    ap.add_argument("--max-windows", type=int, default=64, help="per record (evenly spaced)")
    ap.add_argument("--out", help="TSV path (default: stdout)")
    args = ap.parse_args(argv)
    if not (Path(args.model) / "head.json").exists():
        raise ConfigError(f"--model {args.model}: not a classifier directory (no head.json)")
    net = SequenceClassifier.from_pretrained(args.model)
    tok = DNATokenizer.from_pretrained(args.model) if (Path(args.model) / "tokenizer.json").exists() \
        else DNATokenizer()
    rows = ["record\tlength\twindows\tlabel\t" + "\t".join(f"p_{lab}" for lab in net.labels)]
    for path in args.fasta:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such FASTA file")
        for rec in read_records(path):
            ids = tok.encode(rec.sequence).astype(np.int64)
            L = min(args.length, len(ids))
            if L == 0:
                continue
            starts = np.unique(np.linspace(0, len(ids) - L, num=min(args.max_windows, max(1, len(ids) // L)))
                               .astype(int))
            x = torch.from_numpy(np.stack([ids[s:s + L] for s in starts]))
            with torch.no_grad():
                p = net(x).float().softmax(-1).mean(0)
            rows.append(f"{rec.name}\t{len(ids)}\t{len(starts)}\t{net.labels[int(p.argmax())]}\t"
                        + "\t".join(f"{float(v):.4f}" for v in p))
    text = "\n".join(rows) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {len(rows) - 1} predictions to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


CLASSIFY_SUB = {"fit": _classify_fit, "evaluate": _classify_evaluate, "predict": _classify_predict}


def classify_main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in CLASSIFY_SUB:
        msg = "usage: genomamba classify {fit,evaluate,predict} [options]  (each takes --help)"
        if argv and argv[0] not in ("-h", "--help"):
            print(f"genomamba classify: unknown subcommand {argv[0]!r}\n{msg}", file=sys.stderr)
            return 2
        print(msg)
        return 0
    try:
        return CLASSIFY_SUB[argv[0]](argv[1:])
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"genomamba classify {argv[0]}: error: {e}", file=sys.stderr)
        return 2
