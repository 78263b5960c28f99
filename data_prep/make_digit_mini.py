#!/usr/bin/env python
"""Regenerate genomamba/assets/digits/: a small spoken-digit set the CPU configs and tests train on.

    python data_prep/make_digit_mini.py [--out genomamba/assets/digits]

The same builder as ``genomamba data fetch digits`` (``genomamba.data.digits``), on a smaller plan:
the en-us accent with five espeak-ng voice variants (one held out whole for val) and two flite
voices (the test split: an engine never seen in training), one take per word. The clips are then
resampled to 8 kHz and stored as 16-bit FLAC to keep the package small; ``manifest.csv`` and
``provenance.json`` are those of the builder (paths kept, sample rate noted).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
from pathlib import Path

from genomamba.data.audio import read_audio, write_audio
from genomamba.data.digits import MANIFEST, PROVENANCE, DigitsConfig, make_spoken_digits

RATE = 8000
CONFIG = DigitsConfig(seed=0, takes=1, flite_takes=1, val_fraction=0.2, accents=("en-us",),
                      variants=("f2", "f4", "klatt", "m1", "m3"), flite_voices=("kal16", "slt"), workers=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "genomamba/assets/digits")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        built = make_spoken_digits(Path(tmp) / "digits", CONFIG)
        if args.out.exists():
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True)
        with open(built / MANIFEST, newline="") as fh:
            rows = list(csv.DictReader(fh))
        for r in rows:
            target = args.out / r["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            write_audio(read_audio(built / r["path"], RATE, quality="VHQ"), target, RATE, "FLAC")
        shutil.copy(built / MANIFEST, args.out / MANIFEST)
        prov = json.loads((built / PROVENANCE).read_text())
        prov.pop("seconds_to_build", None)
        prov["description"] += f"; resampled to {RATE} Hz for the package (data_prep/make_digit_mini.py)"
        prov["sample_rate"] = RATE
        (args.out / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
    print(f"{len(rows)} clips -> {args.out}")


if __name__ == "__main__":
    main()
