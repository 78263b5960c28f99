"""Every results file README.md cites ships in genomamba/bench/results/ and is valid JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

from genomamba.bench.common import RESULTS_DIR

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_results_the_readme_cites_ship_with_the_package():
    cited = set(re.findall(r"`([a-z0-9_\-]+\.json)`", README.read_text())) - {"config.json"}
    assert cited
    missing = sorted(name for name in cited if not (RESULTS_DIR / name).is_file())
    assert not missing, f"README.md cites results that are not in {RESULTS_DIR}: {missing}"
    for name in cited:
        json.loads((RESULTS_DIR / name).read_text())


def test_machine_facts_record_the_genomamba_knobs(monkeypatch):
    from genomamba.bench.common import machine_facts

    monkeypatch.setenv("GENOMAMBA_CUDA_BWD_PREFETCH", "2")
    monkeypatch.setenv("OTHER_TOOL_SETTING", "x")
    facts = machine_facts("cpu")
    assert facts["genomamba_env"]["GENOMAMBA_CUDA_BWD_PREFETCH"] == "2"
    assert "OTHER_TOOL_SETTING" not in facts["genomamba_env"]


def test_machine_facts_record_the_code_that_ran():
    """The version, and in a git checkout the commit it ran at (the test suite runs from one)."""
    import subprocess

    import genomamba
    from genomamba.bench.common import machine_facts

    v = machine_facts("cpu")["genomamba"]
    assert v.startswith(genomamba.__version__)
    root = Path(genomamba.__file__).resolve().parents[1]
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        assert re.fullmatch(re.escape(f"{genomamba.__version__}+g{head}") + r"(\.dirty)?", v), v


def test_results_go_beside_the_source_or_into_the_working_folder(tmp_path, monkeypatch):
    """Without --out: a source checkout's genomamba/bench/results; an installed package's folder is
    left alone (results go to ./genomamba-bench-results)."""
    import genomamba.bench.common as common

    installed = tmp_path / "site" / "genomamba" / "bench" / "results"
    installed.mkdir(parents=True)
    monkeypatch.setattr(common, "RESULTS_DIR", installed)
    monkeypatch.chdir(tmp_path)
    path = common.write_results("probe", {"a": 1})
    assert path == tmp_path / "genomamba-bench-results" / "probe.json" and json.loads(path.read_text()) == {"a": 1}
    assert not any(installed.iterdir())
    (tmp_path / "site" / "pyproject.toml").write_text("[project]\nname = 'genomamba'\n")
    assert common.write_results("probe", {"a": 2}) == installed / "probe.json"


def test_out_and_name_are_checked_before_a_benchmark_runs(tmp_path, capsys):
    """``--out`` is a folder and ``--name`` a bare file name, for every benchmark alike: a JSON file name
    given to ``--out``, or a path to an existing file, stops the command at once with a usage error
    naming the option (nothing is timed first); ``--name x.json`` writes x.json, not x.json.json."""
    import pytest

    from genomamba.bench.cli import main

    tiny = ["decode", "--d-model", "16", "--n-layer", "1", "--prompt-len", "3", "--new-tokens", "2",
            "--repeats", "1", "--no-hf"]
    existing = tmp_path / "notes.txt"
    existing.write_text("kept\n")
    for command in (["decode"], ["scan"], ["train"], ["generate"], ["verify"]):
        for out, why in ((tmp_path / "r.json", "is a file name"), (existing, "is not a folder")):
            with pytest.raises(SystemExit) as stop:
                main([*command, "--out", str(out)])
            assert stop.value.code == 2
            err = capsys.readouterr().err
            assert "--out" in err and why in err, (command, err)
    assert existing.read_text() == "kept\n" and not (tmp_path / "r.json").exists()
    for bad in ("sub/x", "..", ".json"):
        with pytest.raises(SystemExit):
            main([*tiny, "--out", str(tmp_path), "--name", bad])
        assert "--name" in capsys.readouterr().err
    assert main([*tiny, "--out-dir", str(tmp_path / "new"), "--name", "d.json"]) == 0
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["d.json"]
    assert json.loads((tmp_path / "new" / "d.json").read_text())["bench"] == "decode"
