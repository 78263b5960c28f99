"""``genomamba bench scan``: the CPU selective-scan paths against a plain sequential PyTorch loop.

For each shape it times, as medians over ``--repeats`` runs after one warm-up:

* ``loop``    the baseline: exp(delta A) and delta B u precomputed as (b, d, l, n)
              tensors, then one Python step per token (x = dA_t * x + dBu_t; y_t = <x, C_t>);
* ``chunked`` the pure-PyTorch fallback, ``genomamba.ops.torch_scan.selective_scan_chunked``;
* ``cpp``     the compiled kernel, ``genomamba.ops.cpu`` (JIT-built before timing starts);

(rows with l >= 8192 take one timed run after the warm-up; loop and chunked are skipped above
``--baseline-max-l``),

forward and forward+backward, with z, D, delta_bias and softplus on (the Mamba block's call), and
prints speed-ups over the loop. Target: ``cpp`` forward >= 20x the loop at b=2, d=256,
n=16, l=2048, fp32 on 2 cores. ``--device cuda`` hands over to ``genomamba.bench.scan_gpu``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from genomamba.bench import scan_gpu
from genomamba.bench.common import add_results_args, machine_facts, positive_count, print_table, write_results
from genomamba.ops import cpu
from genomamba.ops.torch_scan import selective_scan_chunked

# (b, d, n, l); the first row is the target shape.
SHAPES = [(2, 256, 16, 2048), (2, 256, 16, 8192), (1, 64, 16, 1 << 18)]
TARGET_SHAPE, TARGET_SPEEDUP = SHAPES[0], 20.0


def scan_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """The plain sequential baseline: decays and inputs precomputed, one Python step per token."""
    b, d, l = u.shape
    delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dA = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (b, d, l, n)
    dBu = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (b, d, l, n)
    Ct = C.transpose(1, 2).unsqueeze(1)  # (b, 1, l, n)
    x = u.new_zeros(b, d, A.shape[1])
    ys = []
    # unbind once (views): indexing [:, :, t] per step would make autograd build a full-size
    # (b, d, l, n) gradient buffer per step in backward and time that instead of the loop
    for dA_t, dBu_t, C_t in zip(dA.unbind(2), dBu.unbind(2), Ct.unbind(2)):
        x = dA_t * x + dBu_t
        ys.append((x * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    return (y + D[:, None] * u) * F.silu(z)


def _inputs(b, d, n, l, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, l, generator=g).to(dtype)
    delta = (torch.randn(b, d, l, generator=g) * 0.5 - 1.0).to(dtype)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1).to(dtype)  # S4D-real init
    B = torch.randn(b, n, l, generator=g).to(dtype)
    C = torch.randn(b, n, l, generator=g).to(dtype)
    D = torch.ones(d).to(dtype)
    z = torch.randn(b, d, l, generator=g).to(dtype)
    delta_bias = (torch.rand(d, generator=g) * 0.1).to(dtype)
    return [u, delta, A, B, C, D, z, delta_bias]


def _usable_cores() -> int:
    """Cores this process may run on (taskset / cgroup affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _time(fn, repeats: int) -> float:
    """Median wall time in ms over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _paths():
    """name -> callable(u, delta, A, B, C, D, z, delta_bias, softplus), or a note why it is missing."""
    paths, notes = {"loop": scan_loop}, {}
    paths["chunked"] = lambda *a: selective_scan_chunked(*a)
    if cpu.available():
        paths["cpp"] = lambda *a: cpu.selective_scan(*a)
    else:
        notes["cpp"] = f"skipped: {cpu.unavailable_reason}"
    return paths, notes


def bench_shape(shape, paths, repeats, baseline_max_l, dtype=torch.float32):
    b, d, n, l = shape
    rows = []
    base = _inputs(b, d, n, l, dtype)
    cot = torch.randn(b, d, l, generator=torch.Generator().manual_seed(1)).to(dtype)
    ref_out = None
    for name, fn in paths.items():
        if name in ("loop", "chunked") and l > baseline_max_l:
            rows.append({"path": name, "note": f"skipped: l > --baseline-max-l={baseline_max_l}"})
            continue
        reps = repeats if l < 8192 else 1  # long rows: one timed run after the warm-up

        def fwd():
            with torch.no_grad():
                return fn(*base, True)

        grad_in = [t.detach().clone().requires_grad_(True) for t in base]

        def fwd_bwd():
            for t in grad_in:
                t.grad = None
            fn(*grad_in, True).backward(cot)

        row = {"path": name, "fwd_ms": _time(fwd, reps), "fwd_bwd_ms": _time(fwd_bwd, reps)}
        out = fwd()
        if ref_out is None:
            ref_out = out
        else:  # every path computes the same function: report the gap to the first one timed
            row["max_abs_diff"] = float((out.double() - ref_out.double()).abs().max())
        rows.append(row)
        del out
    timed = {r["path"]: r for r in rows if "fwd_ms" in r}
    base_row = timed.get("loop") or timed.get("chunked")
    for r in rows:
        r.update(b=b, d=d, n=n, l=l)
        if base_row is not None and "fwd_ms" in r:
            r["vs"] = base_row["path"]
            r["speedup_fwd"] = base_row["fwd_ms"] / r["fwd_ms"]
            r["speedup_fwd_bwd"] = base_row["fwd_bwd_ms"] / r["fwd_bwd_ms"]
    return rows


def _fmt(rows):
    out = []
    for r in rows:
        f = {"shape (b,d,n,l)": f"{r['b']},{r['d']},{r['n']},{r['l']}", "path": r["path"]}
        if "fwd_ms" in r:
            f["fwd ms"] = f"{r['fwd_ms']:.2f}"
            f["fwd+bwd ms"] = f"{r['fwd_bwd_ms']:.2f}"
            if "vs" in r:
                f["fwd speed-up"] = f"{r['speedup_fwd']:.1f}x vs {r['vs']}"
                f["fwd+bwd speed-up"] = f"{r['speedup_fwd_bwd']:.1f}x vs {r['vs']}"
        else:
            f["fwd ms"] = r.get("note", "")
        out.append(f)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="genomamba bench scan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (GPU backends)")
    p.add_argument("--repeats", type=positive_count, default=5, help="timed runs per measurement (median)")
    p.add_argument("--quick", action="store_true", help="only the target shape")
    p.add_argument("--paths", default="loop,chunked,cpp", help="comma list of paths to time")
    p.add_argument("--baseline-max-l", type=positive_count, default=8192,
                   help="skip the loop and chunked paths above this length (they are very slow at l=2^18)")
    add_results_args(p, "scan_cpu")
    args, rest = p.parse_known_args(argv)
    if args.device.startswith("cuda"):
        return int(scan_gpu.main(argv) or 0)
    if args.device != "cpu":
        print(f"genomamba bench scan: --device {args.device!r}: expected cpu or cuda", file=sys.stderr)
        return 2
    if rest:  # the GPU bench's options (--rows, --knob, ...) mean nothing to the CPU one
        print(f"genomamba bench scan: {' '.join(rest)}: not an option of the CPU bench (the GPU bench's options, "
              f"such as --rows, --knob and --rounds, need --device cuda)", file=sys.stderr)
        return 2

    paths, notes = _paths()
    wanted = [x.strip() for x in args.paths.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in ("loop", "chunked", "cpp")]
    if unknown or not wanted:
        print(f"genomamba bench scan: --paths {args.paths!r}: expected a comma list of loop, chunked, cpp",
              file=sys.stderr)
        return 2
    paths = {k: v for k, v in paths.items() if k in wanted}
    notes = {k: v for k, v in notes.items() if k in wanted}
    for name, note in notes.items():
        print(f"{name}: {note}")
    shapes = SHAPES[:1] if args.quick else SHAPES
    print(f"selective scan, CPU, fp32, torch threads = {torch.get_num_threads()}, "
          f"usable cores = {_usable_cores()}, "
          f"z/D/delta_bias/softplus on, median of {args.repeats}\n")
    rows = []
    for shape in shapes:
        rows += bench_shape(shape, paths, args.repeats, args.baseline_max_l)
    cols = ["shape (b,d,n,l)", "path", "fwd ms", "fwd+bwd ms", "fwd speed-up", "fwd+bwd speed-up"]
    print_table(_fmt(rows), cols)
    target = next((r for r in rows if r["path"] == "cpp" and (r["b"], r["d"], r["n"], r["l"]) == TARGET_SHAPE
                   and r.get("vs") == "loop"), None)
    verdict = None
    if target is not None:
        verdict = target["speedup_fwd"] >= TARGET_SPEEDUP
        print(f"\ntarget: cpp forward >= {TARGET_SPEEDUP:.0f}x the loop at b,d,n,l = {TARGET_SHAPE}: "
              f"{target['speedup_fwd']:.1f}x -> {'met' if verdict else 'NOT met'}")
    payload = {
        "bench": "scan_cpu",
        "machine": {**machine_facts("cpu"), "usable_cores": _usable_cores()},
        "dtype": "float32",
        "options": {"z": True, "D": True, "delta_bias": True, "delta_softplus": True, "repeats": args.repeats},
        "shapes": [dict(zip("bdnl", s)) for s in shapes],
        "notes": notes,
        "target": {"shape": dict(zip("bdnl", TARGET_SHAPE)), "speedup_fwd_vs_loop": TARGET_SPEEDUP,
                   "met": verdict},
        "rows": rows,
    }
    path = write_results(args.name or "scan_cpu", payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
