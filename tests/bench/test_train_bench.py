"""`genomamba bench train`: throughput/peak-memory fields and the embedding-memory child, tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import genomamba
from genomamba.bench import train as bt
from genomamba.config import MambaConfig

ASSETS = Path(genomamba.__file__).parent / "assets"


def test_bench_train_reports_throughput_and_memory():
    r = bt.bench_train(MambaConfig(d_model=16, n_layer=2, vocab_size=11), batch_size=2, seq_len=64, steps=1,
                       warmup=1)
    assert r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["params"] > 0
    assert "RSS" in r["peak_mem_kind"]


def test_bench_embed_and_cli_json(tmp_path):
    fasta = str(ASSETS / "umaydis_val.fa.gz")  # real U. maydis slice, 50 kb
    assert bt.main(["--d-model", "16", "--n-layer", "1", "--seq-len", "32", "--batch-size", "1", "--steps", "1",
                    "--embed", "--embed-preset", "tiny", "--embed-bases", "20000", "--embed-chunk", "4096",
                    "--fasta", fasta, "--out", str(tmp_path), "--name", "t"]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["train"][0]["seq_len"] == 32
    (row,) = data["embed"]["rows"]
    assert row["bases"] == 20000 and row["finite"] and row["peak_rss_mb"] >= row["rss_before_mb"]
