"""Why the CUDA scan kernels run at the speed they do: the compiler's resource report and Nsight Compute
counters for issue 5's rows, in one call on the GPU machine.

    PYTHONPATH=. python3 -m genomamba.bench.gpu_profile --out $OUT

Writes under ``--out``:
  resources.txt   ``cuobjdump -res-usage`` of the built extension (registers, shared memory, spills)
  ncu_<case>.csv  ``ncu --csv --page details`` for the selective-scan kernels of each case
  profile.json    the headline counters per kernel (pipe use, issue slots, stall reasons, occupancy)

Cases: row 1 (8, 1536, 16, 2048, bf16) inference forward, row 1 training forward + backward, and the
DNA 1M layer (1, 256, 16, 2^20, bf16) inference forward. ``--driver CASE`` is the process ncu runs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CASES = {
    "row1_fwd": ((8, 1536, 16, 2048), False),
    "row1_train": ((8, 1536, 16, 2048), True),
    "dna1m_fwd": ((1, 256, 16, 1 << 20), False),
}
SECTIONS = ["SpeedOfLight", "Occupancy", "WarpStateStats", "ComputeWorkloadAnalysis", "SchedulerStats",
            "LaunchStats", "InstructionStats", "MemoryWorkloadAnalysis"]
# the metric names (as ncu prints them in --page details) worth quoting
KEEP = ("Duration", "Compute (SM) Throughput", "Memory Throughput", "DRAM Throughput", "Registers Per Thread",
        "Achieved Occupancy", "Theoretical Occupancy", "Block Limit Registers", "Block Limit Shared Mem",
        "Issue Slots Busy", "Issued Ipc Active", "No Eligible", "Active Warps Per Scheduler",
        "Eligible Warps Per Scheduler", "Warp Cycles Per Issued Instruction", "Executed Instructions",
        "L1/TEX Hit Rate", "Dynamic Shared Memory Per Block", "Grid Size", "Block Size", "Waves Per SM",
        "SM Frequency", "Avg. Executed Instructions Per Scheduler")


def driver(case: str) -> None:
    import torch

    from genomamba.bench.scan_gpu import make_inputs
    from genomamba.ops import cuda as cu

    (b, d, n, l), train = CASES[case]
    assert cu.available(), cu._failed
    kw = make_inputs(b, d, n, l, "bf16")
    if train:
        leaves = [kw[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
        for t in leaves:
            t.requires_grad_(True)
        gout = torch.randn(b, d, l, device="cuda").to(torch.bfloat16)
        out = cu.selective_scan(**kw)
        torch.autograd.grad(out, leaves, gout)
    else:
        with torch.no_grad():
            cu.selective_scan(**kw)
    torch.cuda.synchronize()


def _summarise(text: str) -> dict:
    """Rows of ncu's details CSV -> {kernel: {metric: 'value unit'}} for the metrics in KEEP, plus stalls."""
    out: dict = {}
    for row in csv.DictReader(io.StringIO(text)):
        name = row.get("Kernel Name", "?").split("(")[0]
        key = f"{row.get('ID', '?')}:{name}"
        metric = row.get("Metric Name", "")
        val = f"{row.get('Metric Value', '')} {row.get('Metric Unit', '')}".strip()
        if metric in KEEP or "Stall" in metric or "Pipe" in metric or "pipe" in metric:
            out.setdefault(key, {})[metric] = val
        if row.get("Section Name") == "WarpStateStats" and row.get("Rule Name"):
            out.setdefault(key, {}).setdefault("rules", []).append(row.get("Description", "")[:400])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m genomamba.bench.gpu_profile")
    ap.add_argument("--out", required=True)
    ap.add_argument("--driver", choices=sorted(CASES))
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)
    if args.driver:
        driver(args.driver)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from genomamba.ops import cuda as cu

    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
                    "available": cu.available(), "status": dict(cu.STATUS), "config": dict(cu.CONFIG)}
    sos = sorted(Path(cu._build_dir).glob("*.so")) if cu._build_dir else []
    if sos and shutil.which("cuobjdump"):
        r = subprocess.run(["cuobjdump", "-res-usage", str(sos[0])], capture_output=True, text=True)
        (out / "resources.txt").write_text(r.stdout + r.stderr)
        lines = r.stdout.splitlines()
        report["resources"] = [f"{lines[i].strip()} || {lines[i + 1].strip()}" for i in range(len(lines) - 1)
                               if lines[i].lstrip().startswith("Function") and "genomamba" not in lines[i]
                               and ("fwd" in lines[i] or "bwd" in lines[i])]
    ncu = shutil.which("ncu") or next(iter(sorted(Path("/opt/nvidia").glob("nsight-compute/*/ncu"))), None)
    report["ncu"] = str(ncu)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    for case in args.cases.split(","):
        if ncu is None:
            break
        cmd = [str(ncu), "--clock-control", "none", "--target-processes", "all",
               "-k", "regex:fwd_kernel|bwd_kernel|fwd_fix_kernel|bwd_summary_kernel", "--launch-count", "6",
               "--csv", "--page", "details"]
        for s in SECTIONS:
            cmd += ["--section", s]
        cmd += [sys.executable, "-m", "genomamba.bench.gpu_profile", "--out", str(out), "--driver", case]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
        text = r.stdout
        start = text.find('"ID"')
        csv_text = text[start:] if start >= 0 else ""
        (out / f"ncu_{case}.csv").write_text(csv_text or (text[-20000:] + "\n--- stderr\n" + r.stderr[-5000:]))
        report[case] = _summarise(csv_text) if csv_text else {"error": (r.stderr or text)[-1500:], "rc": r.returncode}
        (out / "profile.json").write_text(json.dumps(report, indent=1))
    (out / "profile.json").write_text(json.dumps(report, indent=1))
    for case in args.cases.split(","):
        for k, v in (report.get(case) or {}).items():
            if isinstance(v, dict):
                print(case, k, {m: v[m] for m in v if m != "rules"})
    for line in report.get("resources", []):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
