"""``genomamba score MODEL_DIR genome.fa [-o scores.tsv | scores.json]``: log-likelihood (nats) and
bits per base of each sequence. Exit codes: 0 success, 1 bad input or model, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from genomamba.commands.common import add_model_args, fail, load_model
from genomamba.files import write_text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genomamba score",
        description="Log-likelihood (nats) and bits per base of each sequence under a trained model. "
                    "A/C/G/T targets are scored; N and other codes are context only.")
    add_model_args(p)
    p.add_argument("fasta", nargs="?", help="FASTA file (or give sequences with --seq)")
    p.add_argument("--seq", action="append", default=[], help="a DNA sequence (repeatable)")
    p.add_argument("-o", "--output", default=None,
                   help="output file; .json -> JSON, otherwise TSV (default: TSV on stdout)")
    p.add_argument("--format", choices=("tsv", "json"), default=None, help="override the output format")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=16384)
    return p


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if bool(args.fasta) == bool(args.seq):
        p.error("give either a FASTA file or one or more --seq, not both/neither")
    if args.fasta and not Path(args.fasta).is_file():
        return fail("score", FileNotFoundError(f"fasta: {args.fasta}: no such file"))
    fmt = args.format or ("json" if args.output and args.output.endswith(".json") else "tsv")
    try:
        model = load_model(args)
        seqs = Path(args.fasta) if args.fasta else list(args.seq)
        scores = model.score(seqs, batch_size=args.batch_size, chunk_size=args.chunk_size)
    except (ValueError, FileNotFoundError, OSError) as exc:
        return fail("score", exc)
    recs = scores.to_records()
    bits = f"bits_per_{scores.unit}"  # bits_per_base (DNA), bits_per_byte (text), bits_per_sample (audio)
    if fmt == "json":
        n = int(scores.n_scored.sum())
        total = {"n_scored": n, "log_likelihood": float(scores.log_likelihood.sum()),
                 bits: float(-scores.log_likelihood.sum() / (n * np.log(2))) if n else None}
        text = json.dumps({"model": str(model.path), "records": recs, "total": total}, indent=2) + "\n"
    else:
        cols = ["name", "length", "n_scored", "log_likelihood", bits]
        lines = ["\t".join(cols)]
        for r in recs:
            lines.append("\t".join([r["name"], str(r["length"]), str(r["n_scored"]),
                                    f"{r['log_likelihood']:.6f}", f"{r[bits]:.6f}"]))
        text = "\n".join(lines) + "\n"
    if args.output:
        write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0
