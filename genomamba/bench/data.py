"""``genomamba bench data``: how fast windows come out of a token store.

    genomamba bench data [--store STORE.h5] [--windows 200] [--tag NAME] [--out DIR]

Without ``--store`` it fetches U. maydis (Debian maffilter-examples) into the data cache and
builds ``<cache>/stores/umaydis.h5`` once. Rows:

- ``store.read``: raw token reads of random 1M-token (2^20) windows into a reused buffer;
- ``RandomWindows``: the training dataset's full item (draw, N filter from the run index, read,
  int64 tensor + mask, reverse complement with p=0.5), at 2^20 and at 1 kb;
- ``DNATokenizer.encode``: bytes -> ids + soft-mask, MB/s (target >= 100 MB/s);
- ``TiledWindows``: deterministic eval tiles of 2^20.

The target is <= 5 ms per 1M-token window. Timings are with the store in the OS page
cache (the U. maydis store is 20 MB); the first pass over a cold disk is slower.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import time
from pathlib import Path

import numpy as np

from genomamba.bench.common import add_results_args, machine_facts, positive_count, print_table, write_results
from genomamba.data.fetch import cache_dir, fetch
from genomamba.data.store import TokenStore
from genomamba.data.windows import RandomWindows, TiledWindows
from genomamba.tokenizers.dna import DNATokenizer


def _stats(times_s: list[float], length: int) -> dict:
    t = np.asarray(times_s, dtype=np.float64)
    return {
        "L": length,
        "windows": int(t.size),
        "windows_per_s": round(float(t.size / t.sum()), 1),
        "Mtokens_per_s": round(float(t.size * length / t.sum() / 1e6), 1),
        "ms_p50": round(float(np.median(t) * 1e3), 3),
        "ms_p95": round(float(np.percentile(t, 95) * 1e3), 3),
        "ms_mean": round(float(t.mean() * 1e3), 3),
    }


def default_store() -> Path:
    path = cache_dir() / "stores" / "umaydis.h5"
    if not path.exists():
        src = fetch("umaydis") / "Umaydis.fasta.gz"
        t0 = time.perf_counter()
        TokenStore.build([src], path)
        print(f"built {path} from {src} in {time.perf_counter() - t0:.1f}s")
    return path


def run(store_path: Path, n_windows: int, seed: int = 0) -> list[dict]:
    st = TokenStore(store_path)
    rows = []
    L = 1 << 20
    big = [i for i, c in enumerate(st.contigs) if c.length >= L]
    if not big:
        raise SystemExit(f"genomamba bench data: error: {store_path}: no contig of at least {L} tokens to "
                         f"benchmark 1M windows")
    rng = np.random.default_rng(seed)
    buf = np.empty(L, dtype=np.uint8)
    # One untimed pass warms the page cache and the HDF5 metadata cache, as in a training loop.
    for i in big:
        st.read(i, 0, min(st.contigs[i].length, 4 * L))
    times = []
    for _ in range(n_windows):
        i = big[int(rng.integers(len(big)))]
        s = int(rng.integers(0, st.contigs[i].length - L + 1))
        t0 = time.perf_counter()
        st.read(i, s, s + L, out=buf)
        times.append(time.perf_counter() - t0)
    rows.append({"path": "store.read (uint8, reused buffer)", **_stats(times, L)})

    regions = [(st.contigs[i].name, 0, st.contigs[i].length) for i in big]
    for length, n in ((L, n_windows), (1024, 20 * n_windows)):
        ds = RandomWindows(
            st,
            length,
            regions=regions if length == L else None,
            seed=seed,
            rc_prob=0.5,
            max_n_frac=0.1,
            num_samples=n,
        )
        times = []
        it = iter(ds)
        while True:
            t0 = time.perf_counter()
            try:
                next(it)
            except StopIteration:
                break
            times.append(time.perf_counter() - t0)
        rows.append({"path": "RandomWindows item (int64+mask, rc 0.5, N<=10%)", **_stats(times, length)})

    # Tokenizer encode speed on real text (the first 1M window of a chromosome, half lowercased).
    tok = DNATokenizer()
    text = tok.decode(st.read(big[0], 0, L)).encode()
    text = (text[: L // 2] + text[L // 2 :].lower()) * 16  # 16 MiB, half soft-masked
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        tok.encode(text, return_mask=True)
        times.append(time.perf_counter() - t0)
    enc = _stats(times, len(text))
    enc["MB_per_s"] = round(len(text) / min(times) / 1e6, 1)
    rows.append({"path": "DNATokenizer.encode (+softmask), 16 MiB", **enc})

    tiles = TiledWindows(st, L, regions=regions)
    times = []
    for k in range(min(len(tiles), n_windows)):
        t0 = time.perf_counter()
        tiles[k]
        times.append(time.perf_counter() - t0)
    rows.append({"path": "TiledWindows item (eval)", **_stats(times, L)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="genomamba bench data", description="token-store window read speed")
    ap.add_argument("--store", type=Path, default=None, help="token store (default: U. maydis, built once)")
    ap.add_argument("--windows", type=positive_count, default=200, help="1M-token windows per row")
    ap.add_argument("--tag", default=None, help="results file suffix (default: host name)")
    add_results_args(ap, "data_<host>")
    args = ap.parse_args(argv)

    store = args.store or default_store()
    rows = run(store, args.windows)
    print(f"token store: {store} ({store.stat().st_size / 1e6:.1f} MB)")
    cols = ["path", "L", "windows", "windows_per_s", "Mtokens_per_s", "ms_p50", "ms_p95", "ms_mean", "MB_per_s"]
    print_table(rows, cols)
    one_m = rows[0]
    verdict = "PASS" if one_m["ms_p95"] <= 5.0 else "MISS"
    print(f"target <= 5 ms per 1M-token window read: p95 {one_m['ms_p95']} ms -> {verdict}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    tag = args.tag or re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
    payload = {
        "benchmark": "data",
        **machine_facts("cpu"),
        "store": str(store),
        "store_bytes": store.stat().st_size,
        "target_ms_per_1M_window": 5.0,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "rows": rows,
    }
    path = write_results(args.name or f"data_{tag}", payload, args.out)
    print(f"wrote {path}")
    return 0
