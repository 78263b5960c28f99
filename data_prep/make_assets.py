#!/usr/bin/env python
"""Regenerate genomamba/assets/ (the real genome slices shipped in the package) from Debian packages.

    python data_prep/make_assets.py [--cache DIR] [--out genomamba/assets] [--check]

Deterministic: fixed slice coordinates, gzip with mtime 0 and no file name, 60-column lines, so
running it twice gives byte-identical files (``--check`` compares instead of writing; a test
does that). Slices keep the original record accession as the name, with the slice appended
samtools-style (``CP000647.1:531512-541512``), and the original header text in the description.

What ships (about 0.5 MB compressed):
- bacteria_<strain>.fasta.gz: for each of the 20 genomes of the 5-species set, four 10 kb
  slices of the chromosome (largest record) at 10/35/60/85 % of its length; train/test split of
  the strain as in the full set (held-out strains are test);
- umaydis_{train,val,test}.fa.gz: U. maydis slices, test from chr21 (held-out chromosome);
- fly_chr2R_slice.fa.gz: 100 kb of D. melanogaster chr2R with its soft-masked (lowercase) repeats;
- lambda_virus.fa.gz: phage lambda, whole (the package's own file).
"""

from __future__ import annotations

import argparse
import gzip
import io
import shutil
import sys
from pathlib import Path

import yaml

from genomamba.data.fasta import file_sha256, read_fasta
from genomamba.data.fetch import BACTERIA_LABELS, DATASETS, cache_dir, fetch

SLICE = 10_000
FRACTIONS = (0.10, 0.35, 0.60, 0.85)
# (split, [(chromosome, start, stop)]) for U. maydis: train/val from chr01-chr20, test from chr21.
UMAYDIS = {
    "train": [("chr01", 500_000, 700_000), ("chr02", 500_000, 600_000)],
    "val": [("chr20", 200_000, 250_000)],
    "test": [("chr21", 200_000, 300_000)],
}
FLY = (5_000_000, 5_100_000)


def fasta_bytes(records: list[tuple[str, str]], width: int = 60) -> bytes:
    out = io.StringIO()
    for header, seq in records:
        out.write(f">{header}\n")
        for i in range(0, len(seq), width):
            out.write(seq[i : i + width] + "\n")
    raw = out.getvalue().encode("ascii")
    buf = io.BytesIO()
    # mtime=0 and an empty name make the gzip bytes a pure function of the text.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(raw)
    return buf.getvalue()


def _slice_header(rec, start: int, stop: int) -> str:
    rest = rec.description[len(rec.name) :].strip()
    return f"{rec.name}:{start}-{stop} {rest} [slice {start}-{stop} of {len(rec.sequence)}]".replace(
        "  ", " "
    )


def build(cache: Path) -> dict[str, bytes]:
    """All asset files as {relative path: bytes}, plus manifest.yaml."""
    files: dict[str, bytes] = {}
    genomes, pretrain, provenance = [], [], []

    bac = fetch("bacteria", cache, quiet=True)
    for f in DATASETS["bacteria"]:
        recs = list(read_fasta(bac / f.dest))
        chrom = max(recs, key=lambda r: len(r.sequence))
        out = []
        for frac in FRACTIONS:
            s = int(frac * len(chrom.sequence))
            out.append((_slice_header(chrom, s, s + SLICE), chrom.sequence[s : s + SLICE]))
        gid = Path(f.dest).name.split(".")[0]
        rel = f"bacteria_{gid}.fasta.gz"
        files[rel] = fasta_bytes(out)
        genomes.append({"id": gid, "label": f.label, "path": rel, "split": f.split})
        provenance.append({"path": rel, "package": f.package, "member": f.member, "source_sha256": f.sha256})

    um = fetch("umaydis", cache, quiet=True)
    f = DATASETS["umaydis"][0]
    by_chrom = {r.name.split(":")[1]: r for r in read_fasta(um / f.dest)}
    for split, parts in UMAYDIS.items():
        out = []
        for chrom, a, b in parts:
            rec = by_chrom[chrom]
            out.append((_slice_header(rec, a, b), rec.sequence[a:b]))
        rel = f"umaydis_{split}.fa.gz"
        files[rel] = fasta_bytes(out)
        pretrain.append({"id": f"umaydis_{split}", "path": rel, "split": split})
        provenance.append({"path": rel, "package": f.package, "member": f.member, "source_sha256": f.sha256})

    fly = fetch("fly", cache, quiet=True)
    f = DATASETS["fly"][0]
    rec = next(iter(read_fasta(fly / f.dest)))
    a, b = FLY
    files["fly_chr2R_slice.fa.gz"] = fasta_bytes([(_slice_header(rec, a, b), rec.sequence[a:b])])
    pretrain.append({"id": "fly_chr2R_slice", "path": "fly_chr2R_slice.fa.gz", "split": "train"})
    provenance.append(
        {"path": "fly_chr2R_slice.fa.gz", "package": f.package, "member": f.member, "source_sha256": f.sha256}
    )

    lam = fetch("lambda", cache, quiet=True)
    f = DATASETS["lambda"][0]
    files["lambda_virus.fa.gz"] = (lam / f.dest).read_bytes()
    pretrain.append({"id": "lambda", "path": "lambda_virus.fa.gz", "split": "train"})
    provenance.append(
        {"path": "lambda_virus.fa.gz", "package": f.package, "member": f.member, "source_sha256": f.sha256}
    )

    manifest = {
        "name": "genomamba-assets",
        "description": (
            "Real genome slices shipped with genomamba (regenerate: python data_prep/make_assets.py). "
            "genomes: 5-species classification set, 4 x 10 kb per strain, held-out strains are test. "
            "pretrain: LM corpus slices; U. maydis test comes from chr21, a held-out chromosome."
        ),
        "labels": BACTERIA_LABELS,
        "genomes": genomes,
        "pretrain": pretrain,
        "provenance": provenance,
    }
    files["manifest.yaml"] = yaml.safe_dump(manifest, sort_keys=False, width=100).encode()
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--cache", type=Path, default=None, help="fetch cache (default $GENOMAMBA_DATA)")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "genomamba" / "assets"
    )
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing")
    args = ap.parse_args(argv)
    files = build(args.cache or cache_dir())
    if args.check:
        bad = [p for p, b in files.items() if not (args.out / p).exists() or (args.out / p).read_bytes() != b]
        for p in bad:
            print(f"differs: {p}", file=sys.stderr)
        print(f"{len(files) - len(bad)}/{len(files)} asset files identical")
        return 1 if bad else 0
    if args.out.exists():
        # Flat layout (pyproject's package-data globs assets/* only): drop stale files first.
        for old in list(args.out.glob("*.gz")) + [args.out / "manifest.yaml"]:
            old.unlink(missing_ok=True)
        for sub in ("bacteria", "umaydis"):
            shutil.rmtree(args.out / sub, ignore_errors=True)
    for p, b in files.items():
        (args.out / p).parent.mkdir(parents=True, exist_ok=True)
        (args.out / p).write_bytes(b)
    total = sum(len(b) for b in files.values())
    print(f"wrote {len(files)} files, {total / 1e3:.0f} kB, into {args.out}")
    for p in sorted(files):
        print(f"  {p:40s} {len(files[p]):>8d} B  sha256 {file_sha256(args.out / p)[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
