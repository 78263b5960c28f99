"""`genomamba bench data` on a token store of a real fetched genome."""

import json


def test_bench_data_runs_on_real_store(umaydis_store, tmp_path, capsys):
    from genomamba.bench.data import main as bench_main

    assert bench_main(["--store", str(umaydis_store.path), "--windows", "5", "--tag", "t", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "store.read" in out and "target <= 5 ms" in out
    res = json.loads((tmp_path / "data_t.json").read_text())
    assert res["rows"][0]["L"] == 1 << 20 and res["rows"][0]["windows"] == 5 and "date" in res
