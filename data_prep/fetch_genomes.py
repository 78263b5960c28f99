#!/usr/bin/env python
"""Fetch the real genomes used by genomamba from Debian packages (no root needed to unpack).

    python data_prep/fetch_genomes.py [NAME ...] [--dest DIR] [--no-verify]

NAME: bacteria umaydis fly lambda sibelia genbank, or the generated sets digits (spoken digits) and
text (plain-text corpora); default: bacteria umaydis fly lambda. Each lands in DIR/NAME (default
$GENOMAMBA_DATA or ~/.cache/genomamba), checked against pinned SHA-256s; bacteria/manifest.yaml is
the 5-species manifest, umaydis/split.yaml the held-out chromosomes. The same as
``genomamba data fetch NAME``, for several names at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genomamba.data.debian import DebianError
from genomamba.data.fetch import check_name, dataset_names, fetch
from genomamba.errors import UserError, one_line

DEFAULT = ["bacteria", "umaydis", "fly", "lambda"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="fetch real genomes (and the generated digits and text sets)")
    ap.add_argument("names", nargs="*", default=DEFAULT,
                    help=f"any of {' '.join(dataset_names())} (default: {' '.join(DEFAULT)})")
    ap.add_argument("--dest", type=Path, default=None)
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args(argv)
    try:
        names = args.names or DEFAULT
        for name in names:  # every name checked before anything is fetched
            check_name(name)
        for name in names:
            print(fetch(name, args.dest, verify=not args.no_verify))
    except (UserError, DebianError, OSError, ValueError) as e:
        print(f"fetch_genomes: error: {one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
