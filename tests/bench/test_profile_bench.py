"""`genomamba bench profile` on CPU: a real step profiled, the operators ranked, JSON written."""

import json

from genomamba.bench import profile as bp


def test_profile_train_and_forward_write_ranked_operators(tmp_path):
    assert bp.main(["--d-model", "16", "--n-layer", "2", "--seq-len", "64", "--batch", "2", "--threads", "1",
                    "--steps", "1", "--warmup", "1", "--out", str(tmp_path), "--name", "t"]) == 0
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["mode"] == "train" and t["tokens_per_s"] > 0 and t["top"]
    shares = [op["self_ms"] for op in t["top"]]
    assert shares == sorted(shares, reverse=True)
    assert any("selective_scan" in op["name"] for op in t["top"])  # the scan shows up by name
    assert bp.main(["--mode", "forward", "--d-model", "16", "--n-layer", "2", "--seq-len", "64", "--segment-len",
                    "16", "--steps", "1", "--warmup", "1", "--out", str(tmp_path), "--name", "f"]) == 0
    f = json.loads((tmp_path / "f.json").read_text())
    assert f["mode"] == "forward" and f["segment_len"] == 16 and f["dtype"] == "float32"


def test_profile_rejects_bad_sizes(capsys):
    assert bp.main(["--seq-len", "0"]) == 2
    assert "--seq-len" in capsys.readouterr().err


def test_profiled_runs_are_averaged_per_run():
    """Several profiled runs report calls and times per run, consistently: a step of two matmuls run
    three times shows aten::mm twice a run, and every operator's share is its per-run time over the
    per-run total."""
    import torch

    a = torch.randn(256, 256)

    def step():
        (a @ a) @ a

    one = bp.profile_ops(step, False, 10, runs=1)
    three = bp.profile_ops(step, False, 10, runs=3)
    for res in (one, three):
        mm = next(op for op in res["top"] if op["name"] == "aten::mm")
        assert mm["calls"] == 2 and mm["self_ms"] > 0
        for op in res["top"]:
            assert abs(op["share"] - op["self_ms"] / 1e3 / res["summed_self_time_s"]) < 2e-3
        assert sum(op["self_ms"] for op in res["top"]) / 1e3 <= res["summed_self_time_s"] * 1.001 + 1e-6
        assert res["profiled_step_s"] > 0


def test_device_rows_are_the_gpus_work_counted_once():
    """On a GPU only kernel, copy and memset rows count: operators that launched them (a custom op, an
    autograd node, a replayed graph) carry the same device time as their own, and the profiler's own
    buffer requests are no work of the step."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    rows = [SimpleNamespace(key="genomamba::selective_scan_v2_bwd_cuda", device_type=DeviceType.CPU),
            SimpleNamespace(key="_ReplayedBackward", device_type=DeviceType.CPU),
            SimpleNamespace(key="void ssv2::bwd_kernel<c10::BFloat16, 8>(ssv2::Params)", device_type=DeviceType.CUDA),
            SimpleNamespace(key="Memset (Device)", device_type=DeviceType.CUDA),
            SimpleNamespace(key="Activity Buffer Request", device_type=DeviceType.CUDA)]
    assert [r.key for r in bp.device_rows(rows)] == [rows[2].key, "Memset (Device)"]
