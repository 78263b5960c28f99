"""GPU selective-scan benchmark: five Mamba-layer shapes for every GPU backend.

``genomamba bench scan --device cuda`` lands here (``main(argv)``). For each shape and backend it
times the forward and forward+backward (median of ``triton.testing.do_bench``), reports each as a
fraction of the measured device-to-device copy bandwidth (bytes = the fewest a fused kernel must
move: every input read once, every output written once) and as a speed-up over the official
mamba_ssm 2.3.2 times on an H100 (``ANCHORS``). Writes JSON via ``write_results``.
"""

from __future__ import annotations

import argparse
import importlib
import re

import torch

from genomamba.bench.common import (
    add_results_args,
    knobs_set,
    machine_facts,
    nonnegative_count,
    positive_count,
    print_table,
    write_results,
)
from genomamba.bench.common import knob_settings as common_knob_settings
from genomamba.ops.torch_scan import selective_scan_chunked

# (b, d, n, l, dtype): the benchmark's rows, with z, D, delta_bias, softplus, A = -(1..n)
ROWS = [
    (8, 1536, 16, 2048, "bf16"),
    (8, 1536, 16, 2048, "fp32"),
    (1, 1536, 16, 65536, "bf16"),
    (2, 512, 16, 262144, "bf16"),
    (1, 256, 16, 1048576, "bf16"),
]
# official mamba_ssm 2.3.2 on an H100 80GB HBM3, torch 2.11+cu130: shape -> (fwd ms, fwd+bwd ms)
ANCHORS = {
    (8, 1536, 16, 2048, "bf16"): (0.451, 2.47),
    (8, 1536, 16, 2048, "fp32"): (0.883, 3.27),
    (1, 1536, 16, 65536, "bf16"): (2.21, 10.6),
    (1, 256, 16, 1048576, "bf16"): (10.2, 37.9),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    from triton.testing import do_bench

    src = torch.empty(nbytes // 4, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * nbytes / (ms * 1e-3)


def make_inputs(b, d, n, l, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = DTYPES[dtype]

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(dt)

    return dict(
        u=r(b, d, l),
        delta=r(b, d, l, scale=0.5),
        A=-torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(d, 1),
        B=r(b, n, l),
        C=r(b, n, l),
        D=torch.randn(d, device="cuda"),
        z=r(b, d, l),
        # softplus(-4 + noise) ~ 0.02: the usual Mamba time-step range
        delta_bias=torch.randn(d, device="cuda") * 0.5 - 4.0,
        delta_softplus=True,
    )


def min_bytes(b, d, n, l, dtype, bwd: bool) -> int:
    e = torch.finfo(DTYPES[dtype]).bits // 8
    fwd = (4 * b * d * l + 2 * b * n * l) * e  # u, delta, z, B, C in; out
    if not bwd:
        return fwd
    # backward: u, delta, z, B, C, dout in; du, ddelta, dz, dB, dC out
    return fwd + (7 * b * d * l + 4 * b * n * l) * e


def _scan_fn(backend: str):
    if backend == "torch":
        return selective_scan_chunked
    return importlib.import_module(f"genomamba.ops.{backend}").selective_scan


def kernel_rows(step, top: int, runs: int = 3) -> dict:
    """The ``top`` kernels of ``step()`` (one scan forward+backward) by self CUDA time, per run of
    ``runs`` profiled runs, and their summed time: where a row's time goes."""
    from genomamba.bench.profile import profile_ops

    prof = profile_ops(step, True, top, runs=runs)
    return {"kernels": [{"kernel": op["name"], "us": round(op["self_ms"] * 1e3, 1), "calls": op["calls"]}
                        for op in prof["top"] if op["self_ms"] > 0],
            "kernel_us_per_fwdbwd": round(prof["summed_self_time_s"] * 1e6, 1)}


def bench_one(backend, shape, bw, warmup=25, rep=100, kernels: int = 0):
    from triton.testing import do_bench

    b, d, n, l, dtype = shape
    fn = _scan_fn(backend)
    kw = make_inputs(b, d, n, l, dtype)

    def fwd():
        return fn(**kw)

    t_f = do_bench(fwd, warmup=warmup, rep=rep, return_mode="median")
    leaves = [kw[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    for t in leaves:
        t.requires_grad_(True)
    gout = torch.randn(b, d, l, device="cuda").to(DTYPES[dtype])

    def fwd_bwd():
        out = fn(**kw)
        torch.autograd.grad(out, leaves, gout)

    t_fb = do_bench(fwd_bwd, warmup=warmup, rep=rep, return_mode="median")
    anchor = ANCHORS.get(shape)
    row = {
        "backend": backend,
        "shape": f"{b},{d},{n},{l} {dtype}",
        "fwd_ms": round(t_f, 4),
        "fwdbwd_ms": round(t_fb, 4) if t_fb else None,
        "fwd_bw_frac": round(min_bytes(*shape, bwd=False) / (t_f * 1e-3) / bw, 3),
        "fwdbwd_bw_frac": round(min_bytes(*shape, bwd=True) / (t_fb * 1e-3) / bw, 3) if t_fb else None,
        "mamba_fwd_ms": anchor[0] if anchor else None,
        "mamba_fwdbwd_ms": anchor[1] if anchor else None,
        "speedup_fwd": round(anchor[0] / t_f, 2) if anchor else None,
        "speedup_fwdbwd": round(anchor[1] / t_fb, 2) if anchor and t_fb else None,
    }
    if kernels:
        row.update(kernel_rows(fwd_bwd, kernels))
    torch.cuda.empty_cache()
    return row


def _layouts(shape) -> dict:
    """The CUDA forward layouts a row's inference and training forwards ran (for the JSON)."""
    from genomamba.ops.cuda.knobs import forward_layout

    b, d, n, l, dtype = shape
    return {"cuda_forward": forward_layout(b, d, n, l, DTYPES[dtype]),
            "cuda_training_forward": forward_layout(b, d, n, l, DTYPES[dtype], training=True)}


def knob_row(shape, bw: float, update: dict, label: str, kernels: int = 0) -> dict:
    """One row of the cuda backend timed with the knob setting ``update``; its layout columns are
    those of that setting (a knob may change the forward's lanes, tiles or segments)."""
    with knobs_set(update):
        row = bench_one("cuda", shape, bw, kernels=kernels)
        row.update(_layouts(shape))
    row["backend"] = label
    return row


def print_row(row: dict) -> None:
    """A finished row as it is stored (its kernels, if profiled, one per line below it)."""
    print({k: v for k, v in row.items() if k != "kernels"}, flush=True)
    for k in row.get("kernels", []):
        print(f"    {k['us']:>10.1f} us  x{k['calls']:<5} {k['kernel'][:100]}", flush=True)


def knob_settings(specs: list) -> list:
    """``["name=1,2", "other=8"]`` -> every combination as (CONFIG update, row label); see
    :func:`genomamba.bench.common.knob_settings`."""
    return common_knob_settings(specs, "scan")


def row_indices(text: str) -> list:
    """argparse type of ``--rows``: ``all`` or a comma list of row numbers (0-based) of ``ROWS``."""
    if text.strip() == "all":
        return list(range(len(ROWS)))
    want = f"expected 'all' or a comma list of row numbers 0..{len(ROWS) - 1}, got {text!r}"
    try:
        idx = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(want) from None
    if any(not 0 <= i < len(ROWS) for i in idx):
        raise argparse.ArgumentTypeError(want)
    return idx


def schedule(settings: list, rounds: int) -> list:
    """The order the knob settings are timed in: ``rounds`` passes over all of them (A B A B), so a
    drift of the machine's speed during the run falls on every setting alike; (round, update, label)."""
    return [(rnd, update, label) for rnd in range(rounds) for update, label in settings]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="genomamba bench scan --device cuda", description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--backends",
        default="cuda,triton,torch",
        help="comma list among cuda, triton, torch (unavailable ones are skipped)",
    )
    p.add_argument("--rows", type=row_indices, default="all", help="comma list of row indices (0-based) or 'all'")
    p.add_argument(
        "--torch-max-len",
        type=int,
        default=2048,
        help="skip the torch fallback above this l (it is far slower; the table is about kernels)",
    )
    p.add_argument("--cuda-variants", default="", help="e.g. 16:32768,16:8192,4:98304 (npt:target_threads)")
    p.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="time the cuda backend at each value of a knob of genomamba.ops.cuda.CONFIG (repeatable: "
        "every combination), e.g. --knob bwd_states_per_sync=1,4,16; one row per setting",
    )
    p.add_argument("--rounds", type=positive_count, default=1,
                   help="with --knob: time the settings this many times, interleaved (A B A B), one row each")
    p.add_argument("--kernels", type=nonnegative_count, default=0, metavar="N",
                   help="also profile each row's forward+backward (torch.profiler, three runs) and keep its N "
                   "most expensive kernels, in microseconds per run, in the row (0: no profile)")
    add_results_args(p, "scan_<device>")
    # `genomamba bench scan` passes its whole argv (CPU-only flags included): ignore what is not ours
    args, _ = p.parse_known_args(argv)
    if not torch.cuda.is_available():
        print("genomamba bench scan --device cuda: no CUDA device")
        return 1
    rounds = args.rounds if args.knob else 1  # rounds interleave knob settings; without, one pass
    rows = [ROWS[i] for i in args.rows]
    # CUDA variants (npt, target_threads) to time; the first is the shipped default
    cuda_variants = [
        ({"npt": npt, "target_threads": target}, f"cuda[npt{npt},t{target // 1024}k]")
        for npt, target in (tuple(int(x) for x in v.split(":")) for v in args.cuda_variants.split(",") if v)
    ]
    if args.knob:
        cuda_variants = knob_settings(args.knob)
    backends = []
    for name in args.backends.split(","):
        if name == "torch":
            backends.append(name)
            continue
        try:
            mod = importlib.import_module(f"genomamba.ops.{name}")
            if mod.available() and hasattr(mod, "selective_scan"):
                backends.append(name)
            else:
                print(f"backend {name}: not available here, skipped")
        except Exception as exc:  # a backend that cannot load is reported, not fatal
            print(f"backend {name}: {type(exc).__name__}: {exc}; skipped")
    facts = machine_facts("cuda")
    slug = re.sub(r"[^a-z0-9]+", "_", facts.get("device_name", "gpu").lower()).strip("_")
    bw = copy_bandwidth()
    print(f"device-to-device copy: {bw / 1e12:.2f} TB/s (read + write)")
    results = []

    def save():  # after every row, so a run cut short still leaves its numbers
        return write_results(args.name or f"scan_{slug}", payload, args.out)

    payload = {
        "machine": facts,
        "copy_bandwidth_TBps": round(bw / 1e12, 3),
        "setup": "z, D, delta_bias, delta_softplus=True, A = -(1..n); B/C (b, n, l) in the input dtype; "
        "median of triton.testing.do_bench; bytes = inputs read once + outputs written once",
        "anchors": "official mamba_ssm 2.3.2 on H100 80GB HBM3, torch 2.11+cu130",
        "rows": results,
    }
    if "cuda" in backends:
        import genomamba.ops.cuda as cu

        payload["cuda"] = {"self_test": dict(cu.STATUS), "config": dict(cu.CONFIG),
                           "backward": "cuda v2" if cu.cuda_backward_enabled() else "triton"}
    for shape in rows:
        for be in backends:
            if be == "torch" and shape[3] > args.torch_max_len:
                continue
            if be == "cuda" and cuda_variants:
                for rnd, update, label in schedule(cuda_variants, rounds):
                    row = knob_row(shape, bw, update, label, kernels=args.kernels)
                    if rounds > 1:
                        row["round"] = rnd
                    results.append(row)
                    print_row(row)
                    save()
                continue
            try:
                results.append(bench_one(be, shape, bw, kernels=args.kernels))
                if be == "cuda":
                    results[-1].update(_layouts(shape))
            except Exception as exc:
                results.append({"backend": be, "shape": f"{shape}", "error": f"{type(exc).__name__}: {exc}"})
                torch.cuda.empty_cache()
            print_row(results[-1])
            save()
    path = save()
    cols = [
        "backend",
        *(["round"] if rounds > 1 else []),
        "shape",
        "fwd_ms",
        "fwdbwd_ms",
        "fwd_bw_frac",
        "fwdbwd_bw_frac",
        "speedup_fwd",
        "speedup_fwdbwd",
        "error",
    ]
    print_table(results, cols)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
