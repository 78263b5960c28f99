"""The config arguments of the commands that train (pretrain, classify fit): --config, --set,
--resume and the few flags that override single config keys."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from genomamba.errors import InvalidArgument
from genomamba.lit.config import ConfigError, load_config


def add_run_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--config", "-c", help="YAML config (configs/...); default: RUN_DIR/config.yaml when resuming")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set trainer.max_steps=500 (repeatable)")
    ap.add_argument("--run-dir", help="output directory (overrides run_dir)")
    ap.add_argument("--max-steps", type=int, help="overrides trainer.max_steps")
    ap.add_argument("--max-minutes", type=float, help="overrides trainer.max_minutes (wall-clock cap)")
    ap.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                    help="continue from RUN_DIR/checkpoints/last.ckpt (or the given checkpoint)")
    ap.add_argument("--force", action="store_true",
                    help="replace the earlier run in RUN_DIR (its checkpoints, model, results, logs)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args, kind: str):
    """The run config: --config (or RUN_DIR/config.yaml when resuming), --set and the flag overrides."""
    if args.max_steps is not None and args.max_steps < 1:
        raise InvalidArgument(f"--max-steps: expected a positive number of steps, got {args.max_steps}")
    if args.max_minutes is not None and not (math.isfinite(args.max_minutes) and args.max_minutes > 0):
        raise InvalidArgument(f"--max-minutes: expected a positive number of minutes, got {args.max_minutes}")
    if getattr(args, "force", False) and args.resume is not None:
        raise InvalidArgument("--force starts the run afresh and --resume continues it: give one of them")
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
