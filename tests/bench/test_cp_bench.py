"""``genomamba bench cp`` runs P = 1 and 2 real processes and writes its JSON."""

import json

from genomamba.bench.cli import main


def test_bench_cp_times_one_and_two_processes(tmp_path, capsys):
    assert main(["cp", "--sizes", "1", "2", "--seq-len", "256", "--steps", "1", "--warmup", "0",
                 "--out", "cp_test", "--out-dir", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "cp_test.json").read_text())
    rows = {r["P"]: r for r in res["rows"]}
    assert set(rows) == {1, 2} and all(r["sec_per_step"] > 0 for r in rows.values())
    # b = 1, d_inner = 128, d_conv = 4, d_state = 16
    assert rows[2]["halo_bytes"] == 3 * 128 * 4 and rows[2]["summary_bytes"] == 2 * 128 * 16 * 4
    assert rows[1]["halo_bytes"] == 0
    assert "speedup" in capsys.readouterr().out
