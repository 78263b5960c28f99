"""``genomamba bench cp`` runs P = 1 and 2 real processes and writes its JSON."""

import json

from genomamba.bench.cli import main


def test_bench_cp_times_one_and_two_processes(tmp_path, capsys):
    assert main(["cp", "--sizes", "1", "2", "--seq-len", "256", "--steps", "1", "--warmup", "0",
                 "--name", "cp_test", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "cp_test.json").read_text())
    rows = {r["P"]: r for r in res["rows"]}
    assert set(rows) == {1, 2} and all(r["sec_per_step"] > 0 for r in rows.values())
    # b = 1, d_inner = 128, d_conv = 4, d_state = 16
    assert rows[2]["halo_bytes"] == 3 * 128 * 4 and rows[2]["summary_bytes"] == 2 * 128 * 16 * 4
    assert rows[1]["halo_bytes"] == 0
    # the split sequence's loss and gradient are the single process's
    assert rows[2]["loss_rel_err_vs_P1"] < 1e-5 and rows[2]["grad_rel_err_vs_P1"] < 1e-4
    assert "speedup" in capsys.readouterr().out


def test_bench_cp_reference_can_run_segment_wise(tmp_path):
    assert main(["cp", "--sizes", "1", "2", "--seq-len", "200", "--steps", "1", "--warmup", "0",
                 "--reference-segment-len", "48", "--name", "cp_seg", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "cp_seg.json").read_text())
    rows = {r["P"]: r for r in res["rows"]}
    assert res["reference_segment_len"] == 48
    assert rows[2]["loss_rel_err_vs_P1"] < 1e-5 and rows[2]["grad_rel_err_vs_P1"] < 1e-4


def test_bench_cp_layers_recomputed_and_several_lengths(tmp_path, capsys):
    """Each rank recomputing its layers in the backward (the exchanges between ranks run again)
    keeps the single process's loss and gradient; every length gets its own rows and comparison."""
    assert main(["cp", "--sizes", "1", "2", "--seq-len", "160", "256", "--steps", "1", "--warmup", "0",
                 "--grad-checkpointing", "--name", "cp_ckpt", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "cp_ckpt.json").read_text())
    assert res["grad_checkpointing"] is True and res["seq_len"] == [160, 256]
    rows = {(r["P"], r["seq_len"]): r for r in res["rows"]}
    assert set(rows) == {(1, 160), (2, 160), (1, 256), (2, 256)}
    for L in (160, 256):
        assert rows[(2, L)]["slice_len"] == L // 2
        assert rows[(2, L)]["loss_rel_err_vs_P1"] < 1e-5 and rows[(2, L)]["grad_rel_err_vs_P1"] < 1e-4
    assert rows[(1, 160)]["loss"] != rows[(1, 256)]["loss"]  # two sequences, two results
    assert "layers recomputed" in capsys.readouterr().out


def test_out_of_memory_is_recognised_through_the_spawn_error():
    from genomamba.bench.cp import _out_of_memory

    assert _out_of_memory(RuntimeError("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not _out_of_memory(RuntimeError("ValueError: slice too short"))
