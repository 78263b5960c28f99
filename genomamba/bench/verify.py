"""``genomamba bench verify``: every selective-scan backend of a device against the fp64 oracle.

For each backend that runs on ``--device`` (cuda: ``cuda``, ``triton``, ``torch``; cpu: ``cpp``,
``torch``) and each case (shape, dtype, B/C groups), it calls :func:`genomamba.ops.selective_scan`
with that backend forced, with z, D, delta_bias, softplus and an initial state, and compares with
:func:`genomamba.ops.reference.selective_scan_ref` run in fp64 on the same inputs:

* the output and the final state (relative L2 error);
* the gradient of every input (u, delta, A, B, C, D, z, delta_bias, initial_state) for random
  cotangents of the output and the final state;
* determinism: a second forward + backward must give bit-identical outputs and gradients.

The first use of a compiled backend builds it (JIT, cached); the time that takes is reported.
Prints a table, writes JSON (``verify_<device>.json``) and exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import torch

from genomamba.bench.common import add_results_args, machine_facts, print_table, write_results
from genomamba.ops import backend_for, cuda, format_table, selective_scan, table, use_backend
from genomamba.ops.reference import selective_scan_ref

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}
# relative L2 error allowed (output and final state, gradients), by input dtype
TOLERANCES = {"fp64": (1e-9, 1e-8), "fp32": (1e-4, 1e-3), "bf16": (2e-2, 3e-2), "fp16": (2e-2, 3e-2)}
CANDIDATES = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")

# (b, d, n, l, dtype, groups): lengths around the kernels' chunk and tile edges, grouped B/C, and
# every input dtype the device handles
CASES = {
    "cuda": [(2, 64, 16, l, "fp32", None) for l in (1, 7, 63, 64, 65, 255, 256, 257, 511, 512, 513, 1000, 4097)]
    + [(2, 48, 5, 333, "fp32", 4), (1, 24, 16, 3000, "fp32", 3), (1, 256, 16, 4096, "bf16", None),
       (2, 96, 16, 777, "fp16", 2), (2, 32, 16, 300, "fp64", None)],
    "cpu": [(2, 16, 8, l, "fp32", None) for l in (1, 7, 64, 65, 300)]
    + [(2, 24, 16, 257, "fp32", 3), (2, 16, 16, 200, "fp64", 2), (1, 32, 16, 400, "bf16", None)],
}


def parse_cases(spec: str) -> list[tuple]:
    """``"b,d,n,l,dtype[,groups];..."`` -> case tuples."""
    cases = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        parts = [p.strip() for p in item.split(",")]
        if len(parts) not in (5, 6) or parts[4] not in DTYPES:
            raise ValueError(f"--cases: {item!r}: expected b,d,n,l,dtype[,groups] with dtype in {', '.join(DTYPES)}")
        b, d, n, l = (int(p) for p in parts[:4])
        groups = int(parts[5]) if len(parts) == 6 else None
        if groups is not None and d % groups:
            raise ValueError(f"--cases: {item!r}: groups must divide d")
        cases.append((b, d, n, l, parts[4], groups))
    return cases


def case_label(case) -> str:
    b, d, n, l, dtype, groups = case
    return f"{b},{d},{n},{l} {dtype}" + (f" g={groups}" if groups else "")


def make_inputs(case, device: str, seed: int = 0) -> dict:
    """Random inputs in the Mamba block's ranges: A < 0, softplus(delta + bias) around 0.7."""
    b, d, n, l, dtype, groups = case
    dt = DTYPES[dtype]
    st = torch.float64 if dt == torch.float64 else torch.float32  # A, D, delta_bias, state: fp32 or fp64
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*shape, scale=1.0, dtype=dt):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    bc = (b, n, l) if groups is None else (b, groups, n, l)
    return dict(
        u=r(b, d, l), delta=r(b, d, l, scale=0.5),
        A=-(torch.rand(d, n, generator=g, dtype=torch.float64) * 2 + 0.2).to(device=device, dtype=st),
        B=r(*bc), C=r(*bc), D=r(d, dtype=st), z=r(b, d, l), delta_bias=r(d, scale=0.3, dtype=st),
        initial_state=r(b, d, n, dtype=st),
    )


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def _run(inputs: dict, cot_out: torch.Tensor, cot_state: torch.Tensor):
    """Forward + backward through the dispatcher: (out, final_state, grads in NAMES order)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out, state = selective_scan(**leaves, delta_softplus=True, return_final_state=True)
    grads = torch.autograd.grad((out, state), [leaves[k] for k in NAMES], (cot_out, cot_state))
    return out.detach(), state.detach(), grads


def oracle(inputs: dict, seed: int = 1):
    """The fp64 sequential oracle on the same inputs, and the cotangents every backend gets."""
    ref = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    out, state = selective_scan_ref(**ref, delta_softplus=True, return_final_state=True)
    g = torch.Generator(device="cpu").manual_seed(seed)
    u = inputs["u"]
    cot_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device=u.device, dtype=u.dtype)
    cot_state = torch.randn(state.shape, generator=g, dtype=torch.float64).to(
        device=u.device, dtype=inputs["initial_state"].dtype)
    grads = torch.autograd.grad((out, state), [ref[k] for k in NAMES], (cot_out.double(), cot_state.double()))
    return out.detach(), state.detach(), grads, cot_out, cot_state


def check_case(backend: str, case, inputs: dict, ref) -> dict:
    """One backend on one case: errors vs the oracle, determinism, pass/fail."""
    rout, rstate, rgrads, cot_out, cot_state = ref
    row = {"backend": backend, "case": case_label(case)}
    try:
        with use_backend(backend):
            out, state, grads = _run(inputs, cot_out, cot_state)
            out2, state2, grads2 = _run(inputs, cot_out, cot_state)
    except Exception as exc:  # a backend that raises is a failed row, not a crashed report
        row.update(error=f"{type(exc).__name__}: {exc}"[:300], ok=False)
        return row
    row["out"] = _rel(out, rout)
    row["state"] = _rel(state, rstate)
    row["grads"] = {f"d{k}": _rel(a, r) for k, a, r in zip(NAMES, grads, rgrads)}
    row["deterministic"] = bool(
        torch.equal(out, out2) and torch.equal(state, state2) and all(torch.equal(a, b) for a, b in zip(grads, grads2))
    )
    tol_out, tol_grad = TOLERANCES[case[4]]
    worst = max(row["grads"], key=row["grads"].get)
    row["worst_grad"] = worst
    # NaN compares False, so a NaN anywhere fails the row
    row["ok"] = bool(row["out"] < tol_out and row["state"] < tol_out and row["grads"][worst] < tol_grad
                     and row["deterministic"])
    return row


def cuda_status():
    """The CUDA backend's self-test verdict per kernel part."""
    return {k: v if isinstance(v, (bool, int, float)) else str(v) for k, v in cuda.STATUS.items()}


def available_backends(device: str, wanted) -> tuple[list[str], dict, dict]:
    """(usable backends, name -> why skipped, name -> seconds to make ready, i.e. build + self-test)."""
    usable, skipped, ready_s = [], {}, {}
    dev = torch.device(device)
    for name in wanted:
        t0 = time.perf_counter()
        try:
            with use_backend(name):
                got = backend_for(dev)
        except RuntimeError as exc:
            skipped[name] = str(exc)
            continue
        ready_s[name] = round(time.perf_counter() - t0, 2)
        if got != name:
            skipped[name] = f"has no selective_scan (the call goes to {got})"
            continue
        usable.append(name)
    return usable, skipped, ready_s


def _fmt(row: dict) -> dict:
    if "error" in row:
        return {"backend": row["backend"], "case": row["case"], "ok": "FAIL", "worst grad": row["error"][:60]}
    return {
        "backend": row["backend"], "case": row["case"], "out": f"{row['out']:.1e}", "state": f"{row['state']:.1e}",
        "worst grad": f"{row['worst_grad']} {row['grads'][row['worst_grad']]:.1e}",
        "bit-equal rerun": "yes" if row["deterministic"] else "NO", "ok": "ok" if row["ok"] else "FAIL",
    }


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="genomamba bench verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--backends", default=None,
                   help="comma list (default: every scan backend of the device: cuda,triton,torch or cpp,torch)")
    p.add_argument("--cases", default=None, help="'b,d,n,l,dtype[,groups];...' instead of the built-in cases "
                   f"(dtype in {', '.join(DTYPES)})")
    p.add_argument("--seed", type=int, default=0)
    add_results_args(p, "verify_<device>")
    args = p.parse_args(argv)

    kind = torch.device(args.device).type
    if kind not in CANDIDATES:
        print(f"genomamba bench verify: --device {args.device!r}: expected cpu or cuda", file=sys.stderr)
        return 2
    if kind == "cuda" and not torch.cuda.is_available():
        print("genomamba bench verify --device cuda: no CUDA device", file=sys.stderr)
        return 1
    try:
        cases = parse_cases(args.cases) if args.cases else CASES[kind]
    except ValueError as exc:
        print(f"genomamba bench verify: {exc}", file=sys.stderr)
        return 2
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends else CANDIDATES[kind]
    unknown = [b for b in wanted if b not in CANDIDATES[kind]]
    if unknown:
        print(f"genomamba bench verify: backends {unknown} do not run on {kind}; choose from "
              f"{', '.join(CANDIDATES[kind])}", file=sys.stderr)
        return 2

    facts = machine_facts(args.device)
    print(f"selective-scan verification on {facts.get('device_name', args.device)}: building / loading backends")
    backends, skipped, ready_s = available_backends(args.device, wanted)
    for name, why in skipped.items():
        print(f"  {name}: skipped ({why})")
    for name in backends:
        print(f"  {name}: ready in {ready_s[name]:.1f} s")
    status = cuda_status() if kind == "cuda" else None
    if status is not None:
        print(f"  cuda self-test: {status}")
    dispatch_rows = table(("cuda", "cpu") if kind == "cuda" else ("cpu",))
    print("\ndispatch table on this machine:\n" + format_table(dispatch_rows))

    rows = []
    for case in cases:
        inputs = make_inputs(case, args.device, seed=args.seed)
        ref = oracle(inputs, seed=args.seed + 1)
        for name in backends:
            rows.append(check_case(name, case, inputs, ref))
    print()
    print_table([_fmt(r) for r in rows], ["backend", "case", "out", "state", "worst grad", "bit-equal rerun", "ok"])
    failed = [r for r in rows if not r["ok"]]
    ok = bool(backends) and not failed
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed on {len(backends)} backend(s)"
          + ("" if backends else ": no backend available"))

    slug = re.sub(r"[^a-z0-9]+", "_", facts.get("device_name", kind).lower()).strip("_")
    slug = "cpu" if kind == "cpu" else slug
    payload = {
        "bench": "verify",
        "machine": facts,
        "oracle": "genomamba.ops.reference.selective_scan_ref in fp64 on the same inputs",
        "setup": "z, D, delta_bias, delta_softplus=True, initial_state, return_final_state; errors are relative L2; "
                 "determinism = a second forward + backward is bit-identical",
        "tolerances": {k: {"out_state": v[0], "grads": v[1]} for k, v in TOLERANCES.items()},
        "backends": backends,
        "skipped": skipped,
        "ready_seconds": ready_s,
        "cuda_self_test": status,
        "dispatch_table": dispatch_rows,
        "cases": [case_label(c) for c in cases],
        "rows": rows,
        "passed": ok,
    }
    path = write_results(args.name or f"verify_{slug}", payload, args.out)
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
