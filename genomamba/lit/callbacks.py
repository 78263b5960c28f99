"""Training callbacks: the Mamba paper's sequence-length warmup, a wall-clock step budget,
training-curve plots, per-epoch reseeding of the random training windows, and the measured
training throughput and peak memory.

The first three keep their state in the Lightning checkpoint (``state_dict``/``load_state_dict``), so a
resumed run continues the same schedule and the final plot shows the whole run, not only the part
after the restart.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from genomamba.lit._pl import pl

try:  # pragma: no cover
    from pytorch_lightning.utilities import rank_zero_info
except ImportError:  # pragma: no cover
    from lightning.pytorch.utilities import rank_zero_info


def _is_pow2_multiple(big: int, small: int) -> bool:
    return big % small == 0 and (big // small) & (big // small - 1) == 0


class EpochSeed(pl.Callback):
    """Seed the random windows of each epoch by the global step: a resumed run draws fresh windows
    rather than replaying the start of the interrupted epoch.

    Lightning does not call ``on_train_epoch_start`` when it resumes in the middle of an epoch, so the
    stream is also seeded at ``on_train_start`` (after the checkpoint is restored, before the first
    batch is drawn)."""

    @staticmethod
    def _seed(trainer) -> None:
        ds = getattr(trainer.train_dataloader, "dataset", None)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(int(trainer.global_step))

    def on_train_start(self, trainer, pl_module):
        self._seed(trainer)

    def on_train_epoch_start(self, trainer, pl_module):
        self._seed(trainer)


class SeqLenWarmup(pl.Callback):
    """Sequence-length warmup (Mamba paper, sec. 4.3 / app. E.2): start at ``start_len`` (2^10),
    double every ``stage_steps`` optimizer steps until the data's window length ``final_len``.

    Tokens per step stay constant: the module cuts each ``(b, L)`` batch into ``(b * L / l, l)``
    pieces while ``l < L``, i.e. the batch halves each time the length doubles. The length is a pure
    function of ``trainer.global_step`` and of the schedule, and the schedule is saved in the
    checkpoint: a resumed run picks up at the same stage (the checkpoint's schedule wins over a
    changed config, with a warning).
    """

    def __init__(self, final_len: int, start_len: int = 1024, stage_steps: int = 1000):
        if start_len < 1 or final_len < 1 or stage_steps < 1:
            raise ValueError(f"SeqLenWarmup: start_len, final_len and stage_steps must be positive, got "
                             f"{start_len}, {final_len}, {stage_steps}")
        if not _is_pow2_multiple(final_len, start_len):
            raise ValueError(f"SeqLenWarmup: final_len {final_len} must be start_len {start_len} times a "
                             f"power of two (lengths double each stage)")
        self.start_len, self.final_len, self.stage_steps = int(start_len), int(final_len), int(stage_steps)

    @property
    def num_stages(self) -> int:
        return int(math.log2(self.final_len // self.start_len)) + 1

    @property
    def warmup_steps(self) -> int:
        """Steps until the final length is reached."""
        return (self.num_stages - 1) * self.stage_steps

    def length_at(self, step: int) -> int:
        stage = min(step // self.stage_steps, self.num_stages - 1)
        return self.start_len * (2**stage)

    def schedule(self, max_steps: int) -> list[tuple[int, int]]:
        """[(first step, length)] of each stage that starts before ``max_steps``."""
        return [(s * self.stage_steps, self.start_len * 2**s) for s in range(self.num_stages)
                if s * self.stage_steps < max(max_steps, 1)]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        L = int(batch[0].shape[1])
        if L != self.final_len:
            raise ValueError(f"SeqLenWarmup: data windows are {L} long but the schedule ends at {self.final_len}; "
                             "set the warmup's final length to the data's window length")
        pl_module.train_seq_len = self.length_at(trainer.global_step)

    def on_train_end(self, trainer, pl_module):
        pl_module.train_seq_len = None

    def state_dict(self) -> dict:
        return {"start_len": self.start_len, "final_len": self.final_len, "stage_steps": self.stage_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = (state_dict["start_len"], state_dict["final_len"], state_dict["stage_steps"])
        if saved != (self.start_len, self.final_len, self.stage_steps):
            warnings.warn(f"SeqLenWarmup: the checkpoint's schedule {saved} differs from the configured "
                          f"{(self.start_len, self.final_len, self.stage_steps)}; continuing the checkpoint's",
                          stacklevel=2)
        self.start_len, self.final_len, self.stage_steps = (int(x) for x in saved)


class TimeBudget(pl.Callback):
    """Plan the step count to fit a wall-clock budget, so the LR schedule ends when time does.

    After ``probe`` optimizer steps (past ``skip`` warm-up steps: compilation, autotuning) it
    measures seconds per step and lowers ``max_steps`` to what fits in ``minutes`` (x ``safety``,
    which leaves room for validation and saving), then re-targets the cosine schedule's end. It never
    raises ``max_steps``. A resumed run keeps the planned count (it is in the checkpoint), unless
    ``max_steps`` was changed since the plan (``--resume --max-steps N``): then it trains to N.
    """

    def __init__(self, minutes: float, skip: int = 5, probe: int = 20, safety: float = 0.85):
        self.minutes, self.skip, self.probe, self.safety = float(minutes), int(skip), int(probe), float(safety)
        self.planned: Optional[int] = None
        self._planned_under: Optional[int] = None  # trainer.max_steps when the plan was made
        self._retarget = False
        self._t0 = self._t_skip = None
        self._start = 0  # the step this launch started training from (a resume's, after its restore)
        self._before = 0.0  # seconds trained by earlier launches of the run (from the checkpoint)

    def _elapsed(self) -> float:
        """Seconds of the budget used so far, earlier launches included."""
        return self._before + (time.time() - self._t0 if self._t0 is not None else 0.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.planned is not None:
            return
        # the probe runs in every launch (a resumed one builds its kernels again): steps skip .. skip +
        # probe counted from the step this launch started at
        step = trainer.global_step - self._start
        if step == self.skip:
            self._t_skip = time.time()
        elif step == self.skip + self.probe and self._t_skip is not None:
            per_step = (time.time() - self._t_skip) / self.probe
            step = trainer.global_step
            left = self.minutes * 60 * self.safety - self._elapsed()
            fit = step + max(1, int(left / per_step))
            self.planned = min(int(trainer.max_steps), fit) if trainer.max_steps and trainer.max_steps > 0 else fit
            self.planned = int(trainer.strategy.broadcast(self.planned, src=0))  # every rank stops at one step
            self._planned_under = int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else None
            trainer.fit_loop.epoch_loop.max_steps = self.planned
            _end_schedule_at(trainer, self.planned)
            rank_zero_info(f"TimeBudget: {per_step:.3f} s/step -> {self.planned} steps in {self.minutes} min")

    def state_dict(self) -> dict:
        return {"planned": self.planned, "max_steps": self._planned_under, "elapsed": self._elapsed()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.planned = state_dict.get("planned")
        self._planned_under = state_dict.get("max_steps")
        self._before = float(state_dict.get("elapsed") or 0.0)

    def on_fit_start(self, trainer, pl_module):
        if self.planned is None:
            return
        # resumed after planning: the plan stands, unless trainer.max_steps (--max-steps) was changed
        # since; then the new count is what the user asked for, and the schedule ends there
        asked = int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else None
        if asked is not None and self._planned_under is not None and asked != self._planned_under:
            rank_zero_info(f"TimeBudget: trainer.max_steps is now {asked} (was {self._planned_under} when "
                           f"{self.planned} steps were planned for the time budget): training to step {asked}")
            self.planned, self._planned_under, self._retarget = asked, asked, True
        elif asked is not None and asked < self.planned:
            self.planned = asked
        trainer.fit_loop.epoch_loop.max_steps = self.planned

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.time()
        self._start = int(trainer.global_step)
        if self._retarget:  # after the scheduler's state came back from the checkpoint
            _end_schedule_at(trainer, self.planned)
            self._retarget = False


class ScheduleEnd(pl.Callback):
    """End the LR schedule at ``trainer.max_steps`` (runs without a time budget). A run resumed with
    another step count (``--resume --max-steps N``) restores the checkpoint's schedule, which ended
    where the first launch was to stop: every added step would run at the floor LR. The cosine is
    re-targeted to N instead, so the steps that are left get a decaying LR again."""

    def on_train_start(self, trainer, pl_module):
        asked = int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else None
        if asked is None:
            return
        old = {lam.total for cfg in trainer.lr_scheduler_configs
               for lam in getattr(cfg.scheduler, "lr_lambdas", []) if hasattr(lam, "total")}
        if old and old != {asked}:
            rank_zero_info(f"LR schedule: the checkpoint's cosine ended at step {max(old)}; trainer.max_steps is "
                           f"{asked}, so it now ends there")
            _end_schedule_at(trainer, asked)


def _end_schedule_at(trainer, total: int) -> None:
    """Re-target the LR schedule (``WarmupCosine``) to end at step ``total``; the next step's LR follows
    at once (the scheduler set it from the old schedule after the last step)."""
    for cfg in trainer.lr_scheduler_configs:
        sched = cfg.scheduler
        lams = getattr(sched, "lr_lambdas", [])
        for lam in lams:
            if hasattr(lam, "total"):
                lam.total = total
        if lams and hasattr(sched, "base_lrs"):
            for group, base, lam in zip(sched.optimizer.param_groups, sched.base_lrs, lams):
                group["lr"] = base * lam(sched.last_epoch)
            sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]


class TrainingCurves(pl.Callback):
    """Record logged metrics during training and write ``training_curves.png`` when fit ends.

    ``train_keys`` are read after every ``every`` optimizer steps, ``val_keys`` after each validation.
    The history lives in the checkpoint, so a resumed run plots from step 0.
    """

    def __init__(self, path, train_keys: Sequence[str] = ("train/loss",),
                 val_keys: Sequence[str] = ("val/loss",), every: int = 1, title: str = ""):
        self.path = Path(path)
        self.train_keys, self.val_keys, self.every, self.title = list(train_keys), list(val_keys), int(every), title
        self.history: dict[str, list] = {}

    def _record(self, trainer, keys):
        m = trainer.callback_metrics
        for k in keys:
            if k in m:
                self.history.setdefault(k, []).append((int(trainer.global_step), float(m[k])))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0 or trainer.global_step == 1:
            self._record(trainer, self.train_keys)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._record(trainer, self.val_keys)

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero and self.history:
            self.plot()

    def plot(self) -> Optional[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        loss_keys = [k for k in self.history if k.endswith("/loss")]
        other = [k for k in self.history if k not in loss_keys]
        panels = [p for p in (loss_keys, other) if p]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
        for ax, keys in zip(axes[0], panels):
            for k in keys:
                steps, vals = zip(*self.history[k])
                style = "-" if k.startswith("train") else "o-"
                ax.plot(steps, vals, style, label=k, lw=1, ms=3)
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        if self.title:
            fig.suptitle(self.title, fontsize=9)
        fig.tight_layout()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.path, dpi=110)
        plt.close(fig)
        return self.path

    def state_dict(self) -> dict:
        return {"history": {k: [list(x) for x in v] for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {k: [tuple(x) for x in v] for k, v in state_dict.get("history", {}).items()}


class BestWeights(pl.Callback):
    """Keeps a host copy of the weights at the lowest ``monitor`` (validation loss) seen, so a run
    that overfits late still ends with its best model (see ``trainer.keep``). The copy is taken at
    each improvement only; it is the module's plain state dict (not kept under sharded strategies,
    whose state dicts are collective calls: there the last weights are kept, with one line)."""

    def __init__(self, monitor: str = "val/loss"):
        self.monitor = monitor
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.last: Optional[float] = None
        self.last_step: Optional[int] = None
        self.state: Optional[dict] = None
        self.disabled: Optional[str] = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.disabled:
            return
        if "fsdp" in type(trainer.strategy).__name__.lower():
            self.disabled = f"{type(trainer.strategy).__name__} shards the weights"
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        self.last, self.last_step = value, int(trainer.global_step)
        if math.isfinite(value) and (self.best is None or value < self.best):
            self.best, self.best_step = value, int(trainer.global_step)
            self.state = {k: t.detach().to("cpu", copy=True) for k, t in pl_module.state_dict().items()}

    # The best so far travels in every checkpoint, so a resumed run still ends with the best weights
    # of the whole run, not only of the part after the resume.
    def state_dict(self) -> dict:
        return {"monitor": self.monitor, "best": self.best, "best_step": self.best_step, "last": self.last,
                "last_step": self.last_step, "weights": self.state}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("monitor") != self.monitor:
            return  # another criterion: what was best by it says nothing here
        self.best, self.best_step = state_dict.get("best"), state_dict.get("best_step")
        self.last, self.last_step = state_dict.get("last"), state_dict.get("last_step")
        self.state = state_dict.get("weights")

    def restore(self, pl_module) -> dict:
        """Load the best weights into ``pl_module`` (if they are not the current ones); returns what
        was kept, for results.json."""
        info = {"weights": "last", "monitor": self.monitor, "last_step": self.last_step, "last_value": self.last}
        if self.disabled:
            info = {k: v for k, v in info.items() if v is not None or k == "weights"}
            info["why"] = self.disabled
            warnings.warn(f"trainer.keep=best: the last weights are kept ({self.disabled})", stacklevel=2)
            return info
        if self.state is None:
            return info
        info.update(weights="best", step=self.best_step, value=self.best)
        if self.best_step != self.last_step or self.best != self.last:
            pl_module.load_state_dict(self.state)
        return info


class AveragedWeights(pl.callbacks.EMAWeightAveraging):
    """Lightning's exponential moving average of the weights (``trainer.ema_decay``), updated after
    every optimizer step from step ``start`` on; validation scores the average.

    With ``warmup`` (the default) the k-th update (k = 1, 2, ... after the first, which copies the
    weights) uses the decay ``min(decay, (1 + k) / (10 + k))``: early on the average follows the
    weights closely, so a run of a few hundred or thousand steps does not end with weights that are
    still half those of its first steps (at 0.999 and a constant decay, step 500 of 1,200 still
    weighs ~0.5). Without it the decay is constant, as in Lightning.

    Unlike Lightning's default, the module keeps its own (raw) weights when fit ends, so the final
    checkpoint written after fit resumes exactly; :meth:`finish` then loads the average into the
    module (the weights a run saves and tests)."""

    def __init__(self, decay: float, start: int = 0, warmup: bool = True):
        super().__init__(decay=float(decay), update_starting_at_step=int(start))
        self.decay, self.start, self.warmup = float(decay), int(start), bool(warmup)
        if self.warmup:
            self._kwargs["avg_fn"] = self._warmed_average

    def decay_at(self, k: int) -> float:
        """The decay of the k-th update after the first."""
        return min(self.decay, (1.0 + k) / (10.0 + k)) if self.warmup else self.decay

    @torch.no_grad()
    def _warmed_average(self, avg: torch.Tensor, param: torch.Tensor, n_averaged) -> torch.Tensor:
        if not (avg.is_floating_point() or avg.is_complex()):
            return param  # counters and flags: the current value
        d = self.decay_at(int(n_averaged))
        return avg + (param - avg) * (1.0 - d)

    def on_train_end(self, trainer, pl_module) -> None:
        pass  # see finish()

    def updates(self) -> int:
        """How many optimizer steps went into the average."""
        avg = self._average_model
        return 0 if avg is None else int(avg.n_averaged.item())

    def finish(self, pl_module) -> dict:
        """Load the average into ``pl_module`` (if any step was averaged); returns what was kept."""
        info = {"weights": "ema", "decay": self.decay, "warmup": self.warmup, "from_step": self.start,
                "updates": self.updates()}
        if info["updates"] == 0:
            info.update(weights="last", why=f"no step reached trainer.ema_start={self.start}")
            warnings.warn(f"trainer.ema_decay: the last weights are kept ({info['why']})", stacklevel=2)
            return info
        src = list(self._average_model.module.parameters()) + list(self._average_model.module.buffers())
        dst = list(pl_module.parameters()) + list(pl_module.buffers())
        with torch.no_grad():
            for a, c in zip(src, dst):
                c.copy_(a.to(c.device, c.dtype))
        return info


def _batch_tokens(batch) -> int:
    """Positions in a training batch: the ids tensor, alone or first in a (ids, ...) tuple or dict."""
    if isinstance(batch, dict):
        batch = batch.get("ids", next(iter(batch.values()), None))
    if isinstance(batch, (tuple, list)):
        batch = batch[0] if batch else None
    return int(batch.numel()) if isinstance(batch, torch.Tensor) else 0


class RunStart(pl.Callback):
    """The optimizer step this fit started training from (after a resume's restore); None while
    training has not started (a resumed run with nothing left to train never starts it)."""

    def __init__(self):
        self.step: Optional[int] = None

    def on_train_start(self, trainer, pl_module):
        self.step = int(trainer.global_step)


class WholeStepsOnSigterm(pl.Callback):
    """A SIGTERM that arrives between the micro-batches of one optimizer step (``trainer.accumulate``
    > 1) stops the run after that step's last micro-batch: Lightning looks for the signal after every
    micro-batch, and a stop in the middle of a window saved a checkpoint whose resumed run began its
    next step with only the rest of that window. The trainer's signal flag reads as unset while
    training is in the middle of a window, whenever Lightning looks at it, and as set again once the
    window's optimizer step has run (validation, testing and the end of training see it at once)."""

    def setup(self, trainer, pl_module, stage):
        connector = trainer._signal_connector
        if getattr(connector, "_whole_steps", False):
            return
        received = bool(connector.__dict__.get("received_sigterm", False))
        connector.__class__ = _held_signal_class(type(connector))
        connector._whole_steps, connector._sigterm = True, received
        connector._mid_window = lambda: _mid_window(trainer)


def _mid_window(trainer) -> bool:
    if trainer.state.fn != "fit" or not trainer.training:
        return False
    try:
        return bool(trainer.fit_loop.epoch_loop._should_accumulate())
    except Exception:  # no training loop state yet
        return False


def _held_signal_class(base: type) -> type:
    class HeldSignal(base):
        @property
        def received_sigterm(self) -> bool:
            return self._sigterm and not self._mid_window()

        @received_sigterm.setter
        def received_sigterm(self, value) -> None:
            self._sigterm = bool(value)

    HeldSignal.__name__ = HeldSignal.__qualname__ = f"WholeSteps{base.__name__}"
    return HeldSignal


class TrainThroughput(pl.Callback):
    """Training tokens per second over all processes and the peak memory of each, for results.json.

    The clock starts at the end of optimizer step ``skip`` (the first steps build kernels and fill
    caches) and stops at the end of fit, with validation taken out; the device is synchronised only
    at those points, never per step. Tokens are every position of every training batch (each
    micro-batch under accumulation) after step ``skip``, summed over the processes (a
    context-parallel rank counts its own slice). Peak memory:
    ``torch.cuda.max_memory_allocated`` on GPUs, the process's peak resident set on CPU. The result
    is in ``summary`` on every process once fit ends."""

    def __init__(self, skip: int = 2):
        self.skip = int(skip)
        self.summary: dict = {}
        self._reset()

    def _reset(self, step: int = 0) -> None:
        self.tokens, self.seconds, self.steps, self.seen, self._last_step = 0, 0.0, 0, 0, step
        self._t0: Optional[float] = None  # set while the clock runs
        self._paused = False

    @staticmethod
    def _now(trainer) -> float:
        dev = trainer.strategy.root_device
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self._reset(trainer.global_step)
        if self.skip <= 0:
            self._t0 = self._now(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stepped = trainer.global_step > self._last_step  # an optimizer step ended with this micro-batch
        self._last_step = trainer.global_step
        if self._t0 is not None:
            # a context-parallel rank holds the whole window but runs its slice: 1 / P of the tokens
            self.tokens += _batch_tokens(batch) // max(1, int(getattr(pl_module, "context_parallel", 1)))
            self.steps += int(stepped)
        elif stepped:
            self.seen += 1
            if self.seen == self.skip:
                self._t0 = self._now(trainer)

    def on_validation_start(self, trainer, pl_module):
        if self._t0 is not None and not trainer.sanity_checking:
            self.seconds += self._now(trainer) - self._t0
            self._t0, self._paused = None, True

    def on_validation_end(self, trainer, pl_module):
        if self._paused:
            self._t0, self._paused = self._now(trainer), False

    def on_train_end(self, trainer, pl_module):
        if self._t0 is not None:
            self.seconds += self._now(trainer) - self._t0
            self._t0 = None
        dev = trainer.strategy.root_device
        if dev.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(dev), "cuda max_memory_allocated"
        else:
            import resource

            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak resident set (ru_maxrss)"
        mine = torch.tensor([float(self.tokens), self.seconds, float(peak)], dtype=torch.float64, device=dev)
        every = trainer.strategy.all_gather(mine)
        every = (every if every.dim() == 2 else every.unsqueeze(0)).cpu()
        tokens, seconds = int(every[:, 0].sum()), float(every[:, 1].max())
        world = every.shape[0]
        self.summary = {
            "timed_steps": self.steps,
            "skipped_steps": self.skip,
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 and tokens else None,
            "tokens_per_s_per_process": round(tokens / seconds / world, 1) if seconds > 0 and tokens else None,
            "processes": world,
            "peak_memory_gib": [round(float(x) / 2**30, 3) for x in every[:, 2]],
            "peak_memory_kind": kind,
        }
