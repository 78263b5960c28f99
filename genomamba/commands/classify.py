"""``genomamba classify fit | evaluate | predict``: the species classifier.

``fit`` fine-tunes a pretrained LM (or trains from scratch) from a classify config and tests it on
the held-out strains; ``evaluate`` scores a saved classifier (or the ensemble of several) on a
manifest split; ``predict`` labels the records of FASTA files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from genomamba.adapters import ADAPTER_FILE, adapter_from_json
from genomamba.api import weak_input
from genomamba.baselines import audio_clip_baselines, species_baselines
from genomamba.commands.common import (
    add_device_args,
    apply_device_args,
    model_files,
    positive_int,
    refuse_repeats,
)
from genomamba.commands.run_args import add_run_args, config_from_args
from genomamba.data.corpus import resolve_species_manifest
from genomamba.data.fasta import read_records
from genomamba.data.species import SpeciesEvalWindows, SpeciesManifest
from genomamba.errors import UserError, check_input_file, report
from genomamba.files import check_output, write_json, write_text
from genomamba.lit.classify import ClassifierModule
from genomamba.lit.config import ClassifyConfig, ConfigError, adapter_of, to_plain
from genomamba.lit.datamodules import SpeciesDataModule
from genomamba.lit.evaluate import evaluate_classifier, save_confusion_png, score_probabilities, window_probs
from genomamba.lit.trainer import (
    after_fit,
    build_trainer,
    final_checkpoint,
    final_validation,
    fit,
    keep_weights,
    owns_run_dir,
    prepare_run_dir,
    throughput,
)
from genomamba.models.heads import SequenceClassifier
from genomamba.models.io import run_dir_hint
from genomamba.models.recompute import keep_activations
from genomamba.tokenizers.dna import DNATokenizer


@owns_run_dir
def run_classify(cfg: ClassifyConfig, resume: Optional[str] = None, quiet: bool = False, force: bool = False) -> dict:
    """Fine-tune (or train) the classifier; test on the held-out strains (or voices); save; results dict.

    ``adapter: audio`` (or another modality) classifies the manifest's labelled files read by that adapter.
    ``force``: replace an earlier run in ``cfg.run_dir`` (else one there is refused unless ``resume``).
    """
    adapter = adapter_of(cfg)
    dna = adapter.name == "dna"
    if cfg.init_from and (Path(cfg.init_from) / ADAPTER_FILE).exists():
        theirs = adapter_from_json(cfg.init_from)
        if theirs != adapter:
            raise ConfigError(f"init_from: {cfg.init_from} was trained with the adapter {theirs!r}, the config "
                              f"asks for {adapter!r}")
    elif cfg.init_from and not dna and (Path(cfg.init_from) / "config.json").exists():
        raise ConfigError(f"init_from: {cfg.init_from} is a DNA model (no {ADAPTER_FILE}); the config's adapter "
                          f"is {adapter.name!r}")
    if cfg.init_from and not (Path(cfg.init_from) / "config.json").exists():  # before the run directory is made
        why = "is not a saved model directory (no config.json)" if Path(cfg.init_from).exists() else "does not exist"
        raise ConfigError(f"init_from: {cfg.init_from} {why}; pretrain one first (genomamba pretrain -c "
                          "configs/pretrain/tiny_cpu.yaml saves runs/pretrain_tiny/model) or set init_from: null")
    if cfg.init_from and dna:
        _check_init_tokenizer(cfg.init_from, adapter.tokenizer)
    run_dir, ckpt_path = prepare_run_dir(cfg, resume, force=force)
    tok = adapter.tokenizer if dna else adapter  # DNA: the adapter's tokenizer (its IUPAC policy)
    d = cfg.data
    dm = SpeciesDataModule(d.manifest, d.length, d.batch_size, d.train_samples, d.val_per_label, d.test_per_label,
                           d.rc_prob, d.num_workers, cfg.trainer.seed, tokenizer=tok, train_length=d.train_length,
                           augment=d.augment)
    dm.setup("fit")
    if ckpt_path is not None:
        _check_resumed_labels(ckpt_path, dm.labels, dm.manifest.source_path)
    model_cfg = {"vocab_size": tok.vocab_size, **cfg.model.to_dict()} if cfg.model is not None else None
    module = ClassifierModule(dm.labels, model=model_cfg, init_from=cfg.init_from, pooling=cfg.head.pooling,
                              freeze_backbone=cfg.head.freeze_backbone, dropout=cfg.head.dropout,
                              optim=to_plain(cfg.optim), plot_dir=str(run_dir), tta_rc=cfg.head.tta_rc,
                              adapter=adapter.to_dict(), frontend=cfg.head.frontend)
    keep_activations(module, cfg.trainer.keep_activations)
    title = f"{cfg.name or 'classify'}: L={d.length}, " + ("from " + cfg.init_from if cfg.init_from else "scratch")
    trainer = build_trainer(cfg.trainer, run_dir, [], title, ("train/loss", "train/acc"),
                            ("val/loss", "val/acc", "val/f1_macro"), has_val=dm.val_ds is not None, quiet=quiet)
    t0 = time.time()
    fit(trainer, module, dm, ckpt_path)
    fit_s = time.time() - t0
    final_checkpoint(trainer, run_dir)
    final_validation(trainer, module, dm, run_dir)
    kept = keep_weights(trainer, module)
    out = module.net.save_pretrained(run_dir / "model")
    tok.save_pretrained(out) if dna else adapter.save(out)  # adapter.json: what genomamba.load reads
    results = {"kind": "classify", "name": cfg.name, "global_step": int(trainer.global_step),
               "fit_seconds": round(fit_s, 1), "length": d.length, "labels": dm.labels, "model_dir": str(out),
               "init_from": cfg.init_from, "head_from": module.head_from, "kept": kept,
               "throughput": throughput(trainer)}
    if not dna:
        results["adapter"] = adapter.to_dict()
    if getattr(dm, "test_ds", None) is not None:
        with after_fit(trainer, "the test"):
            trainer.test(module, datamodule=dm, verbose=not quiet)
        results["test"] = module.last_results.get("test", {})
        results["test"]["n_windows"] = len(dm.test_ds)
        if cfg.baselines and adapter.name == "audio":  # the same held-out clips, as the model reads them
            results["baselines"] = audio_clip_baselines(dm.manifest, adapter)
        elif cfg.baselines and dna:
            results["baselines"] = species_baselines(dm.manifest, d.length, ks=cfg.baselines,
                                                     eval_windows=dm.test_ds)
    write_json(run_dir / "results.json", results)
    return results


def _check_init_tokenizer(init_from: str, tok: DNATokenizer) -> None:
    """A DNA model to fine-tune must read ambiguity codes as the config's tokenizer writes them (the
    policy for other letters may differ: it only decides what is refused)."""
    if not (Path(init_from) / "tokenizer.json").exists():
        return
    theirs = DNATokenizer.from_pretrained(init_from)
    if (theirs.iupac, theirs.vocab_size) != (tok.iupac, tok.vocab_size):
        raise ConfigError(f"init_from: {init_from} was trained with {theirs!r}, the config's adapter asks for "
                          f"{tok!r}; set adapter: {{name: dna, iupac: {theirs.iupac}}}")


def _check_resumed_labels(ckpt_path, labels: list, manifest) -> None:
    """A resumed classifier's head rows are the checkpoint's labels, in its order."""
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    saved = list((ck.get("hyper_parameters") or {}).get("labels") or [])
    if saved and saved != list(labels):
        raise ConfigError(f"--resume: the checkpoint's labels {saved} differ from {manifest}'s {list(labels)} "
                          "(its head's rows are in the checkpoint's order); resume with that manifest, or start "
                          "a new run with init_from")


def fit_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="genomamba classify fit", description="Fine-tune the species classifier.")
    add_run_args(ap)
    ap.add_argument("--init-from", help="pretrained model dir, or a classifier dir whose head is kept when the "
                                        "labels match, e.g. 1 kb -> 16 kb windows (overrides init_from)")
    args = ap.parse_args(argv)
    if args.init_from:
        args.overrides.append(f"init_from={args.init_from}")
    cfg = config_from_args(args, "classify")
    res = run_classify(cfg, resume=args.resume, force=args.force)
    t = res.get("test", {})
    line = f"done: step {res['global_step']}, model saved to {res['model_dir']}"
    if t:
        line += f"; held-out accuracy {t['acc']:.3f}, macro-F1 {t['f1_macro']:.3f} on {t['n_windows']} windows"
    for k, v in res.get("baselines", {}).items():
        if k.startswith("nb") or k in ("gc", "logspec", "mfcc"):
            line += f"; {k} {v:.3f}"
    speed = (res.get("throughput") or {}).get("tokens_per_s")
    line += f"; trained at {speed:,.0f} tokens/s" if speed else ""
    print(line)
    return 0


def _classifier_input(model: str):
    """What a saved classifier reads: its adapter (text, audio) or its DNA tokenizer."""
    if (Path(model) / ADAPTER_FILE).exists():
        adapter = adapter_from_json(model)
        if adapter.name != "dna":
            return adapter
    return DNATokenizer.from_pretrained(model) if (Path(model) / "tokenizer.json").exists() else DNATokenizer()


def evaluate_main(argv) -> int:
    ap = argparse.ArgumentParser(
        prog="genomamba classify evaluate",
        description="Score a saved classifier, or the ensemble of several, on a manifest split (held-out "
                    "strains, voices or engines).")
    ap.add_argument("--model", required=True, action="append",
                    help="classifier dir (classify fit's RUN_DIR/model); repeat it to score the ensemble of "
                         "several (their class probabilities averaged)")
    ap.add_argument("--manifest", default=None,
                    help="manifest path, 'assets', 'fetch:bacteria', 'fetch:digits' or 'assets:digits' "
                         "(default: 'assets' for DNA; text and audio classifiers need one)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--length", type=int, default=None,
                    help="window length in tokens (default: 1024 for DNA, one second of samples for audio)")
    ap.add_argument("--per-label", type=int, default=None,
                    help="windows per class (default: 200 for DNA; text and audio: every file of the split once)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--baselines", default=None,
                    help="DNA: comma-separated k of k-mer NB baselines (default '4'; '' for none); "
                         "audio: 'logspec' for softmax regression on log-spectral and cepstral features (default none)")
    ap.add_argument("--one-strand", action="store_true",
                    help="DNA: score each window as given (default: the mean over it and its reverse "
                         "complement, as classify fit's test does with head.tta_rc)")
    ap.add_argument("-o", "--out", help="write JSON (and a confusion PNG beside it)")
    ap.add_argument("--force", action="store_true", help="replace existing --out files")
    add_device_args(ap, "cuda where available, else cpu")
    args = ap.parse_args(argv)
    for name in ("length", "per_label", "batch_size"):
        if getattr(args, name) is not None:
            positive_int("--" + name.replace("_", "-"), getattr(args, name))
    apply_device_args(args)
    for model in args.model:
        if not (Path(model) / "head.json").exists():
            raise ConfigError(f"--model {model}: not a classifier directory (no head.json){run_dir_hint(model)}")
    refuse_repeats(args.model, "--model")  # an ensemble of a model with itself is that model, not two opinions
    if args.out:
        inputs = [f for model in args.model for f in model_files(model)]
        check_output(args.out, inputs, "--out", args.force)
        check_output(Path(args.out).with_suffix(".png"), inputs, "--out (its confusion PNG)", args.force)
    reader = _classifier_input(args.model[0])
    nets = []
    for model in args.model:
        theirs = _classifier_input(model)
        if theirs != reader:
            raise ConfigError(f"--model {model} reads its input as {theirs!r}, --model {args.model[0]} as {reader!r}: "
                              "an ensemble's members must read the same input")
        net = SequenceClassifier.from_pretrained(model)
        if nets and list(net.labels) != list(nets[0].labels):
            raise ConfigError(f"--model {model}: labels {net.labels} differ from --model {args.model[0]}'s "
                              f"{nets[0].labels}")
        nets.append(net)
    dna = isinstance(reader, DNATokenizer)
    if args.manifest is None and not dna:
        raise ConfigError(f"--manifest: the {reader.name} classifier {args.model[0]} needs one (e.g. fetch:digits, "
                          "assets:digits, or a labelled-file manifest)")
    baselines = args.baselines if args.baselines is not None else ("4" if dna else "")
    wanted = [b.strip() for b in baselines.split(",") if b.strip()]
    if dna and not all(b.isdigit() for b in wanted):
        raise ConfigError(f"--baselines {baselines!r}: a DNA classifier takes k-mer sizes, e.g. '2,4'")
    if not dna and wanted and (wanted != ["logspec"] or reader.name != "audio"):
        raise ConfigError(f"--baselines {baselines!r}: a {reader.name} classifier takes 'logspec' (audio only) or ''")
    man = SpeciesManifest.from_file(resolve_species_manifest(args.manifest or "assets"))
    unknown = [lab for lab in man.labels if lab not in nets[0].labels]
    if unknown:
        raise ConfigError(f"--manifest labels {unknown} are not among the model's {nets[0].labels}")
    if list(man.labels) != list(nets[0].labels):  # matched by name: another order, or a subset of the classes
        man = SpeciesManifest(man.genomes, list(nets[0].labels), name=man.name, source=man.source_path)
    length = args.length or (1024 if dna else getattr(reader, "sample_rate", None) or 1024)
    per_label = args.per_label if args.per_label is not None else (200 if dna else None)
    ds = SpeciesEvalWindows(man, args.split, length, per_label=per_label, seed=args.seed, return_mask=True,
                            tokenizer=reader)
    rc = reader if dna and not args.one_strand else None  # both strands, as fit's test scores them
    members = [evaluate_classifier(net, ds, args.batch_size, device=args.device, rc_tokenizer=rc) for net in nets]
    if len(members) == 1:
        res = members[0]
    else:
        res = score_probabilities(torch.stack([m["probs"] for m in members]).mean(0), members[0]["targets"],
                                  nets[0].labels)
        res["members"] = [{"model": str(model), "acc": m["acc"], "f1_macro": m["f1_macro"]}
                          for model, m in zip(args.model, members)]
    res.pop("probs")
    res.pop("targets")
    untrained = [lab for lab in man.labels if not man.entries("train", lab)]
    if wanted and untrained:  # the baselines learn every class from the manifest's training genomes
        print(f"genomamba classify evaluate: note: no baselines: {untrained} have no training genome in "
              f"{man.source_path}", file=sys.stderr)
        wanted = []
    if wanted and dna:
        res["baselines"] = species_baselines(man, length, ks=[int(k) for k in wanted], eval_windows=ds)
    elif wanted:
        res["baselines"] = audio_clip_baselines(man, reader, eval_split=args.split)
    unit = "bp" if dna else f"{reader.unit}s"
    what = "ensemble of " + str(len(nets)) + " models" if len(nets) > 1 else "model"
    print(f"{args.split} ({what}): accuracy {res['acc']:.4f}, macro-F1 {res['f1_macro']:.4f} "
          f"({res['n_windows']} windows of {length} {unit})")
    for m in res.get("members", []):
        print(f"  member {m['model']}: accuracy {m['acc']:.4f}, macro-F1 {m['f1_macro']:.4f}")
    for k, v in res.get("baselines", {}).items():
        if k in ("gc", "logspec", "mfcc") or k.startswith("nb"):
            print(f"  baseline {k}: {v:.4f}")
    if args.out:
        write_json(Path(args.out), res, replace=args.force)
        save_confusion_png(np.array(res["confusion"]), nets[0].labels,
                           Path(args.out).with_suffix(".png"), f"{args.split}: acc {res['acc']:.3f}")
    return 0


def predict_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="genomamba classify predict",
                                 description="Label each FASTA record (window probabilities averaged).")
    ap.add_argument("fasta", nargs="+")
    ap.add_argument("--model", required=True, help="classifier directory (classify fit's RUN_DIR/model)")
    ap.add_argument("--length", type=int, default=1024, help="window length")
    ap.add_argument("--max-windows", type=int, default=64, help="per record (evenly spaced)")
    ap.add_argument("-o", "--out", help="TSV path (default: stdout)")
    ap.add_argument("--one-strand", action="store_true",
                    help="score each window as given (default: the mean over it and its reverse complement)")
    ap.add_argument("--force", action="store_true", help="replace an existing --out file")
    add_device_args(ap)
    args = ap.parse_args(argv)
    positive_int("--length", args.length)
    apply_device_args(args)
    positive_int("--max-windows", args.max_windows)
    for path in args.fasta:
        check_input_file(path, "fasta")
    refuse_repeats(args.fasta, "fasta")
    if args.out:
        check_output(args.out, [*args.fasta, *model_files(args.model)], "--out", args.force)
    if not Path(args.model).is_dir():
        raise ConfigError(f"--model {args.model}: " + ("not a directory" if Path(args.model).exists()
                                                       else "no such directory") + "; expected a classifier directory")
    if not (Path(args.model) / "head.json").exists():
        raise ConfigError(f"--model {args.model}: not a classifier directory (no head.json)"
                          f"{run_dir_hint(args.model)}")
    tok = _classifier_input(args.model)
    if not isinstance(tok, DNATokenizer):
        raise ConfigError(f"--model {args.model}: a {tok.name} classifier; classify predict reads DNA FASTA "
                          "(score it with classify evaluate, or the Python API: genomamba.load(...).classify)")
    device = torch.device(args.device or "cpu")
    net = SequenceClassifier.from_pretrained(args.model).to(device).eval()
    # several files: a leading file column, since record names need only be unique within a file
    several = len(args.fasta) > 1
    rows = [("file\t" if several else "") + "record\tlength\twindows\tlabel\t"
            + "\t".join(f"p_{lab}" for lab in net.labels)]
    acgt = np.array([tok.a_id, tok.c_id, tok.g_id, tok.t_id])
    for path in args.fasta:
        for rec in read_records(path, any_letter=tok.reads_any_letter):
            ids = tok.encode(rec.sequence).astype(np.int64)
            L = min(args.length, len(ids))
            n_acgt = int(np.isin(ids, acgt).sum())
            why = weak_input(len(ids), n_acgt) if n_acgt else \
                f"no A/C/G/T base in {len(ids):,} bases (all N or ambiguity codes): not labelled (NA)"
            if why is None and L < args.length:
                why = f"{len(ids):,} bases, shorter than --length {args.length}: classified on one shorter window"
            if why:
                print(f"genomamba classify predict: warning: {path}: {rec.name}: {why}", file=sys.stderr)
            starts = np.unique(np.linspace(0, len(ids) - L, num=min(args.max_windows, max(1, len(ids) // L)))
                               .astype(int))
            x = torch.from_numpy(np.stack([ids[s:s + L] for s in starts]))
            with torch.no_grad():  # both strands unless asked, as classify fit's test and the Python API
                p = window_probs(net, x.to(device), rc_tokenizer=None if args.one_strand else tok).mean(0).cpu()
            lead = (f"{path}\t" if several else "") + f"{rec.name}\t{len(ids)}\t{len(starts)}\t"
            if not n_acgt:  # nothing to go by: no label, not a confident-looking guess
                rows.append(lead + "NA\t" + "\t".join("NA" for _ in p))
            else:
                rows.append(lead + f"{net.labels[int(p.argmax())]}\t" + "\t".join(f"{float(v):.4f}" for v in p))
    text = "\n".join(rows) + "\n"
    if args.out:
        write_text(args.out, text, replace=args.force)
        print(f"wrote {len(rows) - 1} predictions to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


SUBCOMMANDS = {"fit": fit_main, "evaluate": evaluate_main, "predict": predict_main}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        msg = "usage: genomamba classify {fit,evaluate,predict} [options]  (each takes --help)"
        if argv and argv[0] not in ("-h", "--help"):
            print(f"genomamba classify: unknown subcommand {argv[0]!r}\n{msg}", file=sys.stderr)
            return 2
        print(msg)
        return 0
    try:
        return SUBCOMMANDS[argv[0]](argv[1:])
    except (UserError, OSError, ValueError) as e:
        return report(f"classify {argv[0]}", e, 2)
