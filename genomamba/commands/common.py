"""What the commands on a saved model (embed, score, generate) share: its arguments, loading, errors."""

from __future__ import annotations

import argparse
import sys

import torch

from genomamba.api import load


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory (config.json + model.safetensors [+ tokenizer.json])")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def load_model(args):
    """The ``genomamba.api`` model named by ``add_model_args``' arguments."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return load(args.model, device=args.device)


def fail(cmd: str, exc: BaseException) -> int:
    print(f"genomamba {cmd}: error: {exc}", file=sys.stderr)
    return 1
