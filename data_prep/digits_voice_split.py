#!/usr/bin/env python
"""Write a second split of the spoken-digit set: some flite voices join training, the rest are the test.

    python data_prep/digits_voice_split.py $GENOMAMBA_DATA/digits/manifest.csv \
        --train-voices kal kal16 awb [--out manifest_voices.csv] [--force]

``genomamba data fetch digits`` holds out the whole flite engine (test) and whole espeak-ng variants
(val). This script keeps those val clips and moves the clips of the named flite voices into train, so
the test split becomes the flite speakers never heard in training (with the defaults: slt, a female
and rms, a male US speaker). It answers a narrower question than the engine split: does the model
recognise new speakers of a synthesizer family it has heard, rather than a family it has never heard.

The new manifest is written beside the original (same relative clip paths), with every other column
unchanged; point a classifier config at it with ``--set data.manifest=.../manifest_voices.csv``.
An existing ``--out`` is replaced only with ``--force``, and never when it is the input manifest.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path


def split_by_voice(rows: list[dict], train_voices: set[str], where: str) -> list[dict]:
    """Rows with the flite clips of ``train_voices`` in train and every other flite clip in test.

    Raises ValueError naming ``where`` when a voice is absent or when no flite voice would be left to test.
    """
    flite = {r["voice"] for r in rows if r["engine"] == "flite"}
    missing = sorted(train_voices - flite)
    if missing:
        raise ValueError(f"{where}: no flite clips of voice(s) {missing}; the manifest has {sorted(flite)}")
    if not flite - train_voices:
        raise ValueError(f"{where}: every flite voice {sorted(flite)} would train; leave at least one to test")
    out = []
    for r in rows:
        r = dict(r)
        if r["engine"] == "flite":
            r["split"] = "train" if r["voice"] in train_voices else "test"
        out.append(r)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("manifest", type=Path, help="manifest.csv of genomamba data fetch digits")
    p.add_argument("--train-voices", nargs="+", default=["kal", "kal16", "awb"],
                   help="flite voices moved into train (default: kal kal16 awb)")
    p.add_argument("--out", default="manifest_voices.csv", help="file name, written beside the manifest")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    a = p.parse_args(argv)
    if not a.manifest.is_file():
        p.error(f"{a.manifest}: not a file")
    out = a.manifest.parent / a.out
    if os.path.realpath(out) == os.path.realpath(a.manifest) or (out.exists() and os.path.samefile(out, a.manifest)):
        p.error(f"--out {out}: is the input manifest; writing it would destroy the input, choose another name")
    if out.is_dir():
        p.error(f"--out {out}: is a directory; give a file name")
    if (out.exists() or out.is_symlink()) and not a.force:
        p.error(f"--out {out}: exists; use --force to replace it")
    with open(a.manifest, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    need = {"engine", "voice", "split"}
    if not fields or not need <= set(fields):
        p.error(f"{a.manifest}: needs the columns {sorted(need)} of a spoken-digit manifest")
    try:
        rows = split_by_voice(rows, set(a.train_voices), str(a.manifest))
    except ValueError as e:
        p.error(str(e))
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    print(f"wrote {out}: {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
