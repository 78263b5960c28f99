"""One-call GPU verification of the CUDA selective-scan kernels (issue 5), for a session with a GPU.

Phases, each in its own child process (a kernel that faults cannot take the others down) with its
own time limit, each writing ``<out>/<phase>.json``:

  build    JIT build + the per-part self-test (genomamba.ops.cuda.STATUS: v1, v2, bwd)
  sanitize only if v2 or bwd failed its self-test: compute-sanitizer memcheck on a small case
  parity   v1 fwd, v2 fwd (every kitems/warps variant) and the v2 backward vs the fp64 oracle on
           the edge lengths (1, 7, chunk-1, chunk, chunk+1, tile boundaries, 1000, 2^20)
  determ   v2 backward bit-identical across two runs (l = 2048, 100000, bf16, grouped)
  bench    every row of issue 5's table for each forward variant and each fwd+bwd variant

then prints one short table last and writes ``<out>/verify.json``. Run on the device machine:

    PYTHONPATH=. python3 -m genomamba.bench.gpu_verify --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

# forward variants: (label, CONFIG overrides); fwd+bwd variants: the same for training
FWD_VARIANTS = [
    ("v1[npt4,t96k]", dict(variant="v1", npt=4, target_threads=96 * 1024, fwd_lean=0)),
    ("v2[k16,w4]", dict(variant="v2", kitems=16, warps=4, fwd_lean=0)),
    ("v2[k8,w4]", dict(variant="v2", kitems=8, warps=4, fwd_lean=0)),
    ("v2[k16,w8]", dict(variant="v2", kitems=16, warps=8, fwd_lean=0)),
    ("v2[k16,w4,tw4x]", dict(variant="v2", kitems=16, warps=4, target_warps=-4, fwd_lean=0)),  # 4x the warps target
    ("v2lean[k16,w4]", dict(variant="v2", kitems=16, warps=4, fwd_lean=1)),  # fwd_kernel<..., true>
]
BWD_VARIANTS = [
    ("v2bwd[k8,wb8,occ2]", dict(variant="v2", kitems_train=8, warps_fwd_train=4, warps_bwd=8, bwd_min_blocks=2,
                                 fwd_lean=0)),
    ("v2bwd[k8,wb8,occ1]", dict(variant="v2", kitems_train=8, warps_fwd_train=4, warps_bwd=8, bwd_min_blocks=1,
                                 fwd_lean=0)),
    ("v2bwd[k8,wb4,occ2]", dict(variant="v2", kitems_train=8, warps_fwd_train=4, warps_bwd=4, bwd_min_blocks=2,
                                 fwd_lean=0)),
    ("v2bwd[k16,wb4,occ1]", dict(variant="v2", kitems_train=16, warps_fwd_train=4, warps_bwd=4, bwd_min_blocks=1,
                                 fwd_lean=0)),
    ("v2bwd-lean[k8,wb8,occ2]", dict(variant="v2", kitems_train=8, warps_fwd_train=4, warps_bwd=8, bwd_min_blocks=2,
                                     fwd_lean=1)),
]
LENGTHS = [1, 7, 63, 64, 65, 255, 256, 257, 511, 512, 513, 1000, 4097]


def _config(overrides: dict):
    """Apply CONFIG overrides (target_warps < 0: that many times 64 warps per SM)."""
    import genomamba.ops.cuda as cu

    saved = dict(cu.CONFIG)
    cu.CONFIG.update(overrides)
    if cu.CONFIG.get("target_warps", 0) < 0:
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        cu.CONFIG["target_warps"] = -cu.CONFIG["target_warps"] * 64 * sms
    return saved


def _inputs(b, d, n, l, dtype, groups=None, seed=0, bench=False):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(dtype)

    bc = (b, n, l) if groups is None else (b, groups, n, l)
    if bench:  # issue 5's setup: A = -(1..n), delta_bias ~ -4 (delta ~ 0.02 after softplus)
        A = -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(d, 1)
        bias = torch.randn(d, device="cuda", generator=g) * 0.5 - 4.0
    else:
        A = -(torch.rand(d, n, device="cuda", generator=g) * 2 + 0.2)
        bias = torch.randn(d, device="cuda", generator=g) * 0.3
    return dict(
        u=r(b, d, l), delta=r(b, d, l, scale=0.5), A=A, B=r(*bc), C=r(*bc), D=torch.randn(d, device="cuda"),
        z=r(b, d, l), delta_bias=bias, delta_softplus=True,
    )


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _write(out: Path, phase: str, payload) -> None:
    (out / f"{phase}.json").write_text(json.dumps(payload, indent=1, default=str))


# ----------------------------------------------------------------------------- phases


def phase_build(out: Path):
    t = time.time()
    import genomamba.ops.cuda as cu

    ok = cu.available()
    res = dict(available=ok, build_and_selftest_s=round(time.time() - t, 1), status=dict(cu.STATUS),
               failed=cu._failed, device=torch.cuda.get_device_name())
    _write(out, "build", res)
    print("build:", res, flush=True)


def phase_sanitize(out: Path):
    cs = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not Path(cs).exists():
        _write(out, "sanitize", dict(skipped="compute-sanitizer not found"))
        return
    code = (
        "import torch, genomamba.ops.cuda as cu\n"
        "cu._build()\n"
        "ins, h0 = cu._inputs(1, 16, 16, 700, torch.float32, 2)\n"
        "leaves = [t.clone().requires_grad_(True) for t in ins + [h0]]\n"
        "out, st = cu._v2_apply(*leaves[:8], True, leaves[8], 8, 4, 3, 1, 1)\n"
        "torch.autograd.grad((out, st), leaves, (torch.ones_like(out), torch.ones_like(st)))\n"
        "torch.cuda.synchronize(); print('sanitize case done')\n"
    )
    env = dict(os.environ, GENOMAMBA_CUDA_SELFTEST_CHILD="1")
    r = subprocess.run([cs, "--tool", "memcheck", sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, timeout=240)
    res = dict(rc=r.returncode, tail=(r.stdout + r.stderr)[-4000:])
    _write(out, "sanitize", res)
    print("sanitize rc", r.returncode, res["tail"][-1500:], flush=True)


_REF: dict = {}


def _parity_case(b, d, n, l, dtype, groups, grads):
    """One case vs the fp64 oracle; inputs and oracle results are cached across variants."""
    import genomamba.ops.cuda as cu
    from genomamba.ops.reference import selective_scan_ref

    key = (b, d, n, l, dtype, groups, grads)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    if key not in _REF:
        kw = _inputs(b, d, n, l, dtype, groups)
        kw["initial_state"] = torch.randn(b, d, n, device="cuda")
        ref = {k: kw[k].double().requires_grad_(grads) for k in names}
        with torch.set_grad_enabled(grads):
            if l <= 20000:
                rout, rst = selective_scan_ref(**ref, delta_softplus=True, return_final_state=True)
            else:  # l = 2^20: the fp64 chunked torch path stands in for the sequential oracle
                from genomamba.ops.torch_scan import selective_scan_chunked

                rout, rst = selective_scan_chunked(**ref, delta_softplus=True, return_final_state=True)
        g = torch.Generator(device="cuda").manual_seed(1)
        go = torch.randn(rout.shape, device="cuda", generator=g).to(dtype)
        gs = torch.randn(rst.shape, device="cuda", generator=g)
        rg = torch.autograd.grad((rout, rst), [ref[k] for k in names], (go.double(), gs.double())) if grads else ()
        _REF[key] = (kw, rout.detach(), rst.detach(), go, gs, rg)
    kw, rout, rst, go, gs, rg = _REF[key]
    leaves = {k: kw[k].clone().requires_grad_(grads) for k in names}
    with torch.set_grad_enabled(grads):
        out, st = cu.selective_scan(**leaves, delta_softplus=True, return_final_state=True)
    row = dict(shape=f"{b},{d},{n},{l} {str(dtype)[6:]} g={groups}", out=_rel(out, rout), state=_rel(st, rst))
    if grads:
        ga = torch.autograd.grad((out, st), [leaves[k] for k in names], (go, gs))
        for k, a, r in zip(names, ga, rg):
            row[f"d{k}"] = _rel(a, r)
    tol = (1e-4, 1e-3) if dtype == torch.float32 else (2e-2, 3e-2)
    worst_out = max(row["out"], row["state"])
    worst_grad = max([v for k, v in row.items() if k.startswith("d")], default=0.0)
    row["ok"] = bool(worst_out < tol[0] and worst_grad < tol[1])  # NaN compares False: not ok
    return row


def phase_parity(out: Path, quick: bool):
    """Most informative first (the phase is time-boxed; rows are written as they come): the
    default v2 forward and backward on every small case, v1, the l = 2^20 cases, then the other
    variants."""
    import genomamba.ops.cuda as cu

    cu._build()
    rows = []
    lengths = LENGTHS[:4] if quick else LENGTHS
    cases = [(2, 64, 16, l, torch.float32, None) for l in lengths]
    cases += [(2, 48, 5, 333, torch.float32, 4), (1, 256, 16, 4096, torch.bfloat16, None),
              (2, 96, 16, 777, torch.float16, 2), (1, 24, 16, 3000, torch.float32, 3)]
    big_fwd = (1, 8, 16, 1 << 20, torch.float32, None)
    big_bwd = (1, 4, 16, 1 << 20, torch.float32, None)
    bwd_ok = cu.cuda_backward_enabled() or cu._unverified_ok()  # the driver sets UNVERIFIED here
    fwd, bwd = dict(FWD_VARIANTS), dict(BWD_VARIANTS)
    f0, f1, b0 = FWD_VARIANTS[1][0], FWD_VARIANTS[0][0], BWD_VARIANTS[0][0]
    plan = [(f0, c, False) for c in cases]
    plan += [(b0, c, True) for c in cases] if bwd_ok else []
    plan += [(f1, c, False) for c in cases]
    plan += [(f0, big_fwd, False), (f1, big_fwd, False)] + ([(b0, big_bwd, True)] if bwd_ok and not quick else [])
    if not quick:
        plan += [(lab, c, False) for lab, _ in FWD_VARIANTS[2:] for c in cases]
        plan += [(lab, c, True) for lab, _ in BWD_VARIANTS[1:] for c in cases] if bwd_ok else []
    if not bwd_ok:
        rows.append(dict(variant="v2bwd", skipped=f"CUDA backward not enabled: {cu.STATUS}"))
    for label, case, grads in plan:
        saved = _config((bwd if grads else fwd)[label])
        try:
            row = _parity_case(*case, grads=grads)
        except Exception as exc:
            row = dict(shape=str(case), error=f"{type(exc).__name__}: {exc}"[:300], ok=False)
        finally:
            used = cu.forward_variant() if not grads else "v2+cuda-bwd" if cu.cuda_backward_enabled() else "?"
            used += "+lean" if cu.use_lean(case[4], training=grads) else ""
            cu.CONFIG.clear()
            cu.CONFIG.update(saved)
        row["variant"], row["used"] = label, used  # what actually ran (a failed v2 falls back)
        rows.append(row)
        print(row, flush=True)
        _write(out, "parity", rows)
    _write(out, "parity", rows)


def phase_determ(out: Path):
    import genomamba.ops.cuda as cu

    cu._build()
    rows = []
    if not cu.cuda_backward_enabled():
        _write(out, "determ", [dict(skipped=f"CUDA backward not enabled: {cu.STATUS}")])
        return
    for l in (2048, 100_000):
        kw = _inputs(2, 64, 16, l, torch.bfloat16, 2)
        names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
        leaves = [kw[k].clone().requires_grad_(True) for k in names]
        h0 = torch.randn(2, 64, 16, device="cuda", requires_grad=True)
        runs = []
        for _ in range(2):
            o, s = cu.selective_scan(*leaves, delta_softplus=True, initial_state=h0, return_final_state=True)
            runs.append(torch.autograd.grad((o, s), leaves + [h0], (torch.ones_like(o), torch.ones_like(s))))
        same = {f"d{k}": bool(torch.equal(a, b)) for k, a, b in zip(names + ["initial_state"], *runs)}
        rows.append(dict(l=l, all_identical=all(same.values()), **same))
        print(rows[-1], flush=True)
    _write(out, "determ", rows)


def phase_bench(out: Path, rows_sel: str):
    from triton.testing import do_bench

    import genomamba.ops.cuda as cu
    from genomamba.bench.scan_gpu import ANCHORS, ROWS, copy_bandwidth, min_bytes

    # the fourth row's anchor is in /work/shared/ANCHORS.md but not in scan_gpu.ANCHORS
    ANCHORS = {**ANCHORS, (2, 512, 16, 262144, "bf16"): (5.87, 29.9)}

    cu._build()
    bw = copy_bandwidth()
    res = dict(copy_bandwidth_TBps=round(bw / 1e12, 3), device=torch.cuda.get_device_name(),
               status=dict(cu.STATUS), rows=[])
    shapes = ROWS if rows_sel == "all" else [ROWS[int(i)] for i in rows_sel.split(",")]
    dmap = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    for shape in shapes:
        b, d, n, l, dt = shape
        kw = _inputs(b, d, n, l, dmap[dt], bench=True)
        anchor = ANCHORS.get(shape, (None, None))
        jobs = [(lab, cfg, False) for lab, cfg in FWD_VARIANTS]
        if cu.cuda_backward_enabled():
            jobs += [(lab, cfg, True) for lab, cfg in BWD_VARIANTS]
        for label, cfg, bwd in jobs:
            if cfg.get("variant") == "v2" and cu.STATUS["v2"] is not True:
                continue
            saved = _config(cfg)
            row = dict(variant=label, shape=f"{b},{d},{n},{l} {dt}")
            try:
                if not bwd:
                    with torch.no_grad():
                        t = do_bench(lambda: cu.selective_scan(**kw), warmup=25, rep=100, return_mode="median")
                    row.update(fwd_ms=round(t, 4), bw_frac=round(min_bytes(*shape, bwd=False) / (t * 1e-3) / bw, 3))
                    if anchor[0]:
                        row["x_mamba"] = round(anchor[0] / t, 2)
                else:
                    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
                    leaves = {k: kw[k].clone().requires_grad_(True) for k in names}
                    gout = torch.randn(b, d, l, device="cuda").to(dmap[dt])

                    def fb():
                        o = cu.selective_scan(**leaves, delta_softplus=True)
                        torch.autograd.grad(o, list(leaves.values()), gout)

                    t = do_bench(fb, warmup=10, rep=100, return_mode="median")
                    row.update(fwdbwd_ms=round(t, 4), bw_frac=round(min_bytes(*shape, bwd=True) / (t * 1e-3) / bw, 3))
                    if anchor[1]:
                        row["x_mamba"] = round(anchor[1] / t, 2)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                cu.CONFIG.clear()
                cu.CONFIG.update(saved)
                torch.cuda.empty_cache()
            res["rows"].append(row)
            print(row, flush=True)
            _write(out, "bench", res)


# ----------------------------------------------------------------------------- driver


def _summary(out: Path) -> dict:
    def load(p):
        f = out / f"{p}.json"
        return json.loads(f.read_text()) if f.exists() else None

    return {p: load(p) for p in ("build", "sanitize", "parity", "determ", "bench")}


def _print_summary(s: dict, phase_rc: dict) -> None:
    print("\n===== genomamba gpu_verify summary =====")
    print("phase exit codes:", phase_rc)
    b = s.get("build") or {}
    print("status:", b.get("status"), "| build+selftest s:", b.get("build_and_selftest_s"))
    par = s.get("parity") or []
    by = {}
    for r in par:
        v = r.get("variant", "?")
        by.setdefault(v, []).append(r)
    for v, rs in by.items():
        bad = [r.get("shape", "?") for r in rs if not r.get("ok", False) and "skipped" not in r]
        worst = max((max(x for k, x in r.items() if k in ("out", "state") or k.startswith("d"))
                     for r in rs if "out" in r), default=float("nan"))
        skipped = [r["skipped"] for r in rs if "skipped" in r]
        print(f"parity {v:22s} cases={len(rs):3d} failed={len(bad)} worst_rel={worst:.1e}"
              + (f" FAILED: {bad[:4]}" if bad else "") + (f" {skipped[0][:80]}" if skipped else ""))
    for r in s.get("determ") or []:
        print("determinism:", r)
    bench = (s.get("bench") or {}).get("rows", [])
    if bench:
        print(f"\n{'shape':24s} {'variant':22s} {'fwd ms':>8s} {'fwd+bwd':>8s} {'bw%':>5s} {'x mamba':>7s}")
        for r in bench:
            print(f"{r['shape']:24s} {r['variant']:22s} {str(r.get('fwd_ms', '')):>8s} "
                  f"{str(r.get('fwdbwd_ms', '')):>8s} {str(round(100 * r['bw_frac'])) if 'bw_frac' in r else '':>5s} "
                  f"{str(r.get('x_mamba', r.get('error', '')[:30])):>7s}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--phase", default=None, help="run one phase in this process (used by the driver)")
    p.add_argument("--quick", action="store_true", help="fewer parity cases")
    p.add_argument("--rows", default="all", help="bench rows (0-based, comma list) or all")
    p.add_argument("--budget", type=float, default=570.0, help="seconds for all phases together")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.phase:
        fn = dict(build=lambda: phase_build(out), sanitize=lambda: phase_sanitize(out),
                  parity=lambda: phase_parity(out, args.quick), determ=lambda: phase_determ(out),
                  bench=lambda: phase_bench(out, args.rows))[args.phase]
        fn()
        return 0
    t0 = time.time()
    rc = {}
    # (phase, share of what is left when it starts): build may compile for minutes
    plan = [("build", 0.6), ("sanitize", 0.25), ("parity", 0.4), ("determ", 0.2), ("bench", 1.0)]
    for phase, share in plan:
        left = args.budget - (time.time() - t0)
        if phase == "sanitize":
            st = ((_summary(out).get("build") or {}).get("status")) or {}
            if st.get("v2") is True and st.get("bwd") is True:
                continue
        if left < 20:
            rc[phase] = "no time left"
            continue
        cmd = [sys.executable, "-m", "genomamba.bench.gpu_verify", "--phase", phase, "--out", str(out),
               "--rows", args.rows] + (["--quick"] if args.quick else [])
        print(f"--- phase {phase} (limit {left * share:.0f} s)", flush=True)
        env = dict(os.environ)
        if phase == "parity":  # measure a part that failed its self-test too (diagnosis only)
            env["GENOMAMBA_CUDA_UNVERIFIED"] = "1"
        try:
            r = subprocess.run(cmd, timeout=max(20.0, left * share), env=env)
            rc[phase] = r.returncode
        except subprocess.TimeoutExpired:
            rc[phase] = "timeout"
    s = _summary(out)
    s["phase_rc"] = rc
    s["total_s"] = round(time.time() - t0, 1)
    (out / "verify.json").write_text(json.dumps(s, indent=1, default=str))
    _print_summary(s, rc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
