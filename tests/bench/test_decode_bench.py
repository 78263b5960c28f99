"""``genomamba bench decode`` times genomamba's greedy decoding (and HF's where installed) and checks its tokens."""

import json

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.bench.cli import main
from genomamba.bench.decode import composed_generate, greedy_matches_full_forward


def test_bench_decode_writes_rows_and_checks(tmp_path, capsys):
    pytest.importorskip("transformers")
    assert main(["decode", "--d-model", "32", "--n-layer", "2", "--prompt-len", "12", "--new-tokens", "5",
                 "--repeats", "1", "--name", "decode_test", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "decode_test.json").read_text())
    rows = {r["impl"]: r for r in res["rows"]}
    assert set(rows) == {"genomamba", "genomamba composed step", "hf transformers"}
    assert all(r["prompt+decode_ms"] > 0 and "speedup_vs_hf_decode" in r for r in rows.values())
    assert res["checks"] == {"greedy_equals_full_forward_argmax": True, "composed_equals_fused_tokens": True,
                             "hf_equals_genomamba_tokens": True}
    assert "decode_ms_per_token" in capsys.readouterr().out


def test_bench_decode_runs_without_hf(tmp_path):
    assert main(["decode", "--d-model", "32", "--n-layer", "1", "--prompt-len", "4", "--new-tokens", "3",
                 "--repeats", "1", "--no-hf", "--out-dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "decode_cpu.json").read_text())["rows"]
    assert [r["impl"] for r in rows] == ["genomamba", "genomamba composed step"]


@torch.no_grad()
def test_the_composed_loop_is_generate_and_the_check_catches_a_wrong_token():
    m = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12)).eval()
    prompt = torch.randint(0, 12, (2, 9))
    out = m.generate(prompt, 6, temperature=0)
    assert torch.equal(composed_generate(m, prompt, 6, 12), out)
    assert greedy_matches_full_forward(m, out, 9, 12)
    bad = out.clone()
    bad[0, -1] = (bad[0, -1] + 1) % 12
    assert not greedy_matches_full_forward(m, bad, 9, 12)
