"""The Lightning Trainer every run uses: precision, callbacks, loggers, checkpoint IO, resume.

A run directory holds everything a run writes::

    run_dir/config.yaml          the resolved config (``--resume`` without --config reads it)
    run_dir/checkpoints/         last.ckpt + the latest step checkpoint (atomic writes)
    run_dir/logs/version_N/      CSV metrics (one version per launch); run_dir/tb/: TensorBoard
    run_dir/training_curves.png  whole-run curves (history kept in the checkpoint across resumes)
    run_dir/model/               save_pretrained model (+ tokenizer.json), written when fit ends
    run_dir/results.json         final metrics
"""

from __future__ import annotations

import datetime
import inspect
import pickle
import sys
from pathlib import Path
from typing import Optional

import torch
import yaml

from genomamba.files import atomic_path, write_text
from genomamba.lit._pl import pl
from genomamba.lit.callbacks import EpochSeed, TimeBudget, TrainingCurves
from genomamba.lit.config import ConfigError, TrainerConfig, to_plain


class AtomicCheckpointIO(pl.plugins.TorchCheckpointIO):
    """Checkpoints through ``genomamba.files.atomic_path``: a kill -9 mid-save never leaves a torn file.

    Lightning's own save stages the file in the system temp folder and moves it into place, which
    is a copy (not a rename) whenever that folder is on another file system than the run directory.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint: storage_options is not supported")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def prepare_run_dir(cfg, resume: Optional[str]) -> tuple[Path, Optional[str]]:
    """Create ``cfg.run_dir``, find the checkpoint ``resume`` asks for, write the resolved config and
    seed everything; returns (run_dir, checkpoint path or None)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resume_path(resume, run_dir)
    write_text(run_dir / "config.yaml", yaml.safe_dump(to_plain(cfg), sort_keys=False))
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    return run_dir, ckpt_path


def resolve_precision(tc: TrainerConfig) -> str:
    if tc.precision != "auto":
        return tc.precision
    gpu = torch.cuda.is_available() and tc.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if gpu else "32-true"


def resolve_strategy(tc: TrainerConfig):
    """``trainer.strategy`` as Lightning takes it. ``auto`` (and ``ddp``) with more than one process is
    DDP over the whole world, gloo on CPU and NCCL on GPU, its gradients averaged over every rank
    (context-parallel ranks scale their loss to match); buffers are constants here, so DDP never
    broadcasts them (an evaluation pass then holds no collective beyond the context-parallel group's)."""
    if tc.strategy == "ddp" or (tc.strategy == "auto" and (_several_devices(tc) or tc.num_nodes > 1
                                                           or tc.context_parallel > 1)):
        return pl.strategies.DDPStrategy(**_no_buffer_sync())
    return tc.strategy


def _no_buffer_sync() -> dict:
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _several_devices(tc: TrainerConfig) -> bool:
    d = tc.devices
    if isinstance(d, str) and d.strip().lstrip("-").isdigit():
        d = int(d)
    if isinstance(d, int) and not isinstance(d, bool):
        return d != 1
    if isinstance(d, (list, tuple)):
        return len(d) > 1
    if isinstance(d, str) and "," in d:
        return len([x for x in d.split(",") if x.strip()]) > 1
    gpu = torch.cuda.is_available() and tc.accelerator in ("auto", "gpu", "cuda")
    return d == "auto" and gpu and torch.cuda.device_count() > 1


def build_trainer(tc: TrainerConfig, run_dir: Path, callbacks: list, monitor_title: str, train_keys, val_keys,
                  has_val: bool = True, quiet: bool = False):
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    # Denormal floats (tiny activations/gradients early in training) make CPU kernels (the depthwise
    # conv1d backward above all) many times slower; flushing them to zero changes nothing measurable.
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
        import tensorboard  # noqa: F401  (optional)

        loggers.append(pl.loggers.TensorBoardLogger(str(run_dir), name="tb", default_hp_metric=False))
    except ImportError:
        print("genomamba: tensorboard not installed; logging CSV only", file=sys.stderr)
    kw = {}
    if tc.max_minutes:
        kw["max_time"] = datetime.timedelta(minutes=float(tc.max_minutes))
    return pl.Trainer(
        max_steps=tc.max_steps, accelerator=tc.accelerator, devices=tc.devices, precision=resolve_precision(tc),
        num_nodes=tc.num_nodes, strategy=resolve_strategy(tc),
        gradient_clip_val=tc.grad_clip or None, accumulate_grad_batches=tc.accumulate,
        val_check_interval=tc.val_every if has_val else None, check_val_every_n_epoch=None if has_val else 1,
        limit_val_batches=tc.limit_val_batches if has_val else 0, num_sanity_val_steps=0,
        log_every_n_steps=tc.log_every, callbacks=cbs, logger=loggers, default_root_dir=str(run_dir),
        enable_progress_bar=tc.progress, plugins=[AtomicCheckpointIO()], max_epochs=-1,
        enable_model_summary=not quiet, **kw,
    )


def final_checkpoint(trainer, run_dir: Path) -> None:
    """last.ckpt at the step fit ended on, so ``--resume`` with a larger max_steps continues from there."""
    if not trainer.interrupted:
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def resume_path(arg, run_dir: Path) -> Optional[str]:
    """``--resume`` (``last`` or a checkpoint path) -> the checkpoint to resume from, checked to exist."""
    if arg is None:
        return None
    p = Path(arg) if arg != "last" else run_dir / "checkpoints" / "last.ckpt"
    if not p.exists():
        raise ConfigError(f"--resume: checkpoint {p} does not exist (nothing to resume in {run_dir})")
    return str(p)


def fit(trainer, module, dm, ckpt_path: Optional[str]) -> None:
    """trainer.fit, resuming (if asked) with ``weights_only=True``: a checkpoint is read as tensors and
    plain data only, never as pickled code, and one that holds anything else is refused by name."""
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except pickle.UnpicklingError as exc:
        if ckpt_path is None:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--resume: refused to load {ckpt_path}: it holds pickled objects beyond tensors and "
                          f"plain data, and checkpoints are never unpickled as code ({first[:300]})") from None
