"""What the commands on a saved model (embed, score, generate) share: its arguments, loading, errors."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from genomamba.api import check_model_dir, load
from genomamba.errors import InvalidArgument, check_device, report


def add_device_args(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    """``--device`` and ``--threads``; :func:`apply_device_args` checks and applies them."""
    p.add_argument("--device", default=None, help=f"cpu or cuda (default: {default})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def apply_device_args(args) -> None:
    """A bad ``--device`` or ``--threads`` is an error naming it; good threads are set for torch."""
    check_device(args.device, "--device")
    if args.threads is not None:
        torch.set_num_threads(positive_int("--threads", args.threads))


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory (config.json + model.safetensors [+ tokenizer.json])")
    add_device_args(p)
    p.add_argument("--model-dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights' dtype (auto: bfloat16 on cuda, float32 on cpu)")


def load_model(args):
    """The ``genomamba.api`` model named by ``add_model_args``' arguments."""
    apply_device_args(args)
    check_model_dir(args.model, "MODEL")
    return load(args.model, device=args.device, dtype=args.model_dtype)


def refuse_repeats(paths, what: str) -> None:
    """``InvalidArgument`` naming ``what`` when one path is given twice (by any spelling of it)."""
    seen: dict = {}
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            raise InvalidArgument(f"{what} {p}: given twice (also as {seen[key]})")
        seen[key] = p


def model_files(model_dir) -> list[Path]:
    """The files of a model directory: inputs an output must never replace."""
    d = Path(model_dir)
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def positive_int(name: str, value: int) -> int:
    """``value`` if it is >= 1, else ``InvalidArgument`` naming the option."""
    if value < 1:
        raise InvalidArgument(f"{name}: expected a positive int, got {value}")
    return value


def fail(cmd: str, exc: BaseException) -> int:
    """Report ``exc`` as one line (``genomamba.errors.report``); exit code 1."""
    return report(cmd, exc, 1)


# the tokenizer's remedy names its Python setting; on the command line the remedy is the input's
_UNKNOWN_HINT = re.compile(r"\s*\(use unknown='unk' to map it to <unk>\)")


def cli_error(exc: BaseException, names: dict[str, str]) -> BaseException:
    """``exc`` in the words of the command line: a message that starts with a Python parameter
    (``top_k: ...``) starts with its option instead (``names``: ``{"top_k": "--top-k"}``), and the
    tokenizer's hint about a setting the command line does not have becomes the remedy there.
    Anything else (files, other errors) is returned as it is."""
    if not isinstance(exc, ValueError):
        return exc
    text = str(exc)
    head, sep, rest = text.partition(": ")
    new = text
    if sep and head in names:
        new = rest if rest.startswith(names[head] + ":") else f"{names[head]}: {rest}"
    new = _UNKNOWN_HINT.sub("; remove or replace that character", new)
    return exc if new == text else InvalidArgument(new)
