"""``genomamba score MODEL_DIR genome.fa [-o scores.tsv | scores.json]``: log-likelihood (nats) and
bits per base of each sequence (an output named ``.gz`` is gzip-compressed). Exit codes: 0 success,
1 bad input or model, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from genomamba.commands.common import add_model_args, cli_error, fail, load_model, model_files, positive_int
from genomamba.errors import InvalidArgument, UserError, check_input_file
from genomamba.files import check_output, json_text, write_text


def check_seqs(model, seqs: list[str]) -> None:
    """Every ``--seq`` encodable by the model; errors name the option (``--seq #2`` of several)."""
    for i, s in enumerate(seqs):
        where = "--seq" if len(seqs) == 1 else f"--seq #{i + 1}"
        if not s:
            raise InvalidArgument(f"{where}: empty sequence")
        model.encode(s, where=where)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genomamba score",
        description="Log-likelihood (nats) and bits per base of each sequence under a trained model. "
                    "A/C/G/T targets are scored; N and other codes are context only.")
    add_model_args(p)
    p.add_argument("fasta", nargs="?", help="FASTA file (or give sequences with --seq)")
    p.add_argument("--seq", action="append", default=[], help="a DNA sequence (repeatable)")
    p.add_argument("-o", "--output", default=None,
                   help="output file; .json -> JSON, otherwise TSV (default: TSV on stdout); a name ending "
                        "in .gz is gzip-compressed (scores.tsv.gz, scores.json.gz)")
    p.add_argument("--format", choices=("tsv", "json"), default=None, help="override the output format")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=16384)
    return p


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if bool(args.fasta) == bool(args.seq):
        p.error("give either a FASTA file or one or more --seq, not both/neither")
    name = args.output.lower().removesuffix(".gz") if args.output else ""
    fmt = args.format or ("json" if name.endswith(".json") else "tsv")
    try:
        if args.fasta:
            check_input_file(args.fasta, "fasta")
        if args.output:  # before any scoring: a bad output path costs nothing
            check_output(args.output, [args.fasta, *model_files(args.model)], "--output", args.force)
        positive_int("--batch-size", args.batch_size)
        positive_int("--chunk-size", args.chunk_size)
        model = load_model(args)
        if args.seq and getattr(getattr(model, "adapter", None), "name", "dna") == "audio":
            raise InvalidArgument("--seq: an audio model scores recordings; give the audio file (WAV, FLAC) instead")
        check_seqs(model, args.seq)
        seqs = Path(args.fasta) if args.fasta else list(args.seq)
        with warnings.catch_warnings():  # said below, once per record, in the command's own words
            warnings.filterwarnings("ignore", message=r".*nothing to score", category=UserWarning)
            scores = model.score(seqs, batch_size=args.batch_size, chunk_size=args.chunk_size)
    except (UserError, ValueError, OSError) as exc:
        where = str(Path(args.fasta)) if args.fasta else "--seq"
        return fail("score", cli_error(exc, {"seqs": where, "batch_size": "--batch-size",
                                             "chunk_size": "--chunk-size"}))
    recs = scores.to_records()
    bits = f"bits_per_{scores.unit}"  # bits_per_base (DNA), bits_per_byte (text), bits_per_sample (audio)
    for r in recs:
        if r["n_scored"] == 0:
            print(f"genomamba score: warning: {r['name']}: nothing scored; its {bits.replace('_', ' ')} is "
                  "undefined (null / NA), not 0", file=sys.stderr)
    if fmt == "json":
        n = int(scores.n_scored.sum())
        total = {"n_scored": n, "log_likelihood": float(scores.log_likelihood.sum()),
                 bits: float(-scores.log_likelihood.sum() / (n * np.log(2))) if n else None}
        text = json_text({"model": str(model.path), "records": recs, "total": total})
    else:
        cols = ["name", "length", "n_scored", "log_likelihood", bits]
        lines = ["\t".join(cols)]
        for r in recs:
            bpb = f"{r[bits]:.6f}" if r["n_scored"] else "NA"
            lines.append("\t".join([r["name"], str(r["length"]), str(r["n_scored"]),
                                    f"{r['log_likelihood']:.6f}", bpb]))
        text = "\n".join(lines) + "\n"
    if args.output:
        write_text(args.output, text, replace=args.force)
    else:
        sys.stdout.write(text)
    return 0
