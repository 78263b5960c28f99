"""Arguments that name no real thing are refused at the edge, naming the argument: devices the machine
lacks, thread counts, model directories that are not there; what ``classify predict`` writes for records
it cannot label and for several input files; integer ids of any width and seeds in the Python API.

Each test drives the real command line (``genomamba.__main__.main``) or the real Python API on real
files (a slice of the shipped lambda phage genome, tiny models saved to disk).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from genomamba import DNATokenizer
from genomamba.__main__ import main as cli
from genomamba.api import load
from genomamba.data.fasta import read_fasta
from tests.commands.test_safety import _one_line_error


@pytest.fixture
def fasta(tmp_path, lambda_seq):
    f = tmp_path / "i.fa"
    f.write_text(f">a\n{lambda_seq[:300]}\n>b\n{lambda_seq[300:500]}\n")
    return f


@pytest.mark.parametrize("command", ["score", "embed", "generate"])
def test_devices_threads_and_model_dirs_are_named(command, model_dir, fasta, tmp_path, capsys):
    def argv(model, *extra):
        if command == "score":
            return ["score", str(model), str(fasta), *extra]
        if command == "embed":
            return ["embed", str(model), str(fasta), "-o", str(tmp_path / "e.h5"), *extra]
        return ["generate", str(model), "--prompt", "ACGT", "-n", "4", *extra]

    cases = [(["--device", "gpu"], ("--device", "expected cpu, cuda or cuda:N", "'gpu'")),
             (["--threads", "0"], ("--threads", "expected a positive int, got 0")),
             (["--threads", "-2"], ("--threads", "got -2"))]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], ("--device", "'cuda' asked for", "use cpu")))
    else:
        n = torch.cuda.device_count()
        cases.append((["--device", f"cuda:{n}"], ("--device", f"shows {n} CUDA device")))
    for extra, needles in cases:
        assert cli(argv(model_dir, *extra)) == 1, extra
        _one_line_error(capsys.readouterr().err, *needles)
    assert not (tmp_path / "e.h5").exists()
    assert cli(argv(tmp_path / "nope")) == 1
    _one_line_error(capsys.readouterr().err, "nope", "no such directory", "expected a model directory")
    assert cli(argv(fasta)) == 1
    _one_line_error(capsys.readouterr().err, "i.fa", "not a directory")
    assert cli(argv(model_dir, "--threads", "1", "--device", "cpu")) == 0  # the valid spellings still run
    capsys.readouterr()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_classify_commands_take_a_device_and_threads(command, clf_dir, fasta, tmp_path, capsys):
    def argv(*extra):
        if command == "predict":
            return ["classify", "predict", str(fasta), "--model", str(clf_dir), "--length", "64", *extra]
        return ["classify", "evaluate", "--model", str(clf_dir), "--per-label", "1", "--length", "64", *extra]

    cases = [(["--device", "gpu"], ("--device", "expected cpu, cuda or cuda:N", "'gpu'")),
             (["--threads", "0"], ("--threads", "expected a positive int, got 0"))]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], ("--device", "'cuda' asked for", "use cpu")))
    for extra, needles in cases:
        assert cli(argv(*extra)) == 2, extra
        _one_line_error(capsys.readouterr().err, *needles)
    if command == "predict":
        assert cli(argv("--device", "cpu", "--threads", "1")) == 0
        assert len(capsys.readouterr().out.splitlines()) == 3  # a header and the two records


def test_load_names_its_device_argument(model_dir):
    with pytest.raises(ValueError, match=r"^device: expected cpu, cuda or cuda:N, got 'gpu'"):
        load(model_dir, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device: 'cuda' asked for"):
            load(model_dir, device="cuda")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load(model_dir / "missing")


def test_predict_leaves_records_without_bases_unlabelled(clf_dir, fasta, tmp_path, capsys):
    weak = tmp_path / "weak.fa"
    weak.write_text(">alln\n" + "N" * 300 + "\n>one\nNNNNANNNN\n")
    out = tmp_path / "p.tsv"
    assert cli(["classify", "predict", str(weak), "--model", str(clf_dir), "--length", "64", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "alln: no A/C/G/T base in 300 bases" in err and "not labelled (NA)" in err
    assert "one: only 1 A/C/G/T base" in err
    header, alln, one = out.read_text().splitlines()
    assert header.split("\t")[:4] == ["record", "length", "windows", "label"]
    assert alln.split("\t")[:2] == ["alln", "300"] and alln.split("\t")[3:] == ["NA"] * 4
    cols = one.split("\t")
    assert cols[3] in ("E_coli", "S_aureus", "H_pylori")  # a guess, labelled, with the warning above
    assert abs(sum(float(v) for v in cols[4:]) - 1) < 1e-3


def test_predict_on_several_files_names_the_file_of_each_row(clf_dir, fasta, tmp_path, capsys):
    other = tmp_path / "other.fa"
    other.write_text(fasta.read_text())  # the same record names in another file
    assert cli(["classify", "predict", str(fasta), str(other), "--model", str(clf_dir), "--length", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[:2] == ["file", "record"] and len(lines) == 5
    assert [ln.split("\t")[:2] for ln in lines[1:]] == [[str(fasta), "a"], [str(fasta), "b"],
                                                        [str(other), "a"], [str(other), "b"]]
    assert lines[1].split("\t")[2:] == lines[3].split("\t")[2:]  # same sequence, same prediction
    alias = tmp_path / "sub" / ".." / "i.fa"
    (tmp_path / "sub").mkdir()
    assert cli(["classify", "predict", str(fasta), str(alias), "--model", str(clf_dir)]) == 2
    _one_line_error(capsys.readouterr().err, "given twice")
    assert cli(["classify", "predict", str(fasta), "--model", str(tmp_path / "nope")]) == 2
    _one_line_error(capsys.readouterr().err, "nope", "no such directory")


def test_ids_of_any_integer_width_and_clear_errors_for_empty_input_and_bad_seeds(model_dir):
    model = load(model_dir)
    lm = model.lm
    ids = DNATokenizer().encode("ACGTTGCAAC")  # uint8, as the tokenizer returns them
    assert ids.dtype == np.uint8
    x8 = torch.from_numpy(ids)[None]
    with torch.no_grad():
        want = lm(x8.long())
        for dt in (torch.uint8, torch.int8, torch.int16, torch.int32):
            assert torch.equal(lm(x8.to(dt)), want), dt
        assert torch.equal(lm.hidden_states(x8), lm.hidden_states(x8.long()))
    out = lm.generate(x8, 5, temperature=0)
    assert out.shape == (1, 15) and torch.equal(out[:, :10], x8.long())
    assert torch.equal(out, lm.generate(x8.long(), 5, temperature=0))
    with pytest.raises(ValueError, match=r"input_ids: expected at least one token.*\(1, 0\)"):
        lm(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids: expected at least one token.*\(0, 4\)"):
        lm(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids: expected an integer tensor, got torch.float32"):
        lm(torch.zeros(1, 4))
    for bad in ("a", 1.5, True):
        with pytest.raises(ValueError, match=r"^seed: expected an int or None"):
            model.generate("ACGT", 4, seed=bad)
        with pytest.raises(ValueError, match=r"^seed: expected an int, a list of ints \(one per sequence\) or None"):
            lm.generate(x8, 4, seed=bad)
    with pytest.raises(ValueError, match=r"^seed: 2 seeds for 1 sequences"):
        lm.generate(x8, 4, seed=[1, 2])
    with pytest.raises(ValueError, match=r"^seed\[1\]: expected an int, got 'b'"):
        lm.generate([x8[0], x8[0, :3]], 4, seed=[1, "b"])
    # a seed per sequence: each sequence's sample is its own, whatever is decoded beside it
    two = lm.generate([x8[0], x8[0, :3]], 6, seed=[5, 9])
    assert torch.equal(two[0], lm.generate([x8[0]], 6, seed=[5])[0])
    assert torch.equal(two[1], lm.generate([x8[0, :3]], 6, seed=9)[0])
    assert model.generate("ACGT", 6, seed=np.int64(3)) == model.generate("ACGT", 6, seed=3)


def test_the_data_pipeline_is_reachable_from_the_package():
    import genomamba as gm

    assert gm.data.read_fasta is read_fasta
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        gm.nothing  # noqa: B018


def test_nothing_to_score_is_said_once(model_dir, tmp_path, capsys):
    import warnings

    model = load(model_dir)
    with pytest.warns(UserWarning, match=r"seqs: record 0 \('seq0'\): nothing to score") as rec:
        s = model.score(["NNNN", "ACGTACGT"])
    assert len([w for w in rec if "nothing to score" in str(w.message)]) == 1
    assert s.n_scored.tolist() == [0, 7] and np.isnan(s.bits_per_base[0]) and np.isfinite(s.bits_per_base[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.score(["ACGTACGT"])  # nothing to say
    fa = tmp_path / "n.fa"
    fa.write_text(">alln\nNNNNNN\n>ok\nACGTACGT\n")
    assert cli(["score", str(model_dir), str(fa)]) == 0
    cap = capsys.readouterr()
    assert [ln for ln in cap.err.splitlines() if ln.strip()] == [
        "genomamba score: warning: alln: nothing scored; its bits per base is undefined (null / NA), not 0"]
    assert cap.out.splitlines()[1].split("\t")[-1] == "NA"


def test_a_run_directory_given_for_its_model_is_pointed_at_the_model(clf_dir, fasta, tmp_path, capsys):
    """The run directory (holding model/) where the model directory is meant: the error names the
    model folder to use, in the API and in both classify commands."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(clf_dir, run / "model")
    with pytest.raises(FileNotFoundError, match=rf"did you mean {re.escape(str(run / 'model'))}\?"):
        load(run)
    assert cli(["classify", "predict", str(fasta), "--model", str(run)]) == 2
    _one_line_error(capsys.readouterr().err, "no head.json", f"did you mean {run / 'model'}?")
    assert cli(["classify", "evaluate", "--model", str(run), "--manifest", "assets:species"]) == 2
    _one_line_error(capsys.readouterr().err, "no head.json", f"did you mean {run / 'model'}?")
    assert cli(["classify", "predict", str(fasta), "--model", str(run / "model"), "--length", "64"]) == 0


def test_an_ensemble_of_one_model_twice_is_refused(clf_dir, capsys):
    assert cli(["classify", "evaluate", "--model", str(clf_dir), "--model", str(clf_dir / ".." / clf_dir.name)]) == 2
    _one_line_error(capsys.readouterr().err, "given twice")


@pytest.mark.parametrize("bench", ["scan", "decode", "generate"])
def test_bench_repeats_must_be_positive(bench, capsys):
    from genomamba.bench.cli import main as bench_main

    with pytest.raises(SystemExit) as e:
        bench_main([bench, "--device", "cpu", "--repeats", "0"])
    assert e.value.code == 2
    assert "argument --repeats: expected a positive int, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["decode", "--batch-size", "0"], ["decode", "--threads", "0"], ["cp", "--sizes", "0"], ["cp", "--steps", "0"],
    ["cp", "--seq-len", "0"], ["cp", "--warmup", "-1"], ["synthetic", "--steps", "0"],
    ["synthetic", "--warmup-start", "-1"], ["generate", "--device", "cpu", "--threads", "0"], ["profile", "--top", "0"],
    ["scaling", "--devices", "0"], ["data", "--windows", "0"], ["scan", "--baseline-max-l", "0"],
])
def test_bench_counts_are_checked_when_read(argv, capsys):
    """A count or size of 0 (or below) is a usage error naming the option, before anything runs: before,
    some meant the default, some ran with nothing to time, and some died inside torch or a worker."""
    from genomamba.bench.cli import main as bench_main

    with pytest.raises(SystemExit) as e:
        bench_main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[-2]}" in err and "expected" in err, err


@pytest.mark.parametrize("argv, needle", [
    (["--rows", "99"], "--rows 99: not an option of the CPU bench (the GPU bench's options, such as --rows"),
    (["--paths", "loop,fast"], "--paths 'loop,fast': expected a comma list of loop, chunked, cpp"),
])
def test_cpu_scan_bench_refuses_what_it_would_ignore(argv, needle, capsys):
    """The CPU scan bench ran its whole default table over a GPU-only option or an unknown path name
    (the row or path asked for never came); now a usage error before anything runs."""
    from genomamba.bench.cli import main as bench_main

    assert bench_main(["scan", *argv]) == 2
    err = capsys.readouterr()
    assert needle in err.err and not err.out


def test_usage_mistakes_outside_argparse_read_as_errors(capsys):
    """An unknown command or benchmark and a URL fetch without its URL: ``genomamba ...: error: ...``
    like every other error, exit code 2."""
    for argv, needle in [(["nosuch"], "unknown command 'nosuch'"), (["bench", "nosuch"], "unknown benchmark 'nosuch'"),
                         (["data", "fetch", "url"], "give the URL")]:
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("genomamba") and ": error: " in err.splitlines()[0] and needle in err, err
