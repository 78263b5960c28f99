"""The ``genomamba`` command line: one registry of subcommands.

Each entry maps a subcommand to ``"module:function"``. The module is imported only when its
subcommand runs, so ``genomamba --help`` stays fast and optional dependencies stay optional.
Every entry function takes the remaining argv (a list of str) and returns an exit code.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (entry point, one-line help)
    "demo": ("genomamba.commands.demo:main", "end-to-end demo on shipped/fetched real genomes"),
    "data": ("genomamba.commands.data:main", "fetch genomes, build token stores, manifests"),
    "pretrain": ("genomamba.commands.pretrain:main", "pretrain a DNA language model"),
    "classify": ("genomamba.commands.classify:main", "species classifier: fit / evaluate / predict"),
    "embed": ("genomamba.commands.embed:main", "embed FASTA records into HDF5"),
    "score": ("genomamba.commands.score:main", "log-likelihood / bits per base of sequences"),
    "generate": ("genomamba.commands.generate:main", "sample DNA from a trained model"),
    "bench": ("genomamba.bench.cli:main", "benchmarks: scan, data, train, synthetic"),
}


def _usage() -> str:
    lines = ["usage: genomamba <command> [options]", "", "commands:"]
    for name, (_, help_) in COMMANDS.items():
        lines.append(f"  {name:<10} {help_}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"genomamba: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
