#!/usr/bin/env python
"""Regenerate genomamba/assets/digits/: a small spoken-digit set the CPU configs and tests train on.

    python data_prep/make_digit_mini.py [--out genomamba/assets/digits] [--tools DIR] [--force]

The same builder as ``genomamba data fetch digits`` (``genomamba.data.digits``), on a smaller plan:
the en-us accent with five espeak-ng voice variants (one held out whole for val) and two flite
voices (the test split: an engine never seen in training), one take per word. The clips are then
resampled to 8 kHz and stored as 16-bit FLAC to keep the package small; ``manifest.csv`` and
``provenance.json`` are those of the builder (paths kept, sample rate noted).

espeak-ng and flite are taken from PATH, else unpacked from Debian packages into ``--tools``
(default: ``.debian-tools`` in $GENOMAMBA_DATA or ~/.cache/genomamba, the folder
``genomamba data fetch digits`` unpacks them into). ``--out`` is replaced when it is new, empty or
an earlier spoken-digit set; a folder holding other files is refused, before anything is
synthesized, unless ``--force``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path

from genomamba.data.audio import read_audio, write_audio
from genomamba.data.debian import DebianError
from genomamba.data.digits import (
    MANIFEST,
    PROVENANCE,
    DigitsConfig,
    check_replaceable,
    make_spoken_digits,
    replace_folder,
    staging_folder,
)
from genomamba.data.fetch import cache_dir
from genomamba.errors import UserError, one_line

RATE = 8000
CONFIG = DigitsConfig(seed=0, takes=1, flite_takes=1, val_fraction=0.2, accents=("en-us",),
                      variants=("f2", "f4", "klatt", "m1", "m3"), flite_voices=("kal16", "slt"), workers=2)
HOW = "choose another --out, or pass --force to replace it"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "genomamba/assets/digits")
    ap.add_argument("--tools", type=Path, default=None,
                    help="where espeak-ng and flite are unpacked when they are not on PATH "
                         "(default: .debian-tools in $GENOMAMBA_DATA or ~/.cache/genomamba)")
    ap.add_argument("--force", action="store_true", help="replace --out even when it holds files of its own")
    args = ap.parse_args(argv)
    tools = args.tools or cache_dir() / ".debian-tools"
    try:
        check_replaceable(args.out, args.force, how=HOW)  # before the build: a mistake costs nothing
        with tempfile.TemporaryDirectory(prefix="genomamba-digit-mini-") as tmp:
            built = make_spoken_digits(Path(tmp) / "digits", CONFIG, tools_dir=tools)
            work = staging_folder(args.out)
            try:
                n = _resample(built, work)
                replace_folder(work, args.out, args.force, how=HOW)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
    except (UserError, DebianError, OSError, ValueError) as e:
        print(f"make_digit_mini: error: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"{n} clips -> {args.out}")
    return 0


def _resample(built: Path, out: Path) -> int:
    """The set in ``built`` at ``RATE`` Hz into the folder ``out``; returns the number of clips."""
    with open(built / MANIFEST, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        target = out / r["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        write_audio(read_audio(built / r["path"], RATE, quality="VHQ"), target, RATE, "FLAC")
    shutil.copy(built / MANIFEST, out / MANIFEST)
    prov = json.loads((built / PROVENANCE).read_text())
    prov.pop("seconds_to_build", None)
    prov["description"] += f"; resampled to {RATE} Hz for the package (data_prep/make_digit_mini.py)"
    prov["sample_rate"] = RATE
    (out / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
    return len(rows)


if __name__ == "__main__":
    sys.exit(main())
