"""`genomamba bench train --vs-mamba-ssm` on CUDA next to an installed mamba_ssm: both rows measured in
one process from the same weights, the genomamba row with its ratio. Skipped without CUDA or
without an importable mamba_ssm."""

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_whole_and_segment_wise_rows_next_to_mamba_ssm(tmp_path):
    pytest.importorskip("mamba_ssm.models.mixer_seq_simple")
    from genomamba.bench import train as bt

    assert bt.main(["--device", "cuda", "--d-model", "64", "--n-layer", "2", "--batch-size", "1", "--seq-len", "4096",
                    "--segment-len", "1024", "--steps", "2", "--vs-mamba-ssm", "--out", str(tmp_path),
                    "--name", "v"]) == 0
    rows = json.loads((tmp_path / "v.json").read_text())["train"]
    assert [r["impl"] for r in rows] == ["mamba_ssm", "genomamba"]
    assert rows[0]["segment_len"] is None and rows[1]["segment_len"] == 1024
    assert rows[1]["ratio_vs_mamba_ssm"] == pytest.approx(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], rel=1e-2)
