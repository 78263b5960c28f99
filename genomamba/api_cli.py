"""``genomamba embed | score | generate``: the Python API (genomamba.api) on the command line.

    genomamba embed MODEL_DIR genome.fa -o genome.h5 [--pooling mean|last|max|none]
    genomamba score MODEL_DIR genome.fa [-o scores.tsv | scores.json]
    genomamba generate MODEL_DIR --prompt ACGT -n 1000 [--temperature 0.8 --top-k 4 --seed 0]

Each entry takes argv (a list of str) and returns an exit code: 0 success, 1 bad input or model
(the message names the file / record / argument), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

EMBED_FORMAT = "genomamba.embeddings/1"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory (config.json + model.safetensors [+ tokenizer.json])")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _setup(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from genomamba.api import load

    return load(args.model, device=args.device)


def _fail(cmd: str, exc: BaseException) -> int:
    print(f"genomamba {cmd}: error: {exc}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------- embed


def hdf5_name(record_name: str) -> str:
    """A record name as an HDF5 dataset name: ``/`` would make groups and ``.`` names the group
    itself, so ``%`` and ``/`` are percent-encoded and a name of only dots gets a ``%2E``
    prefix. The original name is kept in the dataset's ``name`` attribute (and is recovered by
    ``urllib.parse.unquote``)."""
    out = record_name.replace("%", "%25").replace("/", "%2F")
    if out == "" or set(out) == {"."}:
        out = "%2E" + out[1:] if out else "%00"
    return out


def embed_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genomamba embed",
        description="Embed every record of a FASTA file with a trained model into an HDF5 file: one "
                    "dataset per record, (d_model,) pooled or (length, d_model) per token. Sequences "
                    "of any length run in chunks with the recurrent state carried (bounded memory); "
                    "the output is written to a temporary file and renamed at the end, so a failed "
                    "run never leaves a partial file.")
    _common(p)
    p.add_argument("fasta", help="FASTA file (plain, gzip, bgzip, xz)")
    p.add_argument("-o", "--output", required=True, help="output .h5 file")
    p.add_argument("--pooling", choices=("mean", "last", "max", "none"), default="mean",
                   help="mean/last/max -> one (d_model,) vector per record; none -> per-token (l, d_model)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=16384, help="tokens per forward pass")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored dtype")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    return p


def _atomic_h5(path: Path, fill) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as h5:
            fill(h5)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def embed_fasta(model, fasta, output, pooling: Optional[str] = "mean", batch_size: int = 8,
                chunk_size: int = 16384, dtype: str = "float32", quiet: bool = True) -> dict:
    """FASTA -> HDF5 (atomically). Per-token output streams chunk by chunk into the dataset, so
    memory stays bounded however long a record is. Returns a summary dict."""
    import torch

    from genomamba.api import iter_sequences

    output = Path(output)
    np_dtype = np.dtype(dtype)
    summary = {"records": 0, "bases": 0}
    t0 = time.time()

    def add(h5, name, arr_or_shape, length, description=None):
        key = hdf5_name(name)
        if key in h5:
            raise ValueError(f"fasta: duplicate record name {name!r}")
        if isinstance(arr_or_shape, tuple):
            ds = h5.create_dataset(key, shape=arr_or_shape, dtype=np_dtype,
                                   chunks=(min(arr_or_shape[0], 4096), arr_or_shape[1]))
        else:
            ds = h5.create_dataset(key, data=arr_or_shape.astype(np_dtype))
        ds.attrs["name"] = name
        ds.attrs["length"] = length
        summary["records"] += 1
        summary["bases"] += length
        if not quiet:
            print(f"  {name}: {length:,} bases", file=sys.stderr)
        return ds

    def fill(h5):
        h5.attrs["format"] = EMBED_FORMAT
        h5.attrs["model"] = str(model.path) if model.path else ""
        h5.attrs["pooling"] = pooling or "none"
        h5.attrs["d_model"] = model.d_model
        h5.attrs["source"] = str(fasta)
        if pooling is not None:
            lengths = {}
            for i, (name, s) in enumerate(iter_sequences(fasta, "fasta")):
                lengths.setdefault(name, len(s))
            for name, vec in model.iter_embed(fasta, pooling=pooling, batch_size=batch_size,
                                              chunk_size=chunk_size, arg="fasta"):
                add(h5, name, vec, lengths[name])
        else:
            for i, (name, s) in enumerate(iter_sequences(fasta, "fasta")):
                ids = model.encode(s, where=f"fasta: record {i} ({name!r})")
                ds = add(h5, name, (len(ids), model.d_model), len(s))
                with torch.no_grad():
                    for start, h in model._chunks([ids], chunk_size):
                        ds[start:start + h.shape[1]] = h[0].float().cpu().numpy().astype(np_dtype)
        h5.attrs["n_records"] = summary["records"]

    _atomic_h5(output, fill)
    summary["seconds"] = round(time.time() - t0, 2)
    summary["output"] = str(output)
    return summary


def embed_main(argv: list[str]) -> int:
    args = embed_parser().parse_args(argv)
    out = Path(args.output)
    if out.exists() and not args.force:
        return _fail("embed", FileExistsError(f"--output {out} exists (use --force to overwrite)"))
    if not Path(args.fasta).is_file():
        return _fail("embed", FileNotFoundError(f"fasta: {args.fasta}: no such file"))
    try:
        model = _setup(args)
        s = embed_fasta(model, args.fasta, out, None if args.pooling == "none" else args.pooling,
                        args.batch_size, args.chunk_size, args.dtype, quiet=False)
    except (ValueError, FileNotFoundError, OSError) as exc:
        return _fail("embed", exc)
    print(f"embedded {s['records']} records ({s['bases']:,} bases) in {s['seconds']}s -> {s['output']}")
    return 0


# ----------------------------------------------------------------------------- score


def score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genomamba score",
        description="Log-likelihood (nats) and bits per base of each sequence under a trained model. "
                    "A/C/G/T targets are scored; N and other codes are context only.")
    _common(p)
    p.add_argument("fasta", nargs="?", help="FASTA file (or give sequences with --seq)")
    p.add_argument("--seq", action="append", default=[], help="a DNA sequence (repeatable)")
    p.add_argument("-o", "--output", default=None,
                   help="output file; .json -> JSON, otherwise TSV (default: TSV on stdout)")
    p.add_argument("--format", choices=("tsv", "json"), default=None, help="override the output format")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=16384)
    return p


def score_main(argv: list[str]) -> int:
    p = score_parser()
    args = p.parse_args(argv)
    if bool(args.fasta) == bool(args.seq):
        p.error("give either a FASTA file or one or more --seq, not both/neither")
    if args.fasta and not Path(args.fasta).is_file():
        return _fail("score", FileNotFoundError(f"fasta: {args.fasta}: no such file"))
    fmt = args.format or ("json" if args.output and args.output.endswith(".json") else "tsv")
    try:
        model = _setup(args)
        seqs = Path(args.fasta) if args.fasta else list(args.seq)
        scores = model.score(seqs, batch_size=args.batch_size, chunk_size=args.chunk_size)
    except (ValueError, FileNotFoundError, OSError) as exc:
        return _fail("score", exc)
    recs = scores.to_records()
    if fmt == "json":
        n = int(scores.n_scored.sum())
        total = {"n_scored": n, "log_likelihood": float(scores.log_likelihood.sum()),
                 "bits_per_base": float(-scores.log_likelihood.sum() / (n * np.log(2))) if n else None}
        text = json.dumps({"model": str(model.path), "records": recs, "total": total}, indent=2) + "\n"
    else:
        cols = ["name", "length", "n_scored", "log_likelihood", "bits_per_base"]
        lines = ["\t".join(cols)]
        for r in recs:
            lines.append("\t".join([r["name"], str(r["length"]), str(r["n_scored"]),
                                    f"{r['log_likelihood']:.6f}", f"{r['bits_per_base']:.6f}"]))
        text = "\n".join(lines) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# ----------------------------------------------------------------------------- generate


def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genomamba generate",
                                description="Sample DNA after a prompt (only A/C/G/T are sampled).")
    _common(p)
    p.add_argument("--prompt", required=True, help="DNA prompt (at least one base)")
    p.add_argument("-n", "--num-bases", type=int, default=1000, help="bases to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--include-prompt", action="store_true", help="print the prompt before the sample")
    p.add_argument("-o", "--output", default=None, help="write FASTA here instead of the bare sequence to stdout")
    return p


def generate_main(argv: list[str]) -> int:
    args = generate_parser().parse_args(argv)
    try:
        model = _setup(args)
        seq = model.generate(args.prompt, args.num_bases, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, seed=args.seed, include_prompt=args.include_prompt)
    except (ValueError, FileNotFoundError, OSError) as exc:
        return _fail("generate", exc)
    if args.output:
        header = (f">generated n={args.num_bases} temperature={args.temperature} top_k={args.top_k} "
                  f"top_p={args.top_p} seed={args.seed} prompt_len={len(args.prompt)}")
        body = "\n".join(seq[i:i + 80] for i in range(0, len(seq), 80))
        Path(args.output).write_text(header + "\n" + body + "\n")
    else:
        print(seq)
    return 0
