#!/usr/bin/env python
"""Build the spoken-digit set ("zero" ... "nine", 1 s, 16 kHz mono) with espeak-ng, flite and festival.

    python data_prep/make_spoken_digits.py --out DIR [--seed 0] [--takes 1] [--flite-takes 20]
        [--val-fraction 0.15] [--accents en-us en-gb ...] [--variants m1 f2 ...] [--format flac]
        [--festival-voices [ked ...]] [--festival-takes 60] [--tools DIR] [--workers N] [--force]

Splits: test = every flite voice (a synthesis engine never seen in training), val = whole
espeak-ng voice variants, train = the other espeak-ng variants plus the festival voices given with
``--festival-voices`` (default ``ked``, the one whose speaker is not in the test split: festival's
kal and slt are the speakers of flite's kal and slt; ``--festival-voices`` alone: none). Writes
the clips, manifest.csv (path, label, word, engine, voice, accent, variant, parameters, split) and
provenance.json.
The same set with default settings is ``genomamba data fetch digits --dest DIR``; this script
exposes the settings. espeak-ng / flite / festival are unpacked from Debian packages into
``--tools`` when they are not on PATH. The output depends only on the settings and ``--seed``.
``--out`` is replaced when it is new, empty or an earlier spoken-digit set; a folder holding other
files is refused, before anything is synthesized, unless ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genomamba.data.debian import DebianError
from genomamba.data.digits import (
    ESPEAK_ACCENTS,
    FESTIVAL_VOICES,
    FLITE_VOICES,
    WORDS,
    DigitsConfig,
    check_replaceable,
    default_config,
    make_spoken_digits,
)
from genomamba.errors import UserError, one_line


def main(argv=None) -> int:
    d = default_config()  # the settings of `genomamba data fetch digits`
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: new, empty or an earlier spoken-digit set, which is replaced")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--takes", type=int, default=d.takes, help="random speed/pitch draws per espeak voice and word")
    p.add_argument("--flite-takes", type=int, default=d.flite_takes, help="random draws per flite voice and word")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of espeak variants held out")
    p.add_argument("--accents", nargs="+", default=list(ESPEAK_ACCENTS),
                   help=f"espeak-ng English accents (default: all of {' '.join(ESPEAK_ACCENTS)})")
    p.add_argument("--variants", nargs="+", default=None, help="espeak-ng variants (default: all it ships)")
    p.add_argument("--flite-voices", nargs="*", default=list(FLITE_VOICES))
    p.add_argument(
        "--festival-voices",
        nargs="*",
        default=list(d.festival_voices),
        choices=list(FESTIVAL_VOICES),
        help="festival voices for train (default: ked, the one whose speaker is not a test voice; none if given alone)",
    )
    p.add_argument(
        "--festival-takes", type=int, default=d.festival_takes, help="random draws per festival voice and word"
    )
    p.add_argument("--words", nargs="+", default=list(WORDS))
    p.add_argument("--format", choices=["flac", "wav"], default=d.audio_format)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--tools", type=Path, default=None, help="where to unpack espeak-ng/flite/festival if not on PATH")
    p.add_argument("--force", action="store_true", help="replace --out even when it holds files of its own")
    args = p.parse_args(argv)
    cfg = DigitsConfig(
        seed=args.seed,
        takes=args.takes,
        flite_takes=args.flite_takes,
        val_fraction=args.val_fraction,
        words=tuple(args.words),
        accents=tuple(args.accents),
        variants=tuple(args.variants) if args.variants else None,
        flite_voices=tuple(args.flite_voices),
        festival_voices=tuple(args.festival_voices),
        festival_takes=args.festival_takes,
        audio_format=args.format,
        workers=args.workers,
    )
    tools = args.tools or args.out.parent / ".debian-tools"
    try:
        cfg.check()  # the settings, then the output folder, before any program is looked for
        check_replaceable(args.out, args.force, how="choose another --out, or pass --force to replace it")
        out = make_spoken_digits(args.out, cfg, tools_dir=tools, force=args.force)
    except (UserError, DebianError, OSError, ValueError) as e:
        print(f"make_spoken_digits: error: {one_line(e)}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
