"""``genomamba bench cp``: context parallelism, one sequence over P processes (gloo on CPU, NCCL on GPUs).

Times a forward + backward of a MambaLM on one ``(b, l)`` batch of random DNA tokens with the
sequence split over P processes (``torch.multiprocessing``, gloo, ``--threads`` each), against the
same work in one process (P = 1), and prints what each rank sends per layer, from the formula:

    halo       (d_conv - 1) * b * d_inner * element bytes     rank r -> r + 1, point to point
    summaries  2 * b * d_inner * d_state * 4 bytes            every rank, one all_gather
    backward   the same again: halo gradients r + 1 -> r, summary gradients reduced over the group

    genomamba bench cp                          # tiny model, l = 16384, P = 1, 2
    genomamba bench cp --sizes 1 2 4 --seq-len 32768
    genomamba bench cp --device cuda --d-model 256 --n-layer 8 --seq-len 2097152 --reference-segment-len 131072
    genomamba bench cp --device cuda --sizes 2 --d-model 256 --n-layer 8 --grad-checkpointing \
        --seq-len 4194304 8388608 16777216 33554432    # the longest sequence one step reaches on 2 GPUs

Every size also reports the whole sequence's loss and gradient (summed over the ranks) against
P = 1's: ``loss_rel_err_vs_P1`` and ``grad_rel_err_vs_P1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from genomamba.bench.common import (
    add_results_args,
    machine_facts,
    nonnegative_count,
    positive_count,
    print_table,
    write_results,
)
from genomamba.config import MambaConfig
from genomamba.models.lm import MambaLM
from genomamba.models.segmented import next_token_loss, segmented_loss
from genomamba.parallel import build_context_parallel, slice_bounds


def bytes_per_layer(cfg: MambaConfig, batch: int, size: int, element_bytes: int = 4) -> dict:
    """What one rank sends per layer in forward (backward sends the same again)."""
    halo = (cfg.d_conv - 1) * batch * cfg.d_inner * element_bytes
    summaries = 2 * batch * cfg.d_inner * cfg.d_state * 4
    return {"halo_bytes": halo if size > 1 else 0, "summary_bytes": summaries if size > 1 else 0,
            "all_gather_receives_bytes": (size - 1) * summaries}


def _rank(rank: int, world: int, store: str, spec: dict, out: str) -> None:
    cuda = spec["device"] == "cuda"
    torch.set_num_threads(spec["threads"])
    torch.set_flush_denormal(True)
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    cp = build_context_parallel(world)
    torch.manual_seed(0)
    cfg = MambaConfig(**spec["model"])
    model = MambaLM(cfg).to(dev).set_context_parallel(cp).train()
    model.gradient_checkpointing_enable(bool(spec.get("grad_checkpointing")))
    b, L = spec["batch"], spec["seq_len"]
    ids = (torch.randint(0, 4, (b, L), generator=torch.Generator().manual_seed(1)) + 7).to(dev)
    start, stop = slice_bounds(L, world, rank)
    n_pred = min(stop, L - 1) - start
    tgt = ids[:, start + 1:start + 1 + n_pred]
    seg = spec.get("reference_segment_len") if world == 1 else None
    norm = b * (L - 1)

    segment = next_token_loss(ids)  # the single-process reference's segments

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and spec["amp"]):
            if seg and L > seg:
                loss, _ = segmented_loss(model, ids[:, :-1], seg, segment, normalizer=norm)
            else:
                logits = model(ids[:, start:stop])[:, :n_pred]
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                       reduction="sum") / norm
        loss.backward()
        return loss

    times, cpu_max, cpu_sum = [], [], []
    for i in range(spec["warmup"] + spec["steps"]):
        dist.barrier()
        if cuda:
            torch.cuda.synchronize()
            if i == spec["warmup"]:
                torch.cuda.reset_peak_memory_stats()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if cuda:
            torch.cuda.synchronize()
        dt = torch.tensor([time.perf_counter() - t0, time.process_time() - c0], dtype=torch.float64, device=dev)
        cpu = dt[1:].clone()
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
        dist.all_reduce(cpu)
        if i >= spec["warmup"]:
            times.append(float(dt[0]))
            cpu_max.append(float(dt[1]))
            cpu_sum.append(float(cpu))
    # the whole sequence's loss and gradient: each rank holds its slice's share, summed over the group
    loss = step().detach().double().reshape(1)
    grad = torch.cat([p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None])
    dist.all_reduce(loss)
    dist.all_reduce(grad)
    peak = torch.tensor([torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else 0.0], device=dev)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        torch.save({"times": times, "cpu_max": cpu_max, "cpu_sum": cpu_sum, "loss": float(loss),
                    "grad": grad.cpu(), "peak_gib": float(peak)}, out)
    dist.barrier()
    dist.destroy_process_group()


def _out_of_memory(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return "OutOfMemoryError" in text or "out of memory" in text.lower()


def bench_size(size: int, spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.pt")
        try:
            mp.spawn(_rank, args=(size, os.path.join(tmp, "store"), spec, out), nprocs=size, join=True)
        except Exception as exc:  # a rank that ran out of memory: the row says so, the next size runs
            if not _out_of_memory(exc):
                raise
            return {"P": size, "seq_len": spec["seq_len"], "oom": True}
        got = torch.load(out)
    times = got["times"]
    best = min(times)
    row = {"P": size, "seq_len": spec["seq_len"], "sec_per_step": round(best, 4),
           "median_sec": round(sorted(times)[len(times) // 2], 4),
           "tokens_per_s": round(spec["batch"] * spec["seq_len"] / best),
           # CPU seconds of the busiest rank (the step time with a core per process) and of all ranks
           "cpu_sec_slowest_rank": round(min(got["cpu_max"]), 4), "cpu_sec_all_ranks": round(min(got["cpu_sum"]), 4),
           "loss": got["loss"], "_grad": got["grad"]}
    if spec["device"] == "cuda":
        row["peak_gib_per_rank"] = round(got["peak_gib"], 3)
    return row


def _compare(rows: list) -> None:
    """Rows of one sequence length: loss and gradient against P = 1's, speed-ups over it."""
    done = [r for r in rows if not r.get("oom")]
    grads = {r["P"]: r.pop("_grad") for r in done}
    ref = next((r for r in done if r["P"] == 1), None)
    for r in done:  # the whole sequence's loss and gradient against one process
        if ref is not None and r is not ref:
            r["loss_rel_err_vs_P1"] = abs(r["loss"] - ref["loss"]) / abs(ref["loss"])
            r["grad_rel_err_vs_P1"] = float((grads[r["P"]] - grads[1]).norm() / grads[1].norm())
    base = ref["sec_per_step"] if ref else None
    base_cpu = ref["cpu_sec_slowest_rank"] if ref else None
    for r in done:
        if base:
            r["speedup"] = round(base / r["sec_per_step"], 2)
            r["efficiency"] = round(base / r["sec_per_step"] / r["P"], 2)
        if base_cpu:
            r["speedup_cpu_time"] = round(base_cpu / r["cpu_sec_slowest_rank"], 2)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genomamba bench cp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=positive_count, nargs="+", default=[1, 2], help="context-parallel sizes P to time")
    ap.add_argument("--d-model", type=positive_count, default=64)
    ap.add_argument("--n-layer", type=positive_count, default=2)
    ap.add_argument("--d-state", type=positive_count, default=16)
    ap.add_argument("--batch-size", type=positive_count, default=1)
    ap.add_argument("--seq-len", type=positive_count, nargs="+", default=[16384],
                    help="sequence lengths (several: each with every P; a size that runs out of GPU memory "
                         "gets a row saying so, e.g. to find the longest sequence one step reaches)")
    ap.add_argument("--steps", type=positive_count, default=3)
    ap.add_argument("--warmup", type=nonnegative_count, default=1)
    ap.add_argument("--threads", type=positive_count, default=1, help="torch threads per process")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: one GPU per process (NCCL), bf16 autocast unless --no-amp")
    ap.add_argument("--no-amp", action="store_true", help="fp32 on cuda")
    ap.add_argument("--reference-segment-len", type=positive_count, default=None,
                    help="P = 1 trains segment-wise with segments of this many tokens (a reference for "
                         "sequences one device cannot hold whole)")
    ap.add_argument("--grad-checkpointing", action="store_true",
                    help="every rank recomputes each layer in the backward (activations of one layer at a time "
                         "besides the layer inputs; the exchanges between ranks run again in the recompute)")
    add_results_args(ap, "cp_<device>")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    model = {"d_model": args.d_model, "n_layer": args.n_layer, "d_state": args.d_state, "vocab_size": 11}
    cfg = MambaConfig(**model)
    cuda = args.device == "cuda"
    if cuda and torch.cuda.device_count() < max(args.sizes):
        print(f"genomamba bench cp: --sizes {max(args.sizes)} needs as many GPUs; torch sees "
              f"{torch.cuda.device_count()}", file=sys.stderr)
        return 2
    spec = {"model": model, "batch": args.batch_size, "steps": args.steps,
            "warmup": args.warmup, "threads": args.threads, "device": args.device, "amp": not args.no_amp,
            "reference_segment_len": args.reference_segment_len, "grad_checkpointing": args.grad_checkpointing}
    where = f"{torch.cuda.device_count()} GPUs (NCCL)" if cuda else "CPU (gloo)"
    lengths = ", ".join(str(n) for n in args.seq_len)
    print(f"context parallelism on {where}: d_model={cfg.d_model} n_layer={cfg.n_layer} d_inner={cfg.d_inner} "
          f"d_state={cfg.d_state}, b={args.batch_size} l={lengths}, {args.threads} thread(s) per process"
          + (", layers recomputed in the backward" if args.grad_checkpointing else ""))
    rows = []
    for seq_len in args.seq_len:
        group = []
        for size in args.sizes:
            r = bench_size(size, {**spec, "seq_len": seq_len})
            r["slice_len"] = -(-seq_len // size)
            if r.get("oom"):
                print(f"  P={size} l={seq_len}: out of memory", flush=True)
            else:
                r.update(bytes_per_layer(cfg, args.batch_size, size))
                print(f"  P={size} l={seq_len}: {r['sec_per_step']} s per forward+backward", flush=True)
            group.append(r)
        _compare(group)
        rows += group
    print()
    print_table(rows, ["P", "seq_len", "slice_len", "sec_per_step", "tokens_per_s", "speedup", "efficiency",
                       "cpu_sec_slowest_rank", "speedup_cpu_time", "grad_rel_err_vs_P1", "peak_gib_per_rank",
                       "halo_bytes", "summary_bytes"])
    facts = machine_facts(args.device)
    facts["loadavg_1min_at_start"] = round(os.getloadavg()[0], 2)
    results = {"bench": "cp", "machine": facts, "model": model, "d_inner": cfg.d_inner, "d_conv": cfg.d_conv,
               "batch_size": args.batch_size, "seq_len": args.seq_len if len(args.seq_len) > 1 else args.seq_len[0],
               "threads_per_process": args.threads, "grad_checkpointing": args.grad_checkpointing,
               "steps": args.steps, "backend": "nccl" if cuda else "gloo", "device": args.device,
               "amp_bf16": cuda and not args.no_amp, "reference_segment_len": args.reference_segment_len, "rows": rows,
               "note": "bytes are per rank per layer in forward; backward sends the same again. sec_per_step is "
                       "wall time (slowest rank); cpu_sec_slowest_rank is that rank's CPU time, the step time "
                       "when every process has a core of its own"}
    path = write_results(args.name or f"cp_{args.device}", results, args.out)
    print(f"\nwrote {path}")
    return 0
