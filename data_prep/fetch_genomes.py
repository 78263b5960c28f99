#!/usr/bin/env python
"""Fetch the real genomes used by genomamba from Debian packages (no root needed to unpack).

    python data_prep/fetch_genomes.py [NAME ...] [--dest DIR]

NAME: bacteria umaydis fly lambda sibelia genbank (default: the first four). Each lands in
DIR/NAME (default $GENOMAMBA_DATA or ~/.cache/genomamba), checked against pinned SHA-256s;
bacteria/manifest.yaml is the 5-species manifest, umaydis/split.yaml the held-out chromosomes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genomamba.data.fetch import DATASETS, fetch

DEFAULT = ["bacteria", "umaydis", "fly", "lambda"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="fetch real genomes from Debian packages")
    ap.add_argument("names", nargs="*", default=DEFAULT, help=f"any of {sorted(DATASETS)}")
    ap.add_argument("--dest", type=Path, default=None)
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args(argv)
    for name in args.names or DEFAULT:
        print(fetch(name, args.dest, verify=not args.no_verify))
    return 0


if __name__ == "__main__":
    sys.exit(main())
