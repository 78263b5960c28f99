"""One-call GPU session script (issue 5): build the CUDA extension, quick parity of each GPU scan
backend vs the fp64 oracle, and a Triton tile-size sweep. Prints a short table; ``--out`` writes JSON.

    PYTHONPATH=. python3 -m genomamba.bench.gpu_check --out $OUT/check.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from genomamba.bench.scan_gpu import make_inputs
from genomamba.ops.reference import selective_scan_ref


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def parity(backend_fn, cases):
    rows = []
    for b, d, n, l, dtype, groups in cases:
        kw = make_inputs(b, d, n, l, dtype)
        if groups:
            g = torch.Generator(device="cuda").manual_seed(3)
            kw["B"] = torch.randn(b, groups, n, l, device="cuda", generator=g).to(kw["u"].dtype)
            kw["C"] = torch.randn(b, groups, n, l, device="cuda", generator=g).to(kw["u"].dtype)
        h0 = torch.randn(b, d, n, device="cuda")
        with torch.no_grad():
            out, st = backend_fn(**kw, initial_state=h0, return_final_state=True)
            ref = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
            rout, rst = selective_scan_ref(**ref, initial_state=h0.double(), return_final_state=True)
        rows.append(
            dict(
                shape=f"{b},{d},{n},{l} {dtype} g={groups}",
                out=rel(out, rout),
                state=rel(st, rst),
                finite=bool(torch.isfinite(out).all()),
            )
        )
    return rows


def sweep_triton(configs, shapes):
    from triton.testing import do_bench

    from genomamba.bench.scan_gpu import _scan_fn
    from genomamba.ops.triton import scan

    fn = _scan_fn("triton")
    rows = []
    for shape in shapes:
        b, d, n, l, dtype = shape
        kw = make_inputs(b, d, n, l, dtype)
        leaves = [kw[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
        gout = torch.randn(b, d, l, device="cuda").to(kw["u"].dtype)
        for which, cfg in configs:
            saved = dict(scan.CONFIG[which])
            scan.CONFIG[which].update(cfg)
            try:
                if which == "fwd":
                    with torch.no_grad():
                        t = do_bench(lambda: fn(**kw), warmup=10, rep=40, return_mode="median")
                else:
                    for x in leaves:
                        x.requires_grad_(True)

                    def fb():
                        torch.autograd.grad(fn(**kw), leaves, gout)

                    t = do_bench(fb, warmup=5, rep=40, return_mode="median")
                    for x in leaves:
                        x.requires_grad_(False)
                rows.append(dict(shape=str(shape), which=which, cfg=str(cfg), ms=round(t, 4)))
            except Exception as exc:
                rows.append(
                    dict(shape=str(shape), which=which, cfg=str(cfg), error=f"{type(exc).__name__}: {exc}"[:200])
                )
            finally:
                scan.CONFIG[which].clear()
                scan.CONFIG[which].update(saved)
            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--no-sweep", action="store_true")
    args = p.parse_args(argv)
    res = {}
    t = time.time()
    import genomamba.ops.cuda as cu

    res["cuda_available"] = cu.available()
    res["cuda_build_s"] = round(time.time() - t, 1)
    print("cuda available:", res["cuda_available"], "build s:", res["cuda_build_s"], flush=True)
    cases = [
        (2, 64, 16, 1000, "fp32", None),
        (1, 64, 16, 20000, "fp32", None),
        (2, 48, 5, 333, "fp32", 4),
        (1, 256, 16, 4096, "bf16", None),
        (2, 96, 16, 777, "fp16", 2),
    ]
    from genomamba.ops.triton.scan import selective_scan as tri

    res["parity_triton"] = parity(tri, cases)
    if res["cuda_available"]:
        saved = dict(cu.CONFIG)
        # v1 variants (the v2 kernels and their A/B runs live in genomamba.bench.gpu_verify)
        for npt, target in ((16, 32 * 1024), (16, 8 * 1024), (4, 96 * 1024)):
            cu.CONFIG.update(variant="v1", npt=npt, target_threads=target)
            res[f"parity_cuda_npt{npt}_t{target // 1024}k"] = parity(cu.selective_scan, cases)
        cu.CONFIG.update(saved)
    for k in [k for k in res if k.startswith("parity")]:
        for r in res[k]:
            print(k, r, flush=True)
    if not args.no_sweep:
        configs = [
            ("fwd", dict(BD=d_, BL=l_, num_warps=w))
            for d_, l_, w in [(8, 64, 4), (4, 32, 4), (2, 64, 4), (4, 64, 8), (16, 16, 4), (2, 32, 2), (1, 64, 2)]
        ]
        configs += [
            ("bwd", dict(BD=d_, BL=l_, num_warps=w))
            for d_, l_, w in [(8, 32, 4), (4, 32, 4), (2, 32, 4), (4, 16, 4), (2, 64, 8), (1, 32, 2)]
        ]
        res["sweep"] = sweep_triton(configs, [(8, 1536, 16, 2048, "bf16"), (1, 256, 16, 1 << 20, "bf16")])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
