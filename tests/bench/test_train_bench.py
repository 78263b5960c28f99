"""`genomamba bench train`: throughput/peak-memory fields and the embedding-memory child, tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
                    "--fasta", fasta, "--out", str(tmp_path), "--name", "t", "--rebuild-inputs", "on"]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["train"][0]["seq_len"] == 32 and data["train"][0]["rebuild_inputs"] is True
    (row,) = data["embed"]["rows"]
    assert row["bases"] == 20000 and row["finite"] and row["peak_rss_mb"] >= row["rss_before_mb"]


def test_memory_sweep_writes_json_and_plot(tmp_path):
    assert bt.main(["--memory-sweep", "--d-model", "16", "--n-layer", "2", "--seq-len", "64", "--seq-len", "256",
                    "--segment-len", "64", "--steps", "1", "--threads", "1", "--out", str(tmp_path),
                    "--name", "m"]) == 0
    data = json.loads((tmp_path / "m.json").read_text())
    rows = data["memory_sweep"]["rows"]
    # 64 fits in one segment (whole only); 256 is measured both ways
    assert [(r["mode"], r["seq_len"], r["segment_len"]) for r in rows] == \
        [("whole", 64, None), ("whole", 256, None), ("segments", 256, 64)]
    assert all(r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in rows)
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_the_mamba_ssm_row_says_why_it_cannot_run_here(tmp_path, capsys):
    # on CPU: mamba_ssm trains on CUDA only; the command stops before measuring anything
    assert bt.main(["--d-model", "16", "--n-layer", "1", "--seq-len", "32", "--steps", "1", "--vs-mamba-ssm",
                    "--out", str(tmp_path), "--name", "v"]) == 2
    assert "--vs-mamba-ssm: mamba_ssm trains on CUDA only" in capsys.readouterr().err
    assert not (tmp_path / "v.json").exists()
    assert bt.mamba_ssm_unavailable(True) is None or "does not import" in bt.mamba_ssm_unavailable(True)


def test_rows_name_their_implementation_and_the_twin_refuses_segments():
    cfg = MambaConfig(d_model=16, n_layer=1, vocab_size=11)
    assert bt.bench_train(cfg, batch_size=1, seq_len=32, steps=1, warmup=0)["impl"] == "genomamba"
    import pytest

    with pytest.raises(ValueError, match="whole windows"):
        bt.bench_train(cfg, batch_size=1, seq_len=32, steps=1, warmup=0, segment_len=16, impl="mamba_ssm")
    with pytest.raises(ValueError, match="impl: expected"):
        bt.bench_train(cfg, batch_size=1, seq_len=32, steps=1, warmup=0, impl="hyena")


def test_knob_rows_run_each_setting_interleaved_and_restore_the_knobs(tmp_path, monkeypatch, capsys):
    """``--knob`` / ``--rounds`` (CUDA kernels cannot run here, so the step itself is replaced by one
    that records the knob it saw): settings A B A B, each row labelled, the knobs restored after."""
    from genomamba.ops.cuda.knobs import CONFIG

    assert bt.main(["--knob", "bwd_prefetch=0", "--out", str(tmp_path)]) == 2
    assert "--device cuda" in capsys.readouterr().err
    seen = []

    def fake(cfg, batch, L, *a, **kw):
        seen.append((CONFIG["bwd_prefetch"], CONFIG["fix_prefetch"]))
        return {"impl": "genomamba", "tokens_per_s": 1.0, "sec_per_step": 1.0, "peak_mem_mb": 1.0, "params": 1,
                "batch": batch, "seq_len": L}

    monkeypatch.setattr(bt, "cuda_requested", lambda command, device: True)
    monkeypatch.setattr(bt, "bench_train", fake)
    monkeypatch.setattr(bt, "machine_facts", lambda device: {"device_name": "test"})
    before = dict(CONFIG)
    assert bt.main(["--device", "cuda", "--d-model", "16", "--n-layer", "1", "--seq-len", "32", "--knob",
                    "bwd_prefetch=-1,2", "--knob", "fix_prefetch=0,1", "--rounds", "2", "--out", str(tmp_path),
                    "--name", "k"]) == 0
    assert seen == [(-1, 0), (-1, 1), (2, 0), (2, 1)] * 2
    assert CONFIG == before
    rows = json.loads((tmp_path / "k.json").read_text())["train"]
    assert [r["round"] for r in rows] == [0] * 4 + [1] * 4
    assert rows[2]["variant"] == "cuda[bwd_prefetch=2,fix_prefetch=0]"
    assert rows[2]["knobs"] == {"bwd_prefetch": 2, "fix_prefetch": 0}
    with pytest.raises(SystemExit) as e:
        bt.main(["--device", "cuda", "--knob", "bwd_prefetch=0", "--rounds", "0", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--rounds" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--seq-len", "0"], ["--batch-size", "-1"], ["--steps", "0"], ["--segment-len", "0"],
                                  ["--threads", "0"], ["--warmup", "-1"], ["--embed-bases", "0"], ["--d-model", "0"],
                                  ["--steps", "two"]])
def test_a_bad_count_is_a_usage_error_naming_the_option(args, tmp_path, capsys):
    """Counts and sizes are checked as the command line is read: before, 0 steps or threads meant the
    default, segment length 0 trained whole windows, and a negative batch size died in torch."""
    with pytest.raises(SystemExit) as e:
        bt.main([*args, "--out", str(tmp_path)])
    assert e.value.code == 2 and args[0] in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
