#!/usr/bin/env python
"""Regenerate the text and audio assets of genomamba/assets/ (used by the adapter tests and demos).

    python data_prep/make_adapter_assets.py [--cache DIR] [--out genomamba/assets] [--check]

Takes real clips and text from the fetched sets (``genomamba data fetch digits`` / ``text``, run on
demand into ``--cache``): five spoken-digit clips from each synthesizer (espeak-ng train and val
voices, every flite voice, kal being the 8 kHz one) copied byte for byte, and the opening of the
King James Bible cut at a line end. ``adapters.yaml`` lists every file with its provenance and
sha256. ``--check`` compares the files that would be written with the shipped ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import yaml

from genomamba.data.digits import read_manifest
from genomamba.data.fetch import cache_dir, fetch

KJV_BYTES = 64 * 1024
PROGRAM_PACKAGES = ("espeak-ng", "espeak-ng-data", "libespeak-ng1", "flite", "libflite1", "bible-kjv", "bible-kjv-text")
KJV_NAME = "text_kjv_genesis.txt"
# (engine, voice, word) of the clips that ship
CLIPS = [
    ("espeak-ng", "en-us+m3", "seven"),
    ("espeak-ng", "en-gb-scotland+f2", "three"),
    ("espeak-ng", "en-029+klatt4", "nine"),
    ("espeak-ng", "en-gb-x-rp+m1", "zero"),  # a validation voice
    ("espeak-ng", "en-us-nyc+croak", "five"),  # a validation voice
    ("flite", "kal", "one"),
    ("flite", "kal16", "two"),
    ("flite", "awb", "four"),
    ("flite", "rms", "six"),
    ("flite", "slt", "eight"),
]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(cache: Path) -> tuple:
    """``({file name: bytes}, manifest dict)`` of the assets."""
    digits = fetch("digits", cache)
    text = fetch("text", cache)
    dprov = json.loads((digits / "provenance.json").read_text())
    tprov = json.loads((text / "provenance.json").read_text())
    rows = {(r["engine"], r["voice"], r["word"]): r for r in read_manifest(digits) if r["path"].endswith("-0.flac")}
    files, entries = {}, []
    for key in CLIPS:
        r = rows[key]
        name = f"digit_{r['word']}_{r['engine']}_{r['voice']}.flac".replace(" ", "_")
        files[name] = r["file"].read_bytes()
        params = {k: r[k] for k in ("speed", "pitch", "stretch", "f0") if r[k] != ""}
        entries.append(
            {
                "path": name,
                "kind": "digit",
                "word": r["word"],
                "label": r["label"],
                "engine": r["engine"],
                "voice": r["voice"],
                "params": {k: float(v) if "." in v else int(v) for k, v in params.items()},
                "split": r["split"],
                "source": f"genomamba data fetch digits (seed {dprov['config']['seed']}): {r['path']}",
                "program": dprov["programs"][r["engine"]]["version"],
                "sha256": _sha(files[name]),
            }
        )
    kjv = (text / "kjv.txt").read_bytes()
    head = kjv[:KJV_BYTES]
    head = head[: head.rindex(b"\n") + 1]
    files[KJV_NAME] = head
    entries.append(
        {
            "path": KJV_NAME,
            "kind": "text",
            "bytes": len(head),
            "lines": head.count(b"\n"),
            "source": f"genomamba data fetch text: first {len(head)} bytes of kjv.txt (cut at a line end)",
            "program": "bible-kjv {bible-kjv}, bible-kjv-text {bible-kjv-text}".format_map(tprov["packages"]),
            "sha256": _sha(head),
        }
    )
    doc = {
        "description": "real clips and text for the adapters: 1 s 16 kHz mono 16-bit FLAC spoken digits "
        "(espeak-ng and flite), and the opening of the King James Bible (public domain)",
        "debian_packages": {
            k: v for k, v in {**dprov.get("debian_packages", {}), **tprov["packages"]}.items() if k in PROGRAM_PACKAGES
        },
        "files": entries,
    }
    return files, doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=None, help="where the digit and text sets are fetched")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "genomamba" / "assets")
    p.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    args = p.parse_args(argv)
    files, doc = build(args.cache or cache_dir())
    if args.check:
        bad = [n for n, data in files.items() if not (args.out / n).exists() or (args.out / n).read_bytes() != data]
        shipped = yaml.safe_load((args.out / "adapters.yaml").read_text())
        if shipped["files"] != doc["files"]:
            bad.append("adapters.yaml")
        print("adapter assets up to date" if not bad else f"adapter assets differ: {bad}")
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
    (args.out / "adapters.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120))
    total = sum(len(d) for d in files.values())
    print(f"wrote {len(files)} adapter assets ({total / 1024:.0f} KiB) into {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
