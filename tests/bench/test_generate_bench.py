"""`genomamba bench generate`: a tiny CPU run writes the table's numbers and the machine facts as JSON."""

from __future__ import annotations

import json

from genomamba.bench import generate as bg
from genomamba.bench.cli import main as bench_main


def test_bench_generate_cpu_json(tmp_path):
    assert bench_main(["generate", "--d-model", "16", "--n-layer", "2", "--vocab", "11", "--prompt-len", "5",
                       "--new-tokens", "4", "--batch", "1,3", "--out", str(tmp_path), "--name", "t"]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["bench"] == "generate" and data["machine"]["device_name"].startswith("cpu")
    assert data["versions"]["torch"] and "transformers" in data["versions"] and "mamba_ssm" in data["versions"]
    assert data["shape"] == {"d_model": 16, "n_layer": 2, "vocab_size": 11, "d_state": 16, "prompt_len": 5,
                             "new_tokens": 4, "dtype": "float32", "device": "cpu", "repeats": 3, "decoding": "greedy"}
    assert [r["batch"] for r in data["rows"]] == [1, 3]
    assert "genomamba_graph" not in data["columns"]  # no CUDA graph on CPU
    for row in data["rows"]:
        assert row["genomamba_eager_tok_s"] > 0
        for name in data["columns"]:  # every column has a number or says why it has none
            assert f"{name}_tok_s" in row or f"{name}_error" in row
    assert data["params"]["genomamba_eager"] > 0


def test_bench_generate_rejects_bad_options(capsys):
    assert bg.main(["--batch", "1,x"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert bg.main(["--new-tokens", "0"]) == 2
    assert "--new-tokens" in capsys.readouterr().err


def test_bench_generate_sampled(tmp_path):
    """Sampled decoding: every column samples with the same filters, and the shape says so."""
    assert bench_main(["generate", "--d-model", "16", "--n-layer", "2", "--vocab", "11", "--prompt-len", "5",
                       "--new-tokens", "4", "--batch", "2", "--temperature", "0.9", "--top-k", "5", "--top-p", "0.9",
                       "--out", str(tmp_path), "--name", "s"]) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["shape"]["decoding"] == "sampled (temperature 0.9, top_k 5, top_p 0.9)"
    assert data["rows"][0]["genomamba_eager_tok_s"] > 0
    for name in data["columns"]:
        assert f"{name}_tok_s" in data["rows"][0], data["rows"][0].get(f"{name}_error")


def test_bench_generate_rejects_bad_sampling(capsys):
    for argv, name in ((["--temperature", "-1"], "--temperature"), (["--top-p", "0"], "--top-p"),
                       (["--top-k", "-2", "--temperature", "1"], "--top-k"), (["--top-k", "4"], "--temperature")):
        assert bg.main(argv) == 2
        assert name in capsys.readouterr().err


def test_columns_set_their_switches_only_while_they_run(monkeypatch):
    """The tensor-core column turns GENOMAMBA_DECODE_MMA on for its own calls and puts the
    environment back afterwards, also when the call fails."""
    import os

    from genomamba.bench import generate as bench

    monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "layers")
    monkeypatch.delenv("GENOMAMBA_DECODE_MMA", raising=False)
    seen = []
    with bench._environment(GENOMAMBA_DECODE_STEP="model", GENOMAMBA_DECODE_MMA="1"):
        seen.append((os.environ["GENOMAMBA_DECODE_STEP"], os.environ["GENOMAMBA_DECODE_MMA"]))
    assert seen == [("model", "1")]
    assert os.environ["GENOMAMBA_DECODE_STEP"] == "layers" and "GENOMAMBA_DECODE_MMA" not in os.environ
    try:
        with bench._environment(GENOMAMBA_DECODE_MMA="1"):
            raise RuntimeError("column failed")
    except RuntimeError:
        pass
    assert "GENOMAMBA_DECODE_MMA" not in os.environ
