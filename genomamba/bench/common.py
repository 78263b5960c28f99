"""What every benchmark shares: machine facts, JSON results, a plain-text table, kernel knob settings."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from genomamba.files import write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _count(text: str, least: int) -> int:
    """``text`` as an int of at least ``least``, else argparse's usage error (which names the option)."""
    import argparse

    want = "a positive int" if least == 1 else f"an int >= {least}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {want}, got {value}")
    return value


def positive_count(text: str) -> int:
    """argparse type of a count that must be >= 1 (``--repeats``)."""
    return _count(text, 1)


def nonnegative_count(text: str) -> int:
    """argparse type of a count that may be 0 (``--warmup``)."""
    return _count(text, 0)


def results_folder(text: str) -> Path:
    """argparse type of ``--out``: a folder for the results JSON. A path to an existing file, or one
    ending in ``.json`` (a file name where a folder is meant), is a usage error naming the option, given
    before anything runs, so a long benchmark never ends without a place to write its result."""
    import argparse

    path = Path(text).expanduser()
    if path.suffix.lower() == ".json":
        raise argparse.ArgumentTypeError(f"{text!r} is a file name; --out takes a folder (name the file with "
                                         f"--name, without .json)")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    return path


def results_name(text: str) -> str:
    """argparse type of ``--name``: the results file's name without a folder (a trailing ``.json`` is
    dropped, since one is added)."""
    import argparse

    name = text[:-5] if text.lower().endswith(".json") else text
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise argparse.ArgumentTypeError(f"expected a file name without a folder, got {text!r} (the folder is "
                                         f"--out)")
    return name


def add_results_args(parser, default_name: str) -> None:
    """``--out`` (alias ``--out-dir``: the results folder) and ``--name`` (the JSON file's name), the
    same for every benchmark; ``default_name`` tells the help what ``--name`` defaults to."""
    parser.add_argument("--out", "--out-dir", dest="out", type=results_folder, default=None,
                        help="results folder (default: the package's bench/results in a source checkout, "
                             "else ./genomamba-bench-results)")
    parser.add_argument("--name", type=results_name, default=None,
                        help=f"results name: <out>/<name>.json (default {default_name})")


def _genomamba_version() -> str:
    """The package version, with the commit (``+g<hash>``, ``.dirty`` for uncommitted changes) when the
    package runs from a git checkout: a result then says which code it timed."""
    import genomamba

    version = genomamba.__version__
    root = Path(genomamba.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return version
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=10)
        head = run("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return version
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return f"{version}+g{head.stdout.strip()}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return version


def machine_facts(device: str = "cpu") -> dict:
    facts = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "genomamba": _genomamba_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host_cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        facts["device_name"] = torch.cuda.get_device_name()
        facts["cuda"] = torch.version.cuda
        try:
            import triton

            facts["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        facts["device_name"] = f"cpu ({os.cpu_count()} cores)"
    # the genomamba knobs this run was started with (kernel choices, graph limits): a result says
    # which variant it timed
    knobs = {k: v for k, v in sorted(os.environ.items()) if k.startswith("GENOMAMBA_")}
    if knobs:
        facts["genomamba_env"] = knobs
    return facts


def cuda_requested(command: str, device: str) -> Optional[bool]:
    """True for a run on a CUDA device, False for CPU; None, after one line on stderr, when a CUDA
    device is asked for and torch sees none (the command then exits with status 2)."""
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(f"genomamba bench {command}: --device {device} but torch sees no CUDA device", file=sys.stderr)
        return None
    return cuda


def default_results_dir() -> Path:
    """Where results go without ``--out``: ``genomamba/bench/results`` in a source checkout (next to
    the figures the README cites), else ``./genomamba-bench-results``: an installed package's folder
    is no place for a user's files (and may be read-only)."""
    checkout = (RESULTS_DIR.parents[2] / "pyproject.toml").is_file()
    writable = os.access(RESULTS_DIR.parent, os.W_OK)
    return RESULTS_DIR if checkout and writable else Path.cwd() / "genomamba-bench-results"


def write_results(name: str, payload: dict, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``payload`` to ``<out_dir>/<name>.json`` (default: ``default_results_dir()``)."""
    out = Path(out_dir) if out_dir else default_results_dir()
    out.mkdir(parents=True, exist_ok=True)
    return write_json(out / f"{name}.json", payload)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def knob_settings(specs: list, command: str) -> list:
    """``["name=1,2", "other=8"]`` -> every combination as (CONFIG update, row label). A name that is
    not an integer knob of ``genomamba.ops.cuda.CONFIG``, a value that is not an integer, or one the
    knob does not take (``genomamba.ops.cuda.knobs.CHOICES``), is an error
    (``genomamba bench <command>: --knob ...``) that names it and lists the knobs or the values."""
    import itertools

    from genomamba.ops.cuda.knobs import CHOICES, CONFIG, describe

    axes = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep or name not in CONFIG or not isinstance(CONFIG[name], int):
            knobs = ", ".join(k for k, v in CONFIG.items() if isinstance(v, int))
            raise SystemExit(f"genomamba bench {command}: error: --knob {spec!r}: expected NAME=V1,V2 with NAME one of "
                             f"{knobs}")
        try:
            vals = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise SystemExit(f"genomamba bench {command}: error: --knob {spec!r}: values must be integers") from None
        if not vals:
            raise SystemExit(f"genomamba bench {command}: error: --knob {spec!r}: no values")
        bad = [v for v in vals if name in CHOICES and v not in CHOICES[name]]
        if bad:
            raise SystemExit(f"genomamba bench {command}: error: --knob {spec!r}: {name} takes one of "
                             f"{describe(CHOICES[name])}, not {', '.join(map(str, bad))}")
        axes.append([(name, v) for v in vals])
    return [(dict(combo), "cuda[" + ",".join(f"{k}={v}" for k, v in combo) + "]")
            for combo in itertools.product(*axes)]


@contextlib.contextmanager
def knobs_set(update: dict):
    """``genomamba.ops.cuda.CONFIG`` with ``update`` (one of :func:`knob_settings`' settings) applied for
    the block, restored after."""
    if not update:
        yield
        return
    from genomamba.ops.cuda.knobs import CONFIG

    saved = {k: CONFIG[k] for k in update}
    CONFIG.update(update)
    try:
        yield
    finally:
        CONFIG.update(saved)
