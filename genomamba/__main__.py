"""The ``genomamba`` command line: one registry of subcommands.

Each entry maps a subcommand to ``"module:function"``. The module is imported only when its
subcommand runs, so ``genomamba --help`` stays fast and optional dependencies stay optional.
Every entry function takes the remaining argv (a list of str) and returns an exit code.

Errors: whatever a command raises is printed as one line, ``genomamba CMD: error: MESSAGE``
(``genomamba.errors.report``), never as a traceback; ``genomamba --debug CMD ...`` (the flag may
stand anywhere before ``--``) or ``GENOMAMBA_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

from genomamba.errors import DEBUG_ENV, report

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (entry point, one-line help)
    "demo": ("genomamba.commands.demo:main", "end-to-end demo on shipped/fetched real genomes"),
    "data": ("genomamba.commands.data:main", "fetch genomes, text and speech; build token stores; inspect them"),
    "pretrain": ("genomamba.commands.pretrain:main", "pretrain a language model (DNA; text or audio via adapters)"),
    "classify": ("genomamba.commands.classify:main", "classifier (species, spoken digits): fit / evaluate / predict"),
    "embed": ("genomamba.commands.embed:main", "embed records (FASTA, or text / audio files) into HDF5"),
    "score": ("genomamba.commands.score:main", "log-likelihood / bits per base (byte, sample) of sequences"),
    "generate": ("genomamba.commands.generate:main", "sample from a trained model (DNA, text or audio)"),
    "bench": ("genomamba.bench.cli:main", "benchmarks: scan, train, generate, ... (genomamba bench --help lists them)"),
}


def _usage() -> str:
    lines = ["usage: genomamba [--debug] <command> [options]", "", "commands:"]
    for name, (_, help_) in COMMANDS.items():
        lines.append(f"  {name:<10} {help_}")
    lines += ["", f"--debug (or {DEBUG_ENV}=1): show the traceback of an error instead of one line"]
    return "\n".join(lines)


def _take_debug_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--debug`` (before a ``--``); the flag turns debugging on for this process
    and the processes it starts."""
    end = argv.index("--") if "--" in argv else len(argv)
    if "--debug" in argv[:end]:
        os.environ[DEBUG_ENV] = "1"
        argv = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return argv


def _stdout_closed() -> int:
    """The reader of our output went away (``genomamba ... | head``): stop quietly, as other tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        return _stdout_closed()


def _main(argv: list[str] | None = None) -> int:
    argv = _take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"genomamba: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(rest) or 0)
    except (SystemExit, BrokenPipeError):
        raise
    except BaseException as exc:  # one line, whatever it is (report re-raises when debugging)
        sub = rest[0] if name in ("classify", "data") and rest and not rest[0].startswith("-") else ""
        return report(f"{name} {sub}".strip(), exc)


if __name__ == "__main__":
    sys.exit(main())
