"""``genomamba bench profile``: where one training step (or one inference forward) spends its time.

Builds a ``MambaLM`` of the given shape with random weights, runs warm-up steps, times
``--steps`` steps by wall clock, then records one more under ``torch.profiler`` and prints the
operators that take the most device time (CPU time on CPU). It also reports the profiled step's
summed kernel time next to its wall time: a step whose kernels fill only a small share of its
wall time waits on the host (launches, synchronisations, allocations), not on the GPU.

    genomamba bench profile --device cuda --d-model 256 --n-layer 8 --batch 1 --seq-len 65536
    genomamba bench profile --device cuda --mode forward --dtype bfloat16 --n-layer 16 --seq-len 1048576
    genomamba bench profile --device cuda --seq-len 1048576 --segment-len 131072   # segment-wise training
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from genomamba.bench.common import (
    add_results_args,
    cuda_requested,
    machine_facts,
    nonnegative_count,
    positive_count,
    write_results,
)
from genomamba.config import MambaConfig
from genomamba.models.lm import MambaLM
from genomamba.models.segmented import next_token_loss, segmented_loss

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genomamba bench profile", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", choices=("train", "forward"), default="train",
                   help="train: forward + backward + AdamW step (bf16 autocast on cuda); forward: inference")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--segment-len", type=int, default=None,
                   help="train segment-wise (segmented_loss); forward: read the input in segments")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="forward mode: the weights' dtype (default bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--warmup", type=nonnegative_count, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps before the profiled one")
    p.add_argument("--top", type=positive_count, default=20, help="operators listed")
    p.add_argument("--threads", type=positive_count, default=None)
    add_results_args(p, "profile_<mode>_<device>")
    return p


def _step_fn(model, ids, mode: str, cuda: bool, segment_len: Optional[int]):
    if mode == "forward":
        def forward():
            with torch.inference_mode():
                return model(ids)
        return forward
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)

    segment = next_token_loss(ids)

    def train():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            if segment_len:
                loss, _ = segmented_loss(model, ids[:, :-1], segment_len, segment, normalizer=ids[:, 1:].numel())
            else:
                lg = model(ids[:, :-1])
                loss = F.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return train


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


# rows the profiler reports on the device that are its own bookkeeping, not the step's work
PROFILER_ROWS = ("Activity Buffer Request",)


def device_rows(events) -> list:
    """The profiler rows that are work on the GPU (kernels, copies, memsets). Operators carry the
    device time of the kernels they launched as their own self device time too (a custom op, an
    autograd node, a replayed CUDA graph), so summing over every row would count that time twice."""
    return [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA and e.key not in PROFILER_ROWS]


def profile_ops(step, cuda: bool, top: int, runs: int = 1) -> dict:
    """``step()`` run ``runs`` times under ``torch.profiler``: the ``top`` operators (on a GPU: kernels,
    copies and memsets) by self device time (CPU time on CPU), each as ms and calls per run and as a
    share of the summed self time; ``summed_self_time_s`` and ``profiled_step_s`` (wall) are per run too."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t1 = time.perf_counter()
        for _ in range(runs):
            step()
        _sync(cuda)
        wall = (time.perf_counter() - t1) / runs
    events = device_rows(prof.key_averages()) if cuda else prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(events, key=lambda e: getattr(e, key, 0.0), reverse=True)
    total = sum(getattr(e, key, 0.0) for e in events) / 1e6 / runs  # seconds of self time a run
    ops = [{"name": e.key, "calls": e.count // runs if e.count % runs == 0 else round(e.count / runs, 2),
            "self_ms": round(getattr(e, key, 0.0) / 1e3 / runs, 3),
            "share": round(getattr(e, key, 0.0) / 1e6 / runs / total, 4) if total else 0.0} for e in rows[:top]]
    return {"top": ops, "summed_self_time_s": total, "profiled_step_s": wall}


def run_profile(cfg: MambaConfig, batch: int, seq_len: int, mode: str, device: str, dtype=None,
                segment_len: Optional[int] = None, warmup: int = 2, steps: int = 3, top: int = 20) -> dict:
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    model = MambaLM(cfg).to(device)
    if mode == "forward":
        model = model.to(dtype or (torch.bfloat16 if cuda else torch.float32)).eval()
        model.set_segment_len(segment_len)  # chunked with state passing: memory of one segment
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + (1 if mode == "train" else 0)), device=device)
    step = _step_fn(model, ids, mode, cuda, segment_len)
    for _ in range(warmup):
        step()
    _sync(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(cuda)
    wall = (time.perf_counter() - t0) / max(1, steps)
    prof = profile_ops(step, cuda, top)
    profiled_wall, total, ops = prof["profiled_step_s"], prof["summed_self_time_s"], prof["top"]
    out = {"mode": mode, "d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
           "batch": batch, "seq_len": seq_len, "segment_len": segment_len, "device": device,
           "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
           "amp_bf16": cuda and mode == "train", "sec_per_step": round(wall, 5),
           "tokens_per_s": round(batch * seq_len / wall, 1), "profiled_step_s": round(profiled_wall, 5),
           "summed_self_time_s": round(total, 5), "top": ops}
    if cuda:
        out["kernel_share_of_wall"] = round(total / profiled_wall, 3) if profiled_wall else None
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cuda = cuda_requested("profile", args.device)
    if cuda is None:
        return 2
    for name in ("d_model", "n_layer", "vocab", "batch", "seq_len", "steps"):
        if getattr(args, name) < 1:
            print(f"genomamba bench profile: --{name.replace('_', '-')}: expected a positive int, "
                  f"got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=args.vocab)
    res = run_profile(cfg, args.batch, args.seq_len, args.mode, args.device,
                      DTYPES[args.dtype] if args.dtype else None, args.segment_len, args.warmup, args.steps, args.top)
    unit = "device" if cuda else "CPU"
    print(f"{args.mode}: d_model {cfg.d_model} x {cfg.n_layer}, b={args.batch} l={args.seq_len}"
          f"{f' segments of {args.segment_len}' if args.segment_len else ''} on {args.device}: "
          f"{res['tokens_per_s']:,.0f} tokens/s ({res['sec_per_step'] * 1e3:.1f} ms per step)")
    if cuda:
        print(f"profiled step: {res['profiled_step_s'] * 1e3:.1f} ms wall, {res['summed_self_time_s'] * 1e3:.1f} ms "
              f"of kernels ({res['kernel_share_of_wall']:.0%}); peak {res['peak_mem_gib']} GiB")
    print(f"\n{'self ' + unit + ' ms':>14}  {'share':>6}  {'calls':>6}  operator")
    for op in res["top"]:
        print(f"{op['self_ms']:>14.3f}  {op['share']:>6.1%}  {op['calls']:>6}  {op['name'][:90]}")
    results = {"bench": "profile", "machine": machine_facts(args.device), **res}
    path = write_results(args.name or f"profile_{args.mode}_{'cuda' if cuda else 'cpu'}", results, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
