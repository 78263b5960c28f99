"""`genomamba bench verify` on CPU with tiny shapes: every CPU scan backend against the fp64 oracle."""

from __future__ import annotations

import json

import pytest
import torch

from genomamba.bench import cli as bench_cli
from genomamba.bench import verify

CASES = "2,8,4,33,fp32;1,12,4,20,fp64,3;1,8,4,17,bf16"


def test_verify_cpu_backends_pass_and_write_json(tmp_path, capsys):
    assert verify.main(["--device", "cpu", "--cases", CASES, "--out-dir", str(tmp_path), "--name", "v"]) == 0
    out = capsys.readouterr().out
    assert "bit-equal rerun" in out and "checks passed" in out
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["passed"] is True and data["bench"] == "verify"
    assert "torch" in data["backends"] and set(data["backends"]) <= {"cpp", "torch"}
    assert set(data["backends"]) | set(data["skipped"]) == {"cpp", "torch"}
    assert data["cases"] == ["2,8,4,33 fp32", "1,12,4,20 fp64 g=3", "1,8,4,17 bf16"]
    assert len(data["rows"]) == 3 * len(data["backends"])
    for row in data["rows"]:
        assert row["ok"] and row["deterministic"]
        assert set(row["grads"]) == {f"d{k}" for k in verify.NAMES}
        tol_out, tol_grad = verify.TOLERANCES[row["case"].split()[1]]
        assert row["out"] < tol_out and row["state"] < tol_out and max(row["grads"].values()) < tol_grad
    fp64 = [r for r in data["rows"] if "fp64" in r["case"]]
    assert fp64 and all(r["out"] < 1e-12 and max(r["grads"].values()) < 1e-11 for r in fp64)


def test_verify_is_a_bench_subcommand(tmp_path, capsys):
    rc = bench_cli.main(["verify", "--device", "cpu", "--backends", "torch", "--cases", "1,4,2,9,fp32",
                         "--out-dir", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "verify_cpu.json").read_text())
    assert data["backends"] == ["torch"] and len(data["rows"]) == 1
    bench_cli.main(["--help"])
    assert "verify" in capsys.readouterr().out


def test_verify_fails_a_backend_that_disagrees_with_the_oracle():
    case = (1, 8, 4, 16, "fp32", None)
    inputs = verify.make_inputs(case, "cpu")
    rout, rstate, rgrads, cot_out, cot_state = verify.oracle(inputs)
    good = verify.check_case("torch", case, inputs, (rout, rstate, rgrads, cot_out, cot_state))
    assert good["ok"]
    # the same backend judged against an oracle whose dB is off by 1 %: that gradient fails the row
    wrong = list(rgrads)
    wrong[verify.NAMES.index("B")] = wrong[verify.NAMES.index("B")] * 1.01
    bad = verify.check_case("torch", case, inputs, (rout, rstate, tuple(wrong), cot_out, cot_state))
    assert not bad["ok"] and bad["worst_grad"] == "dB" and bad["grads"]["dB"] > 1e-3
    assert bad["deterministic"]


def test_verify_rejects_bad_arguments(capsys):
    assert verify.main(["--device", "cpu", "--cases", "1,4,2,9,fp8"]) == 2
    assert verify.main(["--device", "cpu", "--cases", "1,6,2,9,fp32,4"]) == 2
    assert verify.main(["--device", "cpu", "--backends", "cuda"]) == 2
    assert "do not run on cpu" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_verify_cuda_quick(tmp_path):
    assert verify.main(["--device", "cuda", "--cases", "2,64,16,300,fp32;1,64,16,257,bf16,2",
                        "--out-dir", str(tmp_path), "--name", "v"]) == 0
