#!/usr/bin/env python
"""Build the HDF5 token stores training reads from (FASTA is parsed once, here).

    python data_prep/build_stores.py [umaydis fly bacteria] [--cache DIR] [--out DIR]

Writes OUT/<name>.h5 (default OUT = <cache>/stores) and, for U. maydis, OUT/umaydis.splits.json:
train = chr01-chr20 and the small contigs, test = chr21-chr23 (whole chromosomes held out),
checked leak-free. bacteria.h5 holds all 20 genomes with contigs named "<strain>:<record>".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from genomamba.data.fetch import cache_dir, fetch
from genomamba.data.species import SpeciesManifest
from genomamba.data.store import TokenStore
from genomamba.data.windows import split_from_file


def build(name: str, cache: Path, out: Path) -> Path:
    t0 = time.perf_counter()
    target = out / f"{name}.h5"
    if name == "umaydis":
        d = fetch("umaydis", cache)
        st = TokenStore.build([d / "Umaydis.fasta.gz"], target)
        splits = split_from_file(st, d / "split.yaml")
        splits.check()
        (out / "umaydis.splits.json").write_text(json.dumps(splits.to_dict(), indent=1))
    elif name == "fly":
        st = TokenStore.build([fetch("fly", cache) / "chr2R.fa"], target)
    elif name == "bacteria":
        st = SpeciesManifest.from_file(fetch("bacteria", cache) / "manifest.yaml").build_store(target)
    else:
        raise SystemExit(f"unknown store {name!r}")
    n = int(st.lengths.sum())
    print(f"{target}: {len(st.contigs)} contigs, {n:,} tokens, {time.perf_counter() - t0:.1f}s")
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="build token stores from fetched genomes")
    ap.add_argument("names", nargs="*", default=["umaydis", "fly", "bacteria"])
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    cache = args.cache or cache_dir()
    out = args.out or cache / "stores"
    out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        build(name, cache, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
