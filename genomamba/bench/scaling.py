"""``genomamba bench scaling``: one pretraining config on 1, 2, ... processes (DDP, FSDP) through the
real ``genomamba pretrain`` command, for the same number of training tokens.

Every run is ``genomamba pretrain -c CONFIG --set trainer.devices=K --set trainer.strategy=S`` in its
own process group (Lightning starts the other ranks), with ``max_steps`` chosen so each run trains on
the same tokens (K processes take K windows a step). Each run's results.json gives the measured
training tokens/s (all processes, the first steps left out), the peak memory of every process and
the held-out bits per token after training; the table puts the speed-up over the first run of the
same strategy next to them, so the scaling and the equal quality are read off one table.

    genomamba bench scaling                                   # CPU: the tiny config, 1 and 2 processes (gloo)
    genomamba bench scaling -c configs/pretrain/dna_7m_16k.yaml --accelerator gpu --devices 1 2 --tokens 50000000
    genomamba bench scaling -c configs/pretrain/dna_7m_16k.yaml --accelerator gpu --devices 2 \\
        --strategy ddp fsdp --set model.d_model=768 --set model.n_layer=24        # memory per GPU: FSDP vs DDP
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from genomamba.bench.common import add_results_args, machine_facts, positive_count, print_table, write_results
from genomamba.lit.config import ConfigError, load_config

DEFAULT_CONFIG = "configs/pretrain/tiny_cpu.yaml"


def steps_for(tokens: int, devices: int, batch_size: int, seq_len: int) -> int:
    """Optimizer steps that make ``devices`` processes of ``batch_size`` windows of ``seq_len`` train on
    at least ``tokens`` tokens."""
    per_step = devices * batch_size * seq_len
    return max(1, math.ceil(tokens / per_step))


def held_out(results: dict) -> tuple:
    """(key, value) of the held-out bits per token in a pretrain results.json: the test split's if it
    was scored, else the last validation's; (None, None) when neither was."""
    for scope in (results.get("test") or {}, results.get("metrics") or {}):
        for key, value in scope.items():
            split, _, metric = key.partition("/")
            if split in ("test", "val") and metric in ("bpb", "bits_per_byte", "bits_per_sample"):
                return key, value
    return None, None


def run_one(config: str, strategy: str, devices: int, steps: int, run_dir: Path, accelerator: str,
            overrides: list, timeout: float, quiet: bool) -> dict:
    cmd = [sys.executable, "-m", "genomamba", "pretrain", "--no-progress", "-c", config, "--run-dir", str(run_dir),
           "--force", "--max-steps", str(steps), "--set", f"trainer.devices={devices}",
           "--set", f"trainer.strategy={strategy}", "--set", f"trainer.accelerator={accelerator}",
           "--set", "trainer.budget_minutes=null", "--set", "trainer.max_minutes=null",
           "--set", f"trainer.val_every={steps}"]  # one validation, at the end: the same windows in every run
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.time() - t0
    if out.returncode != 0:
        tail = (out.stdout[-2000:] + out.stderr[-3000:]).strip()
        raise RuntimeError(f"genomamba bench scaling: {strategy} on {devices} process(es) failed "
                           f"(exit {out.returncode}):\n{tail}")
    if not quiet:
        print(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "", flush=True)
    res = json.loads((run_dir / "results.json").read_text())
    tp = res.get("throughput") or {}
    key, value = held_out(res)
    return {
        "strategy": strategy,
        "devices": devices,
        "steps": res.get("global_step"),
        "tokens_per_s": tp.get("tokens_per_s"),
        "tokens_per_s_per_process": tp.get("tokens_per_s_per_process"),
        "peak_memory_gib_max": max(tp["peak_memory_gib"]) if tp.get("peak_memory_gib") else None,
        "peak_memory_gib": tp.get("peak_memory_gib"),
        "peak_memory_kind": tp.get("peak_memory_kind"),
        "held_out_key": key,
        "held_out_bits": round(float(value), 4) if value is not None else None,
        "wall_seconds": round(wall, 1),
        "device": res.get("device"),
        "throughput": tp,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="genomamba bench scaling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"pretraining config (default {DEFAULT_CONFIG})")
    ap.add_argument("--devices", type=positive_count, nargs="+", default=[1, 2],
                    help="process counts to run (default 1 2)")
    ap.add_argument("--strategy", nargs="+", default=["ddp"], help="Lightning strategies (ddp, fsdp, ...)")
    ap.add_argument("--accelerator", default="cpu", help="cpu (gloo) or gpu (NCCL); default cpu")
    ap.add_argument("--tokens", type=positive_count, default=None,
                    help="training tokens per run (default: what the config's max_steps give one process)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override passed to every run (repeatable)")
    ap.add_argument("--work-dir", default="runs/bench_scaling",
                    help="where the runs go, one folder per (strategy, processes), replaced by the next bench "
                         "(default runs/bench_scaling)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it is stopped")
    add_results_args(ap, "scaling_<device>")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    bad = [k for k in args.devices if k < 1]
    if bad:
        ap.error(f"--devices: process counts must be >= 1, got {bad}")
    try:
        cfg = load_config(args.config, list(args.overrides))
    except (ConfigError, OSError, ValueError) as e:
        print(f"genomamba bench scaling: {e}", file=sys.stderr)
        return 2
    if cfg.kind != "pretrain":
        print(f"genomamba bench scaling: {args.config}: a pretraining config is needed, this one is "
              f"kind {cfg.kind!r}", file=sys.stderr)
        return 2
    if args.accelerator == "cpu" and any(s.lower().startswith("fsdp") for s in args.strategy):
        print("genomamba bench scaling: --strategy fsdp needs GPUs (Lightning runs FSDP on CUDA only); "
              "use --accelerator gpu", file=sys.stderr)
        return 2
    batch, seq = cfg.data.batch_size, cfg.data.seq_len
    tokens = args.tokens or cfg.trainer.max_steps * batch * seq
    rows = []
    work = Path(args.work_dir)
    for strategy in args.strategy:
        base = None
        for k in args.devices:
            steps = steps_for(tokens, k, batch, seq)
            if not args.quiet:
                print(f"{strategy}, {k} process(es): {steps} steps of {k} x {batch} x {seq} tokens", flush=True)
            try:
                row = run_one(args.config, strategy, k, steps, work / f"{strategy}_{k}", args.accelerator,
                              args.overrides, args.timeout, args.quiet)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                print(str(e), file=sys.stderr)
                return 1
            row["train_tokens"] = steps * k * batch * seq
            if base is None and row["tokens_per_s"]:
                base = row
            if base is not None and row["tokens_per_s"]:  # against the strategy's first run
                row["speedup"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
                row["efficiency"] = round(row["speedup"] * base["devices"] / k, 3)
            rows.append(row)
    device = "cuda" if args.accelerator in ("gpu", "cuda") else "cpu"
    facts = machine_facts(device)
    payload = {"bench": "scaling", "machine": facts, "config": args.config, "overrides": args.overrides,
               "tokens_per_run": tokens, "batch_size": batch, "seq_len": seq,
               "how": "genomamba pretrain per (strategy, processes) with the same training tokens; tokens/s "
                      "over all processes after the first 2 steps, validation excluded; speedup: tokens/s "
                      "over the strategy's first run's; efficiency: speedup per added process",
               "rows": rows}
    name = args.name or f"scaling_{device}"
    path = write_results(name, payload, args.out)
    cols = ["strategy", "devices", "steps", "train_tokens", "tokens_per_s", "speedup", "efficiency",
            "peak_memory_gib_max", "held_out_bits"]
    print_table(rows, cols)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
