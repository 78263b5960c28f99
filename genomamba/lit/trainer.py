"""The Lightning Trainer every run uses: precision, callbacks, loggers, checkpoint IO, resume.

A run directory holds everything a run writes::

    run_dir/config.yaml          the resolved config (``--resume`` without --config reads it)
    run_dir/checkpoints/         last.ckpt + the latest step checkpoint (atomic writes)
    run_dir/logs/version_N/      CSV metrics (one version per launch); run_dir/tb/: TensorBoard
    run_dir/training_curves.png  whole-run curves (history kept in the checkpoint across resumes)
    run_dir/model/               save_pretrained model (+ tokenizer.json), written when fit ends
    run_dir/results.json         final metrics
    run_dir/run.lock             the pid of the run working in it (removed when it ends)

A run directory is owned: while a run is live its ``run.lock`` is held, and a second run into it
fails at once, naming the holder's pid (the lock of a killed run is taken over). A new run into a
directory that holds an earlier run's checkpoints, model or results refuses to start unless told
to continue it (``--resume``) or to replace it (``--force``: the earlier run's files are removed).
``--resume`` checks the checkpoint against the config (task, model shape) before anything in the
directory changes; ``config.yaml`` is rewritten only after that.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import functools
import inspect
import os
import pickle
import shutil
import signal
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Optional

import torch
import yaml

from genomamba.config import MambaConfig
from genomamba.errors import OutputExistsError, StoppedBySignal
from genomamba.files import RunDirLock, atomic_path, write_text
from genomamba.lit._pl import pl
from genomamba.lit.callbacks import (
    AveragedWeights,
    BestWeights,
    EpochSeed,
    RunStart,
    ScheduleEnd,
    TimeBudget,
    TrainingCurves,
    TrainThroughput,
    WholeStepsOnSigterm,
)
from genomamba.lit.config import ConfigError, TrainerConfig, adapter_of, to_plain
from genomamba.lit.optim import optim_settings
from genomamba.models.io import refusal
from genomamba.tokenizers.dna import DNATokenizer


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


def prepare_run_dir(cfg, resume: Optional[str], force: bool = False) -> tuple[Path, Optional[str]]:
    """Own ``cfg.run_dir`` (lock it; refuse an earlier run's directory unless ``resume`` or ``force``),
    find and validate the checkpoint ``resume`` asks for, then write the resolved config and seed
    everything; returns (run_dir, checkpoint path or None). Nothing in the directory changes before
    those checks pass."""
    run_dir = Path(cfg.run_dir)
    ckpt_path = resume_path(resume, run_dir)
    if ckpt_path is not None:
        check_resume(cfg, ckpt_path)
    primary = _primary_process()
    if primary:
        _own(run_dir)
    # a checkpoint from elsewhere starts this directory's run from it: like a new run, it must not mix
    # with an earlier run left here
    foreign = ckpt_path is not None and not _inside(Path(ckpt_path), run_dir)
    try:
        if primary and (resume is None or foreign):
            earlier = earlier_run(run_dir)
            if earlier and resume is not None:
                raise OutputExistsError(f"{run_dir}: holds an earlier run ({', '.join(earlier)}), and --resume "
                                        f"{ckpt_path} is another directory's checkpoint: the two runs would mix "
                                        "here; resume it with its own --run-dir, or give an empty one")
            if earlier and not force:
                resumable = not set(earlier) <= {"logs/", "tb/"}  # a run stopped before its first checkpoint
                raise OutputExistsError(
                    f"{run_dir}: holds an earlier run ({', '.join(earlier)}); "
                    + ("continue it with --resume, replace it with --force, " if resumable else
                       "it stopped before its first checkpoint, so replace it with --force ")
                    + "or choose another --run-dir")
            if earlier:
                clear_run(run_dir)
        if primary:
            write_text(run_dir / "config.yaml", yaml.safe_dump(to_plain(cfg), sort_keys=False))
    except BaseException:
        release_run_dir(run_dir)
        raise
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    return run_dir, ckpt_path


# ----------------------------------------------------------------------------- run-directory ownership
RUN_OUTPUTS = ("checkpoints", "model", "results.json", "training_curves.png", "logs", "tb")
_HELD: dict[str, RunDirLock] = {}


def _primary_process() -> bool:
    """False in the extra processes of a multi-process run (rank > 0): rank 0 owns the directory."""
    return all(os.environ.get(k, "0") in ("", "0") for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _own(run_dir: Path) -> None:
    key = os.path.realpath(run_dir)
    if key in _HELD:
        return
    lock = RunDirLock(run_dir)
    stale = lock.acquire()
    if stale:
        print(f"genomamba: {run_dir}: took over the lock of pid {stale}, which is no longer running",
              file=sys.stderr)
    _HELD[key] = lock


def release_run_dir(run_dir) -> None:
    """Give up this process's ownership of ``run_dir`` (no-op if it holds none)."""
    lock = _HELD.pop(os.path.realpath(run_dir), None)
    if lock is not None:
        lock.release()


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        _HELD.pop(key).release()


def owns_run_dir(fn):
    """Decorator for a function that runs in a run directory (``prepare_run_dir``): the ownership it
    took is given up when it returns or raises."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = set(_HELD)
        try:
            return fn(*args, **kwargs)
        finally:
            for key in set(_HELD) - before:
                _HELD.pop(key).release()

    return wrapper


def earlier_run(run_dir: Path) -> list[str]:
    """What an earlier run left in ``run_dir`` that a new run would replace (checkpoints, model, results,
    the logs of a run stopped before its first checkpoint)."""
    found = []
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and any(ckpts.glob("*.ckpt")):
        found.append("checkpoints/")
    if (run_dir / "model").exists():
        found.append("model/")
    if (run_dir / "results.json").exists():
        found.append("results.json")
    for logs in ("logs", "tb"):
        if (run_dir / logs).is_dir() and any((run_dir / logs).iterdir()):
            found.append(f"{logs}/")
    return found


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies under ``folder`` (both resolved: links and '..' count as where they lead)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def clear_run(run_dir: Path) -> None:
    """Remove what a run writes in ``run_dir`` (``RUN_OUTPUTS``), nothing else: ``--force``."""
    for name in RUN_OUTPUTS:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


# The model fields that shape the weights: a checkpoint must agree on them with the config it resumes.
_SHAPE_FIELDS = ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "dt_rank",
                 "pad_vocab_size_multiple", "tie_embeddings", "bias", "conv_bias", "rms_norm")


def _expected_model(cfg) -> Optional[dict]:
    """The MambaConfig (as a dict) a run of ``cfg`` builds, or None when it cannot be known yet."""
    if cfg.model is not None:
        try:
            vocab = adapter_of(cfg).vocab_size  # the adapter's vocabulary (DNA, text bytes, audio levels)
        except ConfigError:
            vocab = DNATokenizer().vocab_size
        try:
            return MambaConfig.from_dict({"vocab_size": vocab, **cfg.model.to_dict()}).to_dict()
        except (TypeError, ValueError):
            return None
    init = getattr(cfg, "init_from", None)
    if init and (Path(init) / "config.json").exists():
        try:
            return MambaConfig.from_file(Path(init) / "config.json").to_dict()
        except (OSError, ValueError):
            return None
    return None


def check_resume(cfg, ckpt_path: str) -> None:
    """Refuse (``ConfigError``, one line) a checkpoint that ``cfg`` cannot continue: not a training
    checkpoint, another task's (a pretraining checkpoint for ``classify fit``), or another model shape."""
    if not zipfile.is_zipfile(ckpt_path):  # torch's own error would be about its mmap option
        raise ConfigError(f"--resume: {ckpt_path}: not a checkpoint (training writes them as zip archives "
                          "under RUN_DIR/checkpoints/)")
    try:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise _refused(ckpt_path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--resume: {ckpt_path}: not a readable checkpoint ({first[:300]})") from None
    if not isinstance(ck, dict) or "state_dict" not in ck:
        raise ConfigError(f"--resume: {ckpt_path}: not a genomamba training checkpoint (no state_dict)")
    step = ck.get("global_step")
    if isinstance(step, int) and step >= cfg.trainer.max_steps and _primary_process():
        print(f"genomamba: warning: --resume: {ckpt_path} is at step {step} and trainer.max_steps is "
              f"{cfg.trainer.max_steps}: nothing is left to train (raise it, e.g. --max-steps, to go on); "
              "the run only validates and tests", file=sys.stderr)
    _warn_time_used(cfg, ckpt_path, ck.get("callbacks"))
    hp = ck.get("hyper_parameters") or {}
    is_classifier = "labels" in hp
    if cfg.kind == "classify" and not is_classifier:
        raise ConfigError(f"--resume: {ckpt_path} is a pretraining checkpoint, not a classifier's; to fine-tune "
                          "from a pretrained model give init_from (its saved model directory), not --resume")
    if cfg.kind == "pretrain" and is_classifier:
        raise ConfigError(f"--resume: {ckpt_path} is a classifier checkpoint; resume it with "
                          "`genomamba classify fit --resume`")
    _warn_optim_changed(cfg, ckpt_path, hp.get("optim"))
    _check_warmup_length(cfg, ckpt_path, ck.get("callbacks"))
    want, have = _expected_model(cfg), hp.get("model")
    if want is None or not isinstance(have, dict):
        return
    try:
        have = MambaConfig.from_dict(dict(have)).to_dict()
    except (TypeError, ValueError):
        return
    diff = [f"model.{k}: checkpoint {have[k]!r}, config {want[k]!r}" for k in _SHAPE_FIELDS if have[k] != want[k]]
    if diff:
        raise ConfigError(f"--resume: {ckpt_path} does not match the config ({'; '.join(diff)}); resume with the "
                          "model settings the run started with, or start a new run")


def _refused(ckpt_path: str, exc: Exception) -> ConfigError:
    """The error for a --resume checkpoint that torch's restricted unpickler refused, naming what it refused."""
    what = refusal(exc) or type(exc).__name__
    return ConfigError(f"--resume: refused to load {ckpt_path}: it holds pickled objects beyond tensors and "
                       f"plain data, and checkpoints are never unpickled as code ({what[:300]})")


def _warn_time_used(cfg, ckpt_path: str, callbacks) -> None:
    """trainer.max_minutes covers the whole run, resumes included (Lightning's Timer keeps its clock in
    the checkpoint): a resume whose limit is already spent trains nothing, which a warning says."""
    limit = cfg.trainer.max_minutes
    timer = next((v for k, v in callbacks.items() if str(k).startswith("Timer")), None) \
        if isinstance(callbacks, dict) else None
    used = timer.get("time_elapsed", {}).get("train") if isinstance(timer, dict) else None
    if limit and isinstance(used, (int, float)) and used >= 60 * limit and _primary_process():
        print(f"genomamba: warning: --resume: {ckpt_path} has trained {used / 60:.2f} minutes and "
              f"trainer.max_minutes is {limit:g}, which covers the whole run (resumes included): nothing is left "
              "to train (raise it, e.g. --set trainer.max_minutes=..., to go on)", file=sys.stderr)


def _check_warmup_length(cfg, ckpt_path: str, callbacks) -> None:
    """A sequence-length warmup continues with the checkpoint's schedule, whose last stage reads the
    data's windows whole: a data.seq_len changed since would fail at the first step (and a config.yaml
    already rewritten would fail every later ``--resume`` alike), so it is refused here, by name."""
    if cfg.kind != "pretrain" or cfg.seqlen_warmup is None or not isinstance(callbacks, dict):
        return
    saved = next((v for k, v in callbacks.items() if str(k).startswith("SeqLenWarmup")), None)
    final = saved.get("final_len") if isinstance(saved, dict) else None
    if isinstance(final, int) and final != cfg.data.seq_len:
        raise ConfigError(f"--resume: {ckpt_path}: its sequence-length warmup (which a resumed run continues) "
                          f"ends at {final} tokens, but data.seq_len is {cfg.data.seq_len}; resume with "
                          f"data.seq_len={final}, or start a new run")


def _warn_optim_changed(cfg, ckpt_path: str, saved) -> None:
    """The optimizer's settings and its LR schedule come back from the checkpoint: an ``optim`` value
    changed since (``--set optim.lr=...`` on ``--resume``) is not used, which a warning says."""
    if saved is not None and not isinstance(saved, dict):
        return
    try:
        have = optim_settings(saved)
        want = optim_settings({k: v for k, v in to_plain(cfg.optim).items() if k in have})
    except (TypeError, ValueError):
        return
    same = lambda a, b: list(a) == list(b) if isinstance(a, (list, tuple)) else a == b  # noqa: E731
    diff = [f"optim.{k}: checkpoint {have[k]!r}, config {want[k]!r}" for k in sorted(have)
            if k in want and not same(have[k], want[k])]
    if diff and _primary_process():
        print(f"genomamba: warning: --resume: {ckpt_path}: the optimizer and its LR schedule continue from the "
              f"checkpoint, so these changed settings are not used: {'; '.join(diff)}", file=sys.stderr)


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


class _Checkpoints(pl.callbacks.ModelCheckpoint):
    """Lightning's checkpointing, also saving the state when SIGTERM stops a run (Lightning stops after
    the step in progress): a preempted job continues with ``--resume`` from that step. Other errors
    save nothing, so a failed step never replaces the last good checkpoint; nor does a SIGTERM after
    fit (during the final validation or the test), where last.ckpt already holds the final step and
    the module may hold the kept weights instead of the last ones.

    A SIGTERM in the middle of a validation during fit stops it after the batch in progress; the
    checkpoint then records that validation as not yet begun, so ``--resume`` runs it again in full
    (and ``keep: best`` compares that step) before training on."""

    _stopped_validating = False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, pl.utilities.exceptions.SIGTERMException) and trainer.state.fn == "fit":
            self._stopped_validating = bool(trainer.validating)
            try:
                super().on_exception(trainer, pl_module, exception)
            finally:
                self._stopped_validating = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._stopped_validating:
            # Lightning restarts a validation it finds one batch in (fetched, not yet run) and would
            # skip one it finds further on: rewind its progress to the first batch, which it reruns
            # from the start of the validation set
            fresh = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
            loops = checkpoint.get("loops", {}).get("fit_loop", {})
            if "epoch_loop.val_loop.batch_progress" in loops:
                progress = loops["epoch_loop.val_loop.batch_progress"]
                progress.update(total=dict(fresh), current=dict(fresh), is_last_batch=False)


def build_trainer(tc: TrainerConfig, run_dir: Path, callbacks: list, monitor_title: str, train_keys, val_keys,
                  has_val: bool = True, quiet: bool = False):
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    # Denormal floats (tiny activations/gradients early in training) make CPU kernels (the depthwise
    # conv1d backward above all) many times slower; flushing them to zero changes nothing measurable.
    torch.set_flush_denormal(True)
    ckpt = _Checkpoints(dirpath=run_dir / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=tc.ckpt_every, save_last=True, save_top_k=1,
                        save_on_train_epoch_end=False, save_on_exception=True)
    cbs = [ckpt, EpochSeed(), pl.callbacks.LearningRateMonitor(logging_interval="step"),
           TrainingCurves(run_dir / "training_curves.png", train_keys, val_keys, every=max(1, tc.log_every),
                          title=monitor_title)] + callbacks
    cbs.append(TimeBudget(tc.budget_minutes) if tc.budget_minutes else ScheduleEnd())
    cbs += [TrainThroughput(), RunStart()]
    if tc.accumulate > 1:
        cbs.append(WholeStepsOnSigterm())
    if tc.ema_decay is not None:  # Lightning's averaging: validation and the end of fit use the average
        cbs.append(AveragedWeights(tc.ema_decay, tc.ema_start, tc.ema_warmup))
    elif tc.keep == "best":
        best = BestWeights("val/loss")
        if not has_val or tc.limit_val_batches == 0:  # nothing to choose by: said now, not after the run
            best.disabled = "no validation split" if not has_val else "trainer.limit_val_batches is 0"
            if _primary_process():
                print(f"genomamba: warning: trainer.keep=best compares validation losses, but this run validates "
                      f"nothing ({best.disabled}): it keeps its last weights (trainer.keep: last says so)",
                      file=sys.stderr)
        cbs.append(best)
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
        # val_every is in optimizer steps; Lightning's interval counts micro-batches
        val_check_interval=tc.val_every * tc.accumulate if has_val else None,
        check_val_every_n_epoch=None if has_val else 1,
        limit_val_batches=tc.limit_val_batches if has_val else 0, num_sanity_val_steps=0,
        log_every_n_steps=tc.log_every, callbacks=cbs, logger=loggers, default_root_dir=str(run_dir),
        enable_progress_bar=tc.progress, plugins=[AtomicCheckpointIO()], max_epochs=-1,
        enable_model_summary=not quiet, **kw,
    )


def throughput(trainer) -> dict:
    """The fit's measured training tokens/s and peak memory per process (``TrainThroughput``), for
    results.json; empty if it did not run."""
    return next((dict(c.summary) for c in trainer.callbacks if isinstance(c, TrainThroughput)), {})


def final_checkpoint(trainer, run_dir: Path) -> None:
    """last.ckpt at the step fit ended on, so ``--resume`` with a larger max_steps continues from there."""
    if not trainer.interrupted:
        # the full state (optimizer, loops, callbacks): resuming needs it. Lightning's own checkpoints
        # store the logger step before the step's increment and add it back on restore; this one is
        # written after fit, so it stores one less, else a resumed run's logs would skip a step
        # ... unless this fit trained no step (a resume with nothing left to train): its counter is
        # the one restored, already stored one less, and a second subtraction would make every later
        # resume log its steps over earlier ones
        loop = trainer.fit_loop.epoch_loop
        counted = getattr(loop, "_batches_that_stepped", None)
        start = next((c.step for c in trainer.callbacks if isinstance(c, RunStart)), None)
        shift = isinstance(counted, int) and counted > 0 and start is not None and trainer.global_step > start
        if shift:
            loop._batches_that_stepped = counted - 1
        try:
            trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
        finally:
            if shift:
                loop._batches_that_stepped = counted


def final_validation(trainer, module, dm, run_dir: Path) -> None:
    """After fit and :func:`final_checkpoint`: with ``keep: best``, validate a final step that fit did
    not, so the last weights compete with the best ones on the same validation set, then write
    last.ckpt again with that score in it (a run continued with ``--resume`` keeps the best of the
    whole run). A SIGTERM during the validation leaves the first last.ckpt (a resume validates)."""
    if any(isinstance(cb, AveragedWeights) for cb in trainer.callbacks):
        return  # the run ends with the average, whatever the scores
    best = next((cb for cb in trainer.callbacks if isinstance(cb, BestWeights)), None)
    if best is not None and not best.disabled and not trainer.interrupted \
            and best.last_step != int(trainer.global_step):
        with after_fit(trainer, "the final validation"):
            trainer.validate(module, datamodule=dm, verbose=False)
        final_checkpoint(trainer, run_dir)


def keep_weights(trainer, module) -> dict:
    """After fit, last.ckpt and :func:`final_validation` (so ``--resume`` continues from the final
    step): load the weights ``trainer.keep`` asks for into ``module``; returns what was kept, for
    results.json."""
    ema = next((cb for cb in trainer.callbacks if isinstance(cb, AveragedWeights)), None)
    if ema is not None:
        return ema.finish(module)
    best = next((cb for cb in trainer.callbacks if isinstance(cb, BestWeights)), None)
    if best is None:
        return {"weights": "last"}
    return best.restore(module)


def resume_path(arg, run_dir: Path) -> Optional[str]:
    """``--resume`` (``last`` or a checkpoint path) -> the checkpoint to resume from, checked to exist."""
    if arg is None:
        return None
    p = Path(arg) if arg != "last" else run_dir / "checkpoints" / "last.ckpt"
    if not p.exists():
        raise ConfigError(f"--resume: checkpoint {p} does not exist (nothing to resume in {run_dir})")
    return str(p)


@contextlib.contextmanager
def after_fit(trainer, what: str):
    """Lightning turns a SIGTERM during its validate or test calls into an exit with status 0, so a
    scheduler would count the run as finished: around the work after fit (the final validation, the
    test) it becomes :class:`StoppedBySignal` (status 143), saying that ``--resume`` does the rest."""
    try:
        yield
    except pl.utilities.exceptions.SIGTERMException:
        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        raise StoppedBySignal(f"SIGTERM during {what} after step {trainer.global_step}: the trained state is saved "
                              f"in {last}; --resume runs what was left and writes results.json",
                              signal.SIGTERM) from None


def fit(trainer, module, dm, ckpt_path: Optional[str]) -> None:
    """trainer.fit, resuming (if asked) with ``weights_only=True``: a checkpoint is read as tensors and
    plain data only, never as pickled code, and one that holds anything else is refused by name."""
    try:
        with warnings.catch_warnings():
            # Training windows are drawn from the global step (EpochSeed), not from a position in an
            # epoch, so a run resumed mid-epoch has nothing to restore that Lightning's warning means.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except pl.utilities.exceptions.SIGTERMException:
        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        raise StoppedBySignal(f"SIGTERM at step {trainer.global_step}: the run's state is saved in {last}; "
                              "continue it with --resume", signal.SIGTERM) from None
    except pickle.UnpicklingError as exc:
        if ckpt_path is None:
            raise
        raise _refused(ckpt_path, exc) from None
