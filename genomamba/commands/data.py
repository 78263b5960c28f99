"""``genomamba data ...``: fetch genomes, build token stores, inspect and validate.

genomamba data fetch NAME [--dest DIR] [--no-verify]      NAME: bacteria umaydis fly lambda
genomamba data fetch url URL [--dest DIR] [--sha256 HEX] [--filename NAME]
genomamba data build FASTA... --out STORE.h5 [--genome-ids ID...] [--compression lzf] [--force]
genomamba data build --adapter text|audio FILE... --out STORE.h5 [--force]   one contig per file (bytes, mu-law samples)
genomamba data build --manifest MANIFEST.yaml --out STORE.h5 [--force]
genomamba data info STORE.h5
genomamba data check FASTA...                             validate; prints records and bases
genomamba data assets                                     path of the shipped manifest
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from genomamba.adapters import get_adapter
from genomamba.data.fasta import read_records
from genomamba.data.fetch import cache_dir, dataset_names, default_assets, fetch, fetch_url
from genomamba.data.species import SpeciesManifest
from genomamba.data.store import TokenStore
from genomamba.errors import InvalidArgument, UserError, check_input_file, report
from genomamba.files import check_output
from genomamba.tokenizers.dna import DNATokenizer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genomamba data", description="genome data: fetch, build, inspect")
    sub = p.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fetch", help="fetch a named data set (from Debian packages), or `url URL`")
    f.add_argument("name", help=f"{' | '.join(dataset_names())} | url")
    f.add_argument("url", nargs="?", help="with name=url: the https URL")
    f.add_argument(
        "--dest", type=Path, default=None, help="cache folder (default $GENOMAMBA_DATA or ~/.cache/genomamba)"
    )
    f.add_argument(
        "--no-verify", action="store_true", help="accept files whose sha256 differs from the pinned one"
    )
    f.add_argument("--sha256", default=None, help="with url: expected SHA-256 of the file")
    f.add_argument("--filename", default=None, help="with url: local file name")

    b = sub.add_parser("build", help="FASTA/GenBank -> HDF5 token store")
    b.add_argument("inputs", nargs="*", type=Path)
    b.add_argument("-o", "--out", type=Path, required=True, help="the HDF5 token store to write")
    b.add_argument("--manifest", type=Path, default=None, help="build from a species manifest's genomes")
    b.add_argument("--genome-ids", nargs="*", default=None, help="one id per input; prefixes contig names")
    b.add_argument(
        "--compression", default="none", choices=("none", "lzf", "gzip"),
        help="HDF5 compression; default none = fastest reads",
    )
    b.add_argument("--force", action="store_true", help="replace an existing --out file")
    b.add_argument("--iupac", default="n", choices=["n", "tokens", "unk", "error"])
    b.add_argument("--adapter", default="dna", choices=["dna", "text", "audio"],
                   help="text / audio: each input file is one contig of bytes / 16 kHz mu-law samples")

    i = sub.add_parser("info", help="describe a token store",
                       description="Describe a token store: per contig its genome, length, N and soft-masked bases.")
    i.add_argument("store", type=Path, help="an HDF5 store written by `genomamba data build`")

    c = sub.add_parser("check", help="validate FASTA/GenBank files",
                       description="Read FASTA/GenBank files (plain, gzip, bgzip, xz, bzip2) as training does; "
                                   "print the records and bases of each, or the first problem with its file "
                                   "and record.")
    c.add_argument("inputs", nargs="+", type=Path, help="FASTA or GenBank files")

    sub.add_parser("assets", help="print the shipped assets manifest path",
                   description="Print the path of the species manifest of the genome slices shipped with genomamba.")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _dispatch(args)
    except (UserError, OSError, ValueError, KeyError) as e:
        return report(f"data {args.cmd}", e, 1)


def _dispatch(args) -> int:
    if args.cmd == "fetch":
        if args.name == "url":
            if not args.url:
                print("genomamba data fetch: error: url: give the URL (genomamba data fetch url URL)", file=sys.stderr)
                return 2
            path = fetch_url(
                args.url,
                args.dest or cache_dir() / "url",
                sha256=args.sha256,
                filename=args.filename,
                quiet=False,
            )
        else:
            path = fetch(args.name, args.dest, verify=not args.no_verify)
        print(path)
        return 0

    if args.cmd == "build":
        tok = DNATokenizer(iupac=args.iupac) if args.adapter == "dna" else get_adapter(args.adapter)
        t0 = time.perf_counter()
        compression = None if args.compression == "none" else args.compression
        if args.manifest is not None:
            if args.inputs or args.genome_ids is not None:
                raise InvalidArgument("give FASTA files or --manifest, not both (the manifest names the genomes)")
            man = SpeciesManifest.from_file(args.manifest)
            check_output(args.out, [args.manifest] + [g.path for g in man.genomes], "--out", args.force)
            store = man.build_store(args.out, tok, replace=args.force, compression=compression)
        else:
            if not args.inputs:
                if args.genome_ids:  # the option took every word after it, the files too
                    raise InvalidArgument(f"--genome-ids took every word after it ({' '.join(args.genome_ids)}) "
                                          "and no input file is left; put the files first: "
                                          "data build a.fa b.fa --genome-ids A B --out store.h5")
                raise InvalidArgument("give input files (FASTA / GenBank, or text / audio files with --adapter) "
                                      "or --manifest")
            if args.genome_ids is not None and len(args.genome_ids) != len(args.inputs):
                raise InvalidArgument(f"--genome-ids: {len(args.genome_ids)} ids for {len(args.inputs)} input "
                                      "files; give one id per file")
            for p in args.inputs:
                check_input_file(p, "input")
            check_output(args.out, args.inputs, "--out", args.force)
            store = TokenStore.build(
                args.inputs, args.out, tok, genome_ids=args.genome_ids, compression=compression,
                replace=args.force,
            )
        total = int(store.lengths.sum())
        dt = time.perf_counter() - t0
        print(
            f"built {args.out}: {len(store.contigs)} contigs, {total:,} tokens in {dt:.1f}s "
            f"({total / dt / 1e6:.1f} Mtok/s)"
        )
        return 0

    if args.cmd == "info":
        check_input_file(args.store, "store")
        st = TokenStore(args.store)
        print(
            f"{args.store}: {len(st.contigs)} contigs, {int(st.lengths.sum()):,} tokens, "
            f"tokenizer {st.tokenizer}"
        )
        print(f"{'contig':40s} {'genome':16s} {'length':>12s} {'N':>10s} {'softmasked':>11s}")
        for k, c in enumerate(st.contigs):
            n = st.n_count(k, 0, c.length)
            soft = st._soft[k].total
            print(f"{c.name[:40]:40s} {st.genome_of(k)[:16]:16s} {c.length:>12,d} {n:>10,d} {soft:>11,d}")
        return 0

    if args.cmd == "check":
        for p in args.inputs:
            n = bases = 0
            for rec in read_records(p):
                n += 1
                bases += len(rec.sequence)
            print(f"{p}: ok, {n} records, {bases:,} bases")
        return 0

    if args.cmd == "assets":
        print(default_assets())
        return 0
    return 2
