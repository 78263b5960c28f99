"""The issue-4 GPU run, one script: pretrain the ~7M DNA LM at 16k context on bacteria + U. maydis,
score bits per base on the held-out U. maydis chromosomes (chr21-23), fine-tune the species
classifier on 1 kb windows and score it on the held-out strains next to the k-mer baselines.

    GENOMAMBA_DATA=.gpudata python -m genomamba.lit.gpu_run --out $OUT --pretrain-minutes 4 --classify-minutes 1.5

Stages (``--stages``): ``pretrain``, ``classify_1k``, ``classify_16k`` (``--init-from`` a model folder
when pretraining is not in the same call). ``--export-model`` copies the pretrained model to
``<out>/model`` in parts of at most 15 MiB (the device tool returns files up to 16 MiB); reassemble
here with ``python -m genomamba.lit.gpu_run --join <folder>`` and carry it into the next call.

Writes ``gpu_run.json`` (and the run's curves/confusion PNGs) under ``--out``; each stage adds to the
JSON as it finishes, so a run cut short still reports what it did. Uses the configs
``configs/pretrain/dna_7m_16k.yaml`` and ``configs/classify/species_1k.yaml`` with the overrides
printed in the JSON (``overrides``), so the numbers can be reproduced with ``genomamba pretrain``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


PART_BYTES = 15 << 20  # the device tool returns files of at most 16 MiB


def export_model(model_dir: Path, dest: Path, part_bytes: int = PART_BYTES) -> dict:
    """Copy a saved model folder to ``dest``, cutting files larger than ``part_bytes`` into
    ``NAME.partNN`` pieces (``cat NAME.part* > NAME`` restores them; ``join_parts`` does it)."""
    dest.mkdir(parents=True, exist_ok=True)
    parts: dict = {}
    for f in sorted(model_dir.iterdir()):
        if not f.is_file():
            continue
        if f.stat().st_size <= part_bytes:
            shutil.copy(f, dest / f.name)
            continue
        with open(f, "rb") as src:
            i = 0
            while chunk := src.read(part_bytes):
                (dest / f"{f.name}.part{i:02d}").write_bytes(chunk)
                i += 1
        parts[f.name] = i
    return {"dir": str(dest), "split": parts, "join": "python -m genomamba.lit.gpu_run --join DIR"}


def join_parts(folder: Path) -> list[str]:
    """Reassemble every ``NAME.partNN`` series in ``folder`` into ``NAME`` (parts removed)."""
    joined = []
    series: dict[str, list[Path]] = {}
    for f in folder.iterdir():
        stem, dot, num = f.name.rpartition(".part")
        if dot and num.isdigit():
            series.setdefault(stem, []).append(f)
    for name, files in series.items():
        files.sort(key=lambda p: int(p.name.rpartition(".part")[2]))
        expected = list(range(len(files)))
        got = [int(p.name.rpartition(".part")[2]) for p in files]
        if got != expected:
            raise ValueError(f"{folder}: parts of {name} are not 00..{len(files) - 1:02d}: {got}")
        tmp = folder / (name + ".joining")
        with open(tmp, "wb") as out:
            for p in files:
                out.write(p.read_bytes())
        tmp.replace(folder / name)
        for p in files:
            p.unlink()
        joined.append(name)
    return joined


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m genomamba.lit.gpu_run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--work", default="runs/gpu")
    ap.add_argument("--pretrain-minutes", type=float, default=4.0)
    ap.add_argument("--classify-minutes", type=float, default=1.5)
    ap.add_argument("--stage-steps", type=int, default=40, help="seq-len warmup steps per stage (1k->16k)")
    ap.add_argument("--max-steps", type=int, default=5000)
    ap.add_argument("--pretrain-config", default=str(ROOT / "configs/pretrain/dna_7m_16k.yaml"))
    ap.add_argument("--classify-config", default=str(ROOT / "configs/classify/species_1k.yaml"))
    ap.add_argument("--classify16k-config", default=str(ROOT / "configs/classify/species_16k.yaml"))
    ap.add_argument("--classify16k-minutes", type=float, default=2.0)
    ap.add_argument("--stages", default="pretrain,classify_1k",
                    help="comma list among pretrain, classify_1k, classify_16k")
    ap.add_argument("--chain", action="store_true",
                    help="start classify_16k from the classify_1k model of this run (backbone and head)")
    ap.add_argument("--init-from", default=None,
                    help="pretrained model folder for the classifiers (default: this run's pretrain stage)")
    ap.add_argument("--export-model", action="store_true",
                    help="copy the pretrained model folder to <out>/model (to carry into a later call)")
    ap.add_argument("--pretrain-set", action="append", default=[], help="extra override (dry runs)")
    ap.add_argument("--classify-set", action="append", default=[], help="extra override (dry runs)")
    ap.add_argument("--join", default=None, metavar="DIR",
                    help="only reassemble the NAME.partNN files of an exported model folder, then exit")
    args = ap.parse_args(argv)
    if not args.join and not args.out:
        ap.error("--out is required (unless --join)")
    if args.join:
        print("joined:", join_parts(Path(args.join)) or "nothing to join")
        return 0

    import torch

    from genomamba.lit.cli import load_config, run_classify, run_pretrain

    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": "python -m genomamba.lit.gpu_run " + " ".join(argv or sys.argv[1:]),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "python": platform.python_version(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        from genomamba.ops import backend_for

        report["scan_backend"] = backend_for(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    except Exception as e:  # noqa: BLE001 - informative only
        report["scan_backend"] = f"unknown ({e})"

    def dump():
        (out / "gpu_run.json").write_text(json.dumps(report, indent=2) + "\n")

    dump()
    stages = [x for x in args.stages.split(",") if x]
    unknown = set(stages) - {"pretrain", "classify_1k", "classify_16k"}
    if unknown:
        ap.error(f"--stages: unknown stage(s) {sorted(unknown)}")
    report["stages"] = stages
    # ---- pretrain 7M at 16k
    if "pretrain" in stages:
        pre_over = [f"run_dir={work / 'dna_7m_16k'}", f"trainer.budget_minutes={args.pretrain_minutes}",
                    f"trainer.max_minutes={args.pretrain_minutes * 1.1}", f"trainer.max_steps={args.max_steps}",
                    f"seqlen_warmup.stage_steps={args.stage_steps}", "optim.warmup_steps=50",
                    "trainer.val_every=100", "trainer.ckpt_every=200", "trainer.progress=false",
                    "data.num_workers=6", "trainer.log_every=10"] + args.pretrain_set
        report["pretrain"] = {"config": os.path.relpath(args.pretrain_config, ROOT), "overrides": pre_over}
        t0 = time.time()
        try:
            pcfg = load_config(args.pretrain_config, pre_over)
            res = run_pretrain(pcfg, quiet=True)
            res["wall_seconds"] = round(time.time() - t0, 1)
            res["tokens_per_step"] = pcfg.data.batch_size * pcfg.data.seq_len * pcfg.trainer.accumulate
            res["tokens_seen"] = res["global_step"] * res["tokens_per_step"]
            res["tokens_per_second"] = round(res["tokens_seen"] / max(res["fit_seconds"], 1e-9))
            res["heldout_umaydis_chr21_23_bits_per_base"] = res.get("test", {}).get("test/bpb")
            res["references_bits_per_base"] = {"order16_markov": 1.899, "xz_9": 2.074, "bzip2_9": 2.144}
            report["pretrain"].update(res)
            for name in ("training_curves.png",):
                if (work / "dna_7m_16k" / name).exists():
                    shutil.copy(work / "dna_7m_16k" / name, out / f"pretrain_{name}")
        except Exception:
            report["pretrain"]["error"] = traceback.format_exc()[-3000:]
        dump()
    # ---- classifiers at 1k and 16k from the pretrained model
    model_dir = Path(args.init_from) if args.init_from else work / "dna_7m_16k" / "model"
    if args.export_model and model_dir.exists():
        report["exported_model"] = export_model(model_dir, out / "model")
    plan = {"classify_1k": (args.classify_config, args.classify_minutes),
            "classify_16k": (args.classify16k_config, args.classify16k_minutes)}
    for stage in ("classify_1k", "classify_16k"):
        if stage not in stages:
            continue
        config, minutes = plan[stage]
        run_dir = work / stage.replace("classify", "species")
        init = model_dir
        if stage == "classify_16k" and args.chain and (work / "species_1k" / "model" / "config.json").exists():
            init = work / "species_1k" / "model"
        cls_over = [f"run_dir={run_dir}", f"init_from={init}",
                    f"trainer.budget_minutes={minutes}", f"trainer.max_minutes={minutes * 1.1}",
                    "trainer.max_steps=3000", "optim.warmup_steps=50", "trainer.progress=false",
                    "data.num_workers=6", "trainer.ckpt_every=500", "trainer.log_every=10"] + args.classify_set
        report[stage] = {"config": os.path.relpath(config, ROOT), "overrides": cls_over}
        if not model_dir.exists():
            report[stage]["error"] = f"no pretrained model at {model_dir}"
            dump()
            continue
        t0 = time.time()
        try:
            res = run_classify(load_config(config, cls_over), quiet=True)
            res["wall_seconds"] = round(time.time() - t0, 1)
            res["baselines_quoted_1kb"] = {"gc": 0.687, "nb4": 0.888, "nb10": 0.966}
            report[stage].update(res)
            for name in ("training_curves.png", "confusion_test.png"):
                if (run_dir / name).exists():
                    shutil.copy(run_dir / name, out / f"{stage}_{name}")
        except Exception:
            report[stage]["error"] = traceback.format_exc()[-3000:]
        dump()
    if torch.cuda.is_available():
        report["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    dump()
    print(json.dumps({k: report[k] for k in ("device", "scan_backend")}, indent=1))
    for stage in stages:
        r = report.get(stage, {})
        print(stage, {k: r.get(k) for k in ("global_step", "fit_seconds", "heldout_umaydis_chr21_23_bits_per_base",
                                            "tokens_per_second", "test", "baselines", "error")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
