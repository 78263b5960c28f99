#!/usr/bin/env python
"""Build the HDF5 token stores training reads from (FASTA is parsed once, here).

    python data_prep/build_stores.py [umaydis fly bacteria] [--cache DIR] [--out DIR] [--force]

Writes OUT/<name>.h5 (default OUT = <cache>/stores) and, for U. maydis, OUT/umaydis.splits.json:
train = chr01-chr20 and the small contigs, test = chr21-chr23 (whole chromosomes held out),
checked leak-free. bacteria.h5 holds all 20 genomes with contigs named "<strain>:<record>".
An existing output is refused, before anything is fetched or built, unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from genomamba.data.debian import DebianError
from genomamba.data.fetch import cache_dir, fetch
from genomamba.data.species import SpeciesManifest
from genomamba.data.store import TokenStore
from genomamba.data.windows import split_from_file
from genomamba.errors import InvalidArgument, UserError, one_line
from genomamba.files import check_output, write_text

STORES = ("umaydis", "fly", "bacteria")


def check(name: str, out: Path, force: bool = False) -> None:
    """Refuse (one line) an unknown ``name``, or an existing output of it in ``out`` unless ``force``."""
    if name not in STORES:
        raise InvalidArgument(f"unknown store {name!r}; choose from {list(STORES)}")
    for path in [out / f"{name}.h5"] + ([out / "umaydis.splits.json"] if name == "umaydis" else []):
        check_output(path, [], f"{name} output", force)


def build(name: str, cache: Path, out: Path, force: bool = False) -> Path:
    """Build OUT/<name>.h5 (and umaydis.splits.json); an existing output is refused unless ``force``."""
    check(name, out, force)
    t0 = time.perf_counter()
    target = out / f"{name}.h5"
    if name == "umaydis":
        d = fetch("umaydis", cache)
        st = TokenStore.build([d / "Umaydis.fasta.gz"], target, replace=force)
        splits = split_from_file(st, d / "split.yaml")
        splits.check()
        write_text(out / "umaydis.splits.json", json.dumps(splits.to_dict(), indent=1), replace=force)
    elif name == "fly":
        st = TokenStore.build([fetch("fly", cache) / "chr2R.fa"], target, replace=force)
    else:
        st = SpeciesManifest.from_file(fetch("bacteria", cache) / "manifest.yaml").build_store(target, replace=force)
    n = int(st.lengths.sum())
    print(f"{target}: {len(st.contigs)} contigs, {n:,} tokens, {time.perf_counter() - t0:.1f}s")
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="build token stores from fetched genomes")
    ap.add_argument("names", nargs="*", default=list(STORES), help=f"any of {' '.join(STORES)} (default: all)")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--force", action="store_true", help="replace existing stores (and umaydis.splits.json) in OUT")
    args = ap.parse_args(argv)
    cache = args.cache or cache_dir()
    out = args.out or cache / "stores"
    try:
        # every name and output checked before anything is fetched or built
        for name in args.names:
            check(name, out, args.force)
        out.mkdir(parents=True, exist_ok=True)
        for name in args.names:
            build(name, cache, out, force=args.force)
    except (UserError, DebianError, OSError, ValueError) as e:
        print(f"build_stores: error: {one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
