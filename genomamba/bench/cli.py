"""``genomamba bench <name>``: each benchmark prints a table and writes JSON to bench/results/."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "scan": ("genomamba.bench.scan:main", "selective scan: CPU kernel vs torch loop; --device cuda for GPU backends"),
    "data": ("genomamba.bench.data:main", "token store: 1M-token window reads per second"),
    "train": ("genomamba.bench.train:main", "training step throughput and peak memory"),
    "synthetic": ("genomamba.bench.synthetic:main", "selective copying / induction heads (paper 4.1)"),
    "decode": ("genomamba.bench.decode:main", "greedy decoding on CPU: genomamba vs HF transformers' cached generate"),
    "scaling": ("genomamba.bench.scaling:main", "one pretraining config on 1, 2, ... processes (DDP, FSDP) for the "
                "same tokens: tokens/s, speed-up, peak memory per process, held-out bits"),
    "cp": ("genomamba.bench.cp:main", "context parallelism on CPU: one sequence over P processes (gloo) vs one"),
    "generate": ("genomamba.bench.generate:main", "decoding tokens/s: eager and CUDA-graph steps, next to "
                 "mamba_ssm and transformers when installed"),
    "profile": ("genomamba.bench.profile:main", "one training step or inference forward under torch.profiler: "
                "the operators that take the time, kernel time vs wall time"),
    "verify": ("genomamba.bench.verify:main", "every scan backend vs the fp64 oracle: outputs, states, gradients, "
               "determinism"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: genomamba bench <name> [options]\n\nbenchmarks:")
        for name, (_, help_) in BENCHES.items():
            print(f"  {name:<10} {help_}")
        return 0
    if argv[0] not in BENCHES:
        print(f"genomamba bench: error: unknown benchmark {argv[0]!r}; choose from {', '.join(BENCHES)}",
              file=sys.stderr)
        return 2
    module_name, func = BENCHES[argv[0]][0].split(":")
    return int(getattr(importlib.import_module(module_name), func)(argv[1:]) or 0)
