"""``genomamba demo``: the README's main job, end to end on real genomes, on a CPU in minutes.

1. data: the real genome slices shipped in the package (5 bacterial species, 20 strains; U. maydis,
   fly, phage lambda); with ``--full``, the complete genomes fetched from Debian packages;
2. pretrain a tiny Mamba DNA LM (next base) and score bits per base on held-out sequence
   (U. maydis chr21: a chromosome the model never saw);
3. fine-tune it into the 5-species classifier; evaluate on the held-out strains, next to a GC-content
   classifier and a 4-mer naive Bayes fit on the same training genomes and scored on the same windows;
4. embed a FASTA file through the Python API (``genomamba.api``) and classify its records;
5. print a short report (also ``RUN/report.json``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from genomamba import api
from genomamba.commands.classify import run_classify
from genomamba.commands.pretrain import run_pretrain
from genomamba.data.corpus import AssetsSource, FetchSource, resolve_species_manifest
from genomamba.data.fasta import read_records
from genomamba.data.species import SpeciesManifest
from genomamba.errors import UserError, report
from genomamba.files import write_json
from genomamba.lit.config import load_config, shipped_config

# The demo runs the two shipped tiny configs as they are (only output folders, and what the flags
# below ask for, are changed), so `genomamba pretrain -c configs/pretrain/tiny_cpu.yaml` repeats step 2.
# Their step counts are fixed; the time budgets only cut them on a slower machine.
PRETRAIN_CONFIG = "pretrain/tiny_cpu.yaml"
CLASSIFY_CONFIG = "classify/species_tiny_cpu.yaml"
# Accuracy of the classical baselines on random 1 kb windows of the held-out strains of the full genomes
# (``genomamba data fetch bacteria``), quoted in the report next to the ones measured on the demo's windows.
QUOTED = {"gc": 0.687, "nb4": 0.888, "nb10": 0.966}


def _say(msg: str) -> None:
    print(msg, flush=True)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genomamba demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    ap.add_argument("--full", action="store_true",
                    help="fetch the complete genomes (Debian packages, ~25 MB) instead of the shipped slices")
    ap.add_argument("--pretrain-minutes", type=float, default=None,
                    help="time budget of step 2 (steps are planned from the measured speed; default: the "
                         "config's trainer.budget_minutes)")
    ap.add_argument("--classify-minutes", type=float, default=None,
                    help="time budget of step 3 (default: the config's trainer.budget_minutes)")
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--classify-steps", type=int, default=None)
    ap.add_argument("--per-label", type=int, default=None, help="held-out windows per species")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--progress", action="store_true", help="show Lightning progress bars")
    return ap


def demo_configs(args):
    """The shipped tiny configs, with the output folders and what the flags ask for changed."""
    out = Path(args.out)
    pre = load_config(shipped_config(PRETRAIN_CONFIG), kind="pretrain")
    cls = load_config(shipped_config(CLASSIFY_CONFIG), kind="classify")
    pre.run_dir, cls.run_dir = str(out / "pretrain"), str(out / "classify")
    cls.init_from = str(out / "pretrain" / "model")
    pre.trainer.progress = cls.trainer.progress = bool(args.progress)
    if args.pretrain_minutes is not None:
        pre.trainer.budget_minutes, pre.trainer.max_minutes = args.pretrain_minutes, args.pretrain_minutes * 1.25
    if args.classify_minutes is not None:
        cls.trainer.budget_minutes, cls.trainer.max_minutes = args.classify_minutes, args.classify_minutes * 1.25
    if args.pretrain_steps is not None:
        pre.trainer.max_steps = args.pretrain_steps
    if args.classify_steps is not None:
        cls.trainer.max_steps = args.classify_steps
    if args.per_label is not None:
        cls.data.test_per_label = args.per_label
    if args.full:
        cls.data.manifest = "fetch:bacteria"
        pre.data.sources = [AssetsSource("pretrain"), FetchSource("bacteria", splits=["train"])]
    return pre, cls


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except (UserError, OSError, ValueError) as e:
        return report("demo", e, 2)


def _run(args) -> int:
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Lightning's banner lines and data-loader hints are noise in a demo; the report says what matters.
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    warnings.filterwarnings("ignore", message=".*treespec.*")
    pre, cls = demo_configs(args)

    # ---- 1. data
    if args.full:
        _say("[1/5] fetching the complete genomes (Debian packages; cached after the first run) ...")
    man = SpeciesManifest.from_file(resolve_species_manifest(cls.data.manifest))
    held = [f"{g.id} ({g.label.replace('_', ' ')})" for g in man.entries("test")]
    _say(f"[1/5] data: {len(man.genomes)} real bacterial genomes{'' if args.full else ' (shipped slices)'}, "
         f"{man.num_labels} species; held-out strains: {', '.join(held)}")

    # ---- 2. pretrain
    _say(f"[2/5] pretraining a {pre.model.n_layer}-layer d_model={pre.model.d_model} Mamba LM on "
         f"{pre.data.seq_len}-bp windows (<= {pre.trainer.max_steps} steps, ~{pre.trainer.budget_minutes} min) ...")
    t0 = time.time()
    pres = run_pretrain(pre, quiet=True, force=True)  # the demo replaces its own earlier output
    t_pre = time.time() - t0
    bpb = pres.get("test", {}).get("test/bpb")
    _say(f"      {pres['global_step']} steps in {t_pre:.0f}s; held-out U. maydis chr21: {bpb:.3f} bits/base")

    # ---- 3. classifier
    _say(f"[3/5] fine-tuning the {man.num_labels}-species classifier on {cls.data.train_length}-bp windows of "
         f"the training strains (<= {cls.trainer.max_steps} steps, ~{cls.trainer.budget_minutes} min) ...")
    t0 = time.time()
    cres = run_classify(cls, quiet=True, force=True)
    t_cls = time.time() - t0
    test, base = cres["test"], cres.get("baselines", {})
    _say(f"      {cres['global_step']} steps in {t_cls:.0f}s; held-out strains: accuracy {test['acc']:.3f} "
         f"({test['n_windows']} windows)")

    # ---- 4. embed through the Python API
    _say("[4/5] embedding a FASTA file with genomamba.api ...")
    emb = _embed_step(out, Path(cres["model_dir"]), man)

    # ---- 5. report
    total = time.time() - t_start
    report = {
        "data": "full genomes (fetched)" if args.full else "shipped genome slices",
        "pretrain": {"steps": pres["global_step"], "params": pres["params"], "seconds": round(t_pre, 1),
                     "heldout_bits_per_base": bpb, "heldout": "U. maydis chr21 slice (never trained on)",
                     "val_bits_per_base": pres["metrics"].get("val/bpb")},
        "classify": {"steps": cres["global_step"], "seconds": round(t_cls, 1), "window": cls.data.length,
                     "n_windows": test["n_windows"], "accuracy": test["acc"], "f1_macro": test["f1_macro"],
                     "baselines_same_windows": {k: v for k, v in base.items() if k in ("gc", "nb4")},
                     "baselines_quoted_full_genomes": QUOTED, "confusion": test["confusion"],
                     "labels": cres["labels"]},
        "embed": emb,
        "seconds_total": round(total, 1),
        "torch_threads": torch.get_num_threads(),
    }
    write_json(out / "report.json", report)
    _say(_format_report(report, out))
    return 0


def _embed_step(out: Path, model_dir: Path, man) -> dict:
    """Write the held-out strains' sequences to one FASTA, embed it and classify it via the API."""
    fasta = out / "heldout_strains.fa"
    with open(fasta, "w") as fh:
        for g in man.entries("test"):
            for k, rec in enumerate(read_records(g.path)):
                if k >= 2:  # two records per strain keeps the demo quick on full genomes too
                    break
                seq = rec.sequence[:20000]
                fh.write(f">{g.id}|{g.label}|{rec.name}\n")
                for i in range(0, len(seq), 80):
                    fh.write(seq[i : i + 80] + "\n")
    t0 = time.time()
    model = api.load(model_dir)
    X = model.embed(fasta, pooling="mean")
    np.save(out / "heldout_strains.embeddings.npy", X)
    pred = model.classify(fasta)
    truth = [n.split("|")[1] for n in pred.names]
    correct = sum(p == t for p, t in zip(pred.labels, truth))
    return {"fasta": str(fasta), "records": int(X.shape[0]), "shape": list(X.shape),
            "embeddings": str(out / "heldout_strains.embeddings.npy"), "seconds": round(time.time() - t0, 1),
            "record_level_correct": f"{correct}/{len(truth)}"}


def _format_report(r: dict, out: Path) -> str:
    c, p, e = r["classify"], r["pretrain"], r["embed"]
    b, q = c["baselines_same_windows"], c["baselines_quoted_full_genomes"]
    verdict = "beats" if c["accuracy"] > b.get("nb4", 1.0) else "does NOT beat"
    full = r["data"].startswith("full")
    # the quoted figures are for random 1 kb windows of the full genomes' held-out strains
    ref = "quoted for random 1 kb windows" if full else "full genomes"
    lines = [
        "",
        "=" * 78,
        f"genomamba demo report ({r['data']}; {r['seconds_total'] / 60:.1f} min on "
        f"{r['torch_threads']} CPU threads)",
        "=" * 78,
        f"DNA LM ({p['params']:,} params, {p['steps']} steps, {p['seconds']:.0f}s)",
        f"  bits/base on held-out sequence ({p['heldout']}): {p['heldout_bits_per_base']:.3f}",
        "  (2.000 = no better than uniform; an order-16 Markov model trained on all of chr01-20 gets 1.899)",
        f"Species classifier, {c['window']}-bp windows of the held-out strains ({c['n_windows']} windows, "
        f"chance 20 %)",
        f"  genomamba (fine-tuned LM)  {100 * c['accuracy']:5.1f} %   macro-F1 {c['f1_macro']:.3f}",
        f"  4-mer naive Bayes          {100 * b.get('nb4', float('nan')):5.1f} %   "
        f"(same windows; {ref}: {100 * q['nb4']:.1f} %)",
        f"  GC-content classifier      {100 * b.get('gc', float('nan')):5.1f} %   "
        f"(same windows; {ref}: {100 * q['gc']:.1f} %)",
        f"  (10-mer naive Bayes{', ' if full else ' on the '}{ref}: {100 * q['nb10']:.1f} %"
        + (")" if full else "; `genomamba data fetch bacteria` downloads them, `genomamba demo --full` uses them)"),
        f"  -> the classifier {verdict} the 4-mer naive Bayes baseline",
    ]
    lines.append(f"Embeddings: {e['records']} FASTA records -> {tuple(e['shape'])} array in {e['seconds']}s "
                 f"({e['embeddings']}); record-level classification {e['record_level_correct']}")
    lines += [f"Outputs: {out}/ (pretrain/, classify/: checkpoints, logs, curves, confusion matrix; report.json)",
              "=" * 78]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
