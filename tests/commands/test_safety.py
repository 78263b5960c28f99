"""Nothing lost, nothing silent: outputs never clobber inputs, a run directory is owned, arguments are
checked at the edge, and every user mistake is one line on stderr (never a traceback).

Each test drives the real command line (``genomamba.__main__.main``, the same entry point as the
``genomamba`` script) or the real Python API on real files: the shipped genome slices, tiny models
saved to disk, tiny Lightning runs.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

import genomamba
from genomamba import DNATokenizer, MambaConfig, MambaLM
from genomamba.__main__ import main as cli
from genomamba.api import load
from genomamba.commands.classify import run_classify
from genomamba.commands.pretrain import run_pretrain
from genomamba.data.fasta import IndexedFasta, read_fasta
from genomamba.data.store import TokenStore
from genomamba.errors import UserError
from genomamba.lit.config import ConfigError, load_config
from genomamba.models.io import CheckpointError
from tests.lit.conftest import tiny_pretrain_doc

ASSETS = Path(genomamba.__file__).parent / "assets"
UMAYDIS = ASSETS / "umaydis_test.fa.gz"
ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
GENBANK = """LOCUS       TEST1                     60 bp    DNA     linear   UNK 01-JAN-1980
DEFINITION  test record.
ACCESSION   TEST1
VERSION     TEST1.1
FEATURES             Location/Qualifiers
ORIGIN
        1 acgtacgtac gtacgtacgt acgtacgtac gtacgtacgt acgtacgtac gtacgtacgt
//
"""


def _one_line_error(err: str, *needles: str) -> str:
    """stderr holds exactly one ``genomamba ...: error: ...`` line (warnings aside), no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1 and lines[0].startswith("genomamba "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def small_fa(tmp_path, lambda_seq):
    f = tmp_path / "i.fa"
    f.write_text(f">a\n{lambda_seq[:600]}\n>b\n{lambda_seq[600:1000]}\n")
    return f


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step pretraining run (tiny model, real Lightning) and its config file."""
    base = tmp_path_factory.mktemp("pre")
    doc = tiny_pretrain_doc(base / "run", max_steps=4, seq_len=128, ckpt_every=2)
    cfg = base / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    res = run_pretrain(load_config(cfg), quiet=True)
    assert res["global_step"] == 4
    return base / "run", cfg, doc


def _copy_run(finished_run, tmp_path):
    run, _, doc = finished_run
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    doc = {**doc, "run_dir": str(dst)}
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return dst, cfg, doc


# ----------------------------------------------------------------------------- 1, 2: outputs vs inputs


def test_1_data_build_refuses_its_input_as_out(small_fa, capsys):
    before = small_fa.read_bytes()
    assert cli(["data", "build", str(small_fa), "--out", str(small_fa)]) == 1
    _one_line_error(capsys.readouterr().err, "is also an input")
    assert small_fa.read_bytes() == before
    # through a symlink, and even with --force
    link = small_fa.with_name("link.h5")
    link.symlink_to(small_fa)
    assert cli(["data", "build", str(small_fa), "--out", str(link), "--force"]) == 1
    _one_line_error(capsys.readouterr().err, "is also an input")
    assert small_fa.read_bytes() == before


def test_2_score_refuses_its_input_as_output(model_dir, small_fa, capsys):
    before = small_fa.read_bytes()
    assert cli(["score", str(model_dir), str(small_fa), "-o", str(small_fa), "--force"]) == 1
    _one_line_error(capsys.readouterr().err, "is also an input")
    assert small_fa.read_bytes() == before
    # nor a file of the model it reads
    weights = model_dir / "model.safetensors"
    w = weights.read_bytes()
    assert cli(["score", str(model_dir), str(small_fa), "-o", str(weights), "--force"]) == 1
    _one_line_error(capsys.readouterr().err, "is also an input")
    assert weights.read_bytes() == w


def test_existing_outputs_need_force(model_dir, clf_dir, small_fa, tmp_path, capsys):
    out = tmp_path / "o.txt"
    out.write_text("keep me")
    for argv in (["score", str(model_dir), str(small_fa), "-o", str(out)],
                 ["embed", str(model_dir), str(small_fa), "-o", str(out)],
                 ["generate", str(model_dir), "--prompt", "ACGT", "-n", "5", "-o", str(out)],
                 ["classify", "predict", str(small_fa), "--model", str(clf_dir), "--out", str(out)],
                 ["data", "build", str(small_fa), "--out", str(out)]):
        assert cli(argv) in (1, 2), argv
        _one_line_error(capsys.readouterr().err, "exists", "--force")
        assert out.read_text() == "keep me"
    assert cli(["score", str(model_dir), str(small_fa), "-o", str(out), "--force"]) == 0
    assert out.read_text().startswith("name\t")


# ----------------------------------------------------------------------------- 3, 4, 5, 16: run directories


def test_3_fresh_run_into_a_used_run_dir_refuses_unless_force(finished_run, tmp_path, capsys):
    run, cfg, doc = _copy_run(finished_run, tmp_path)
    assert (run / "checkpoints" / "step0000004.ckpt").exists()
    ckpt = (run / "checkpoints" / "last.ckpt").read_bytes()
    model = (run / "model" / "model.safetensors").read_bytes()
    assert cli(["pretrain", "-c", str(cfg), "--max-steps", "2"]) == 2
    _one_line_error(capsys.readouterr().err, "earlier run", "--resume", "--force")
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == ckpt
    assert (run / "model" / "model.safetensors").read_bytes() == model
    assert cli(["pretrain", "-c", str(cfg), "--max-steps", "2", "--resume", "--force"]) == 2
    _one_line_error(capsys.readouterr().err, "give one of them")
    # --force replaces the earlier run: its checkpoints go, the new run's are all that remain
    assert cli(["pretrain", "-c", str(cfg), "--max-steps", "2", "--force"]) == 0
    capsys.readouterr()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step0000002.ckpt"]
    assert json.loads((run / "results.json").read_text())["global_step"] == 2
    assert not (run / "run.lock").exists()  # ownership ends with the run


def test_3b_another_dirs_checkpoint_or_an_aborted_runs_logs_do_not_mix_runs(finished_run, tmp_path, capsys):
    """--resume with a checkpoint from another run directory continues that run here: refused where an
    earlier run lies (the two would share checkpoints/ and logs/), taken in an empty directory. Logs
    of a run stopped before its first checkpoint count as an earlier run too."""
    run, cfg, doc = _copy_run(finished_run, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    foreign = other / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert cli(["pretrain", "-c", str(cfg), "--max-steps", "6", "--resume", str(foreign)]) == 2
    _one_line_error(capsys.readouterr().err, "earlier run", "another directory's checkpoint")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    empty = tmp_path / "empty"
    assert cli(["pretrain", "-c", str(cfg), "--max-steps", "6", "--resume", str(foreign),
                "--run-dir", str(empty)]) == 0
    capsys.readouterr()
    assert torch.load(empty / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    # an aborted run: logs, no checkpoint yet
    aborted = tmp_path / "aborted"
    (aborted / "logs" / "version_0").mkdir(parents=True)
    (aborted / "logs" / "version_0" / "metrics.csv").write_text("step,train/loss\n")
    assert cli(["pretrain", "-c", str(cfg), "--max-steps", "2", "--run-dir", str(aborted)]) == 2
    _one_line_error(capsys.readouterr().err, "earlier run (logs/)", "--force")


def test_4_a_live_run_owns_its_dir_and_a_killed_ones_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    doc = tiny_pretrain_doc(run, max_steps=400, seq_len=128)
    doc["trainer"].update(ckpt_every=2, val_every=1000)
    cfg = tmp_path / "long.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "genomamba", "pretrain", "-c", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 180
        while not (run / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 180 s"
            time.sleep(0.05)
        assert (run / "run.lock").read_text().split()[0] == str(proc.pid)
        # a second run into the live run's directory fails at once, naming the holder
        t0 = time.time()
        assert cli(["pretrain", "-c", str(cfg), "--resume"]) == 2
        _one_line_error(capsys.readouterr().err, "in use", f"pid {proc.pid}")
        assert time.time() - t0 < 30
        assert proc.poll() is None  # and the live run goes on
    finally:
        proc.kill()
        proc.wait(timeout=60)
        log.close()
    # the killed run's lock is taken over by the next run, which says so
    assert (run / "run.lock").exists()
    assert cli(["pretrain", "-c", str(cfg), "--resume", "--max-steps", "30"]) == 0
    cap = capsys.readouterr()
    assert f"took over the lock of pid {proc.pid}" in cap.err and "done: step 30" in cap.out
    assert not (run / "run.lock").exists()


def test_5_failed_resume_touches_nothing_and_plain_resume_still_works(finished_run, tmp_path, capsys):
    run, cfg, doc = _copy_run(finished_run, tmp_path)
    config_before = (run / "config.yaml").read_bytes()
    ckpt_before = (run / "checkpoints" / "last.ckpt").read_bytes()
    assert cli(["pretrain", "--resume", "--run-dir", str(run), "--set", "model.d_model=48"]) == 2
    _one_line_error(capsys.readouterr().err, "model.d_model: checkpoint 32, config 48")
    assert (run / "config.yaml").read_bytes() == config_before
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == ckpt_before
    assert not (run / "logs" / "version_1").exists()
    assert cli(["pretrain", "--resume", "--run-dir", str(run), "--max-steps", "6"]) == 0
    cap = capsys.readouterr()
    assert "done: step 6" in cap.out and "nothing is left to train" not in cap.err
    # at its step cap already: it says so instead of quietly only testing
    assert cli(["pretrain", "--resume", "--run-dir", str(run), "--max-steps", "2"]) == 0
    cap = capsys.readouterr()
    assert "done: step 6" in cap.out
    assert "is at step 6 and trainer.max_steps is 2: nothing is left to train" in cap.err


def test_16_resume_from_another_tasks_checkpoint(finished_run, tmp_path, capsys):
    run, _, _ = finished_run
    cfg = load_config(ROOT / "configs" / "classify" / "species_tiny_cpu.yaml",
                      [f"run_dir={tmp_path / 'cls'}", f"init_from={run / 'model'}", "trainer.max_steps=2"])
    with pytest.raises(ConfigError, match="is a pretraining checkpoint, not a classifier's"):
        run_classify(cfg, resume=str(run / "checkpoints" / "last.ckpt"), quiet=True)
    assert not (tmp_path / "cls" / "config.yaml").exists()
    bad = tmp_path / "junk.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert cli(["pretrain", "-c", str(finished_run[1]), "--run-dir", str(tmp_path / "p"), "--resume", str(bad)]) == 2
    err = _one_line_error(capsys.readouterr().err, "junk.ckpt", "not a checkpoint", "zip archives")
    assert "mmap" not in err  # torch's advice about its own loader options is no help here


# ----------------------------------------------------------------------------- 6: two writers of one output


def _concurrent(argvs, env):
    procs = [subprocess.Popen([sys.executable, "-m", "genomamba", *a], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for a in argvs]
    return [(p.wait(timeout=300), *p.communicate()) for p in procs]


def test_6_two_writers_of_one_new_output_one_wins_whole(model_dir, tmp_path):
    fa = tmp_path / "g.fa"
    seq = next(iter(read_fasta(UMAYDIS))).sequence
    fa.write_text("".join(f">r{i}\n{seq[i * 20000:(i + 1) * 20000]}\n" for i in range(5)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "e.h5"
    res = _concurrent([["embed", str(model_dir), str(fa), "-o", str(out)]] * 2, env)
    codes = sorted(r[0] for r in res)
    assert codes == [0, 1], res
    loser = [r for r in res if r[0] == 1][0]
    _one_line_error(loser[2], "exists", "--force")
    with h5py.File(out) as h5:
        assert h5.attrs["n_records"] == 5
    store = tmp_path / "s.h5"
    res = _concurrent([["data", "build", str(fa), "--out", str(store)]] * 2, env)
    assert sorted(r[0] for r in res) == [0, 1], res
    assert len(TokenStore(store).contigs) == 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left


# ----------------------------------------------------------------------------- 7, 13, 17: classify predict


def test_7_predict_arguments_are_checked(clf_dir, small_fa, capsys):
    for argv, needle in ((["--length", "-5"], "--length"), (["--length", "0"], "--length"),
                         (["--max-windows", "0"], "--max-windows")):
        assert cli(["classify", "predict", str(small_fa), "--model", str(clf_dir), *argv]) == 2
        _one_line_error(capsys.readouterr().err, needle, "expected a positive int")


def test_13_confident_label_for_a_guess_comes_with_a_warning(clf_dir, small_fa, tmp_path, capsys):
    weak = tmp_path / "weak.fa"
    weak.write_text(">one\nA\n>alln\n" + "N" * 500 + "\n")
    assert cli(["classify", "predict", str(weak), "--model", str(clf_dir), "--length", "64"]) == 0
    cap = capsys.readouterr()
    assert "one: only 1 A/C/G/T base" in cap.err and "alln: no A/C/G/T base" in cap.err
    assert len(cap.out.splitlines()) == 3  # still labelled, but not silently
    assert cli(["classify", "predict", str(small_fa), "--model", str(clf_dir), "--length", "64"]) == 0
    assert "warning" not in capsys.readouterr().err
    model = load(clf_dir)
    with pytest.warns(UserWarning, match="no A/C/G/T base"):
        model.classify(["NNNNNNNN"])
    with pytest.warns(UserWarning, match="only 1 A/C/G/T base"):
        model.classify(["A"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.classify(["ACGT" * 50])


def test_17_head_labels_must_match_head_weights(clf_dir, small_fa, tmp_path, capsys):
    bad = tmp_path / "clf"
    shutil.copytree(clf_dir, bad)
    (bad / "head.json").write_text(json.dumps({"labels": ["E_coli", "S_aureus"], "pooling": "mean"}))
    with pytest.raises(CheckpointError, match=r"head\.json: lists 2 labels but .*head for 3 classes"):
        load(bad)
    assert cli(["classify", "predict", str(small_fa), "--model", str(bad)]) == 2
    _one_line_error(capsys.readouterr().err, "lists 2 labels", "3 classes")


# ----------------------------------------------------------------------------- 8: too short for the task


def test_8_corpus_shorter_than_seq_len_is_an_error(tmp_path, lambda_seq):
    short = tmp_path / "short.fa"
    short.write_text(f">s\n{lambda_seq[:100]}\n")
    doc = tiny_pretrain_doc(tmp_path / "run", max_steps=2, seq_len=128)
    doc["data"]["sources"] = [{"path": str(short), "split": "train"}]
    with pytest.raises(UserError, match=r"longest training sequence has 100 bases, shorter than data.seq_len=128"):
        run_pretrain(load_config(doc=doc), quiet=True)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- 9, 10: API inputs, JSON


def test_9_a_str_is_a_sequence_even_when_a_file_has_that_name(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("ACGT").write_text(">x\n" + "ACGT" * 100 + "\n")
    model = load(model_dir)
    s = model.score("ACGT")
    assert s.lengths.tolist() == [4] and s.names == ["seq0"]
    assert model.score(Path("ACGT")).lengths.tolist() == [400]
    assert model.score(path="ACGT").lengths.tolist() == [400]
    with pytest.raises(ValueError, match="not both"):
        model.score("ACGT", path="ACGT")
    Path("genome.fa").write_text(">x\nACGT\n")
    with pytest.raises(ValueError, match=r"pass pathlib\.Path\('genome\.fa'\) or path="):
        model.embed("genome.fa")


def test_10_score_json_writes_null_not_nan(model_dir, tmp_path, capsys):
    out = tmp_path / "x.json"
    assert cli(["score", str(model_dir), "--seq", "A", "--seq", "ACGTACGT", "-o", str(out)]) == 0
    assert "nothing scored" in capsys.readouterr().err
    text = out.read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert doc["records"][0]["bits_per_base"] is None and doc["records"][0]["n_scored"] == 0
    assert isinstance(doc["records"][1]["bits_per_base"], float)
    tsv = tmp_path / "x.tsv"
    assert cli(["score", str(model_dir), "--seq", "A", "-o", str(tsv)]) == 0
    assert tsv.read_text().splitlines()[1].endswith("\tNA")


# ----------------------------------------------------------------------------- 11: modes


def test_11_saved_models_and_embeddings_follow_the_umask(tmp_path, small_fa, capsys):
    old = os.umask(0o022)
    try:
        d = tmp_path / "m"
        MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11)).save_pretrained(d)
        DNATokenizer().save_pretrained(d)
        assert cli(["embed", str(d), str(small_fa), "-o", str(tmp_path / "e.h5")]) == 0
        assert cli(["data", "build", str(small_fa), "--out", str(tmp_path / "s.h5")]) == 0
    finally:
        os.umask(old)
    for p in [*d.iterdir(), tmp_path / "e.h5", tmp_path / "s.h5"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


# ----------------------------------------------------------------------------- 12: stale index


def test_12_stale_fai_newer_than_the_data_is_rebuilt(tmp_path):
    fa = tmp_path / "g.fa"
    fa.write_text(">a\n" + "A" * 50 + "\n>b\n" + "C" * 50 + "\n")
    with IndexedFasta(fa) as ix:
        assert ix.fetch("b", 0, 5) == "CCCCC"
    old = fa.stat().st_mtime_ns
    time.sleep(0.05)
    # the data is replaced by a file of another layout that keeps the old mtime (cp -p, rsync -t)
    replacement = tmp_path / "other.fa"
    replacement.write_text(">b\n" + "G" * 10 + "T" * 40 + "\n>a\n" + "A" * 80 + "\n")
    os.utime(replacement, ns=(old, old))
    shutil.copy2(replacement, fa)
    assert (fa.with_suffix(".fa.fai")).stat().st_mtime_ns > fa.stat().st_mtime_ns  # the index looks newer
    with IndexedFasta(fa) as ix:
        assert ix.fetch("b", 8, 12) == "GGTT" and ix.length("a") == 80


# ----------------------------------------------------------------------------- 14, 15, 20: files as input


def _bad_inputs(tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    loop = tmp_path / "loop.fa"
    loop.symlink_to(tmp_path / "loop2.fa")
    (tmp_path / "loop2.fa").symlink_to(loop)
    return [(d, "is a directory"), (loop, "symbolic link loop"), (tmp_path / "none.fa", "no such file")]


def test_14_directory_symlink_loop_missing_as_fasta_everywhere(tmp_path, model_dir, clf_dir, capsys):
    for bad, needle in _bad_inputs(tmp_path):
        for argv in (["data", "build", str(bad), "--out", str(tmp_path / "o.h5")],
                     ["data", "check", str(bad)],
                     ["classify", "predict", str(bad), "--model", str(clf_dir)],
                     ["embed", str(model_dir), str(bad), "-o", str(tmp_path / "e.h5")],
                     ["score", str(model_dir), str(bad)]):
            assert cli(argv) in (1, 2), argv
            _one_line_error(capsys.readouterr().err, str(bad), needle)
        doc = tiny_pretrain_doc(tmp_path / f"run_{bad.name}", max_steps=2, seq_len=128)
        doc["data"]["sources"] = [{"path": str(bad), "split": "train"}]
        with pytest.raises(OSError, match=needle):
            run_pretrain(load_config(doc=doc), quiet=True)


@pytest.mark.skipif(IS_ROOT, reason="root reads any file")
def test_14_unreadable_file(tmp_path, capsys):
    f = tmp_path / "secret.fa"
    f.write_text(">a\nACGT\n")
    f.chmod(0)
    assert cli(["data", "check", str(f)]) == 1
    _one_line_error(capsys.readouterr().err, "secret.fa", "permission denied")


def test_15_data_command_arguments(small_fa, tmp_path, capsys):
    assert cli(["data", "info", str(small_fa)]) == 1
    _one_line_error(capsys.readouterr().err, "i.fa", "token store")
    assert cli(["data", "build", str(small_fa), str(small_fa), "--genome-ids", "x", "--out",
                str(tmp_path / "s.h5")]) == 1
    _one_line_error(capsys.readouterr().err, "--genome-ids: 1 ids for 2 input files")
    with pytest.raises(SystemExit) as e:
        cli(["data", "build", str(small_fa), "--compression", "bogus", "--out", str(tmp_path / "s.h5")])
    assert e.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    assert cli(["data", "build", str(small_fa), "--out", str(tmp_path)]) == 1
    _one_line_error(capsys.readouterr().err, "is a directory")
    assert list(tmp_path.glob("*.h5")) == []


def test_20_genbank_everywhere_and_text_files_in_other_encodings(model_dir, tmp_path, capsys):
    gb = tmp_path / "t.gb"
    gb.write_text(GENBANK)
    assert cli(["data", "check", str(gb)]) == 0
    assert cli(["score", str(model_dir), str(gb)]) == 0
    assert cli(["embed", str(model_dir), str(gb), "-o", str(tmp_path / "g.h5")]) == 0
    assert "TEST1.1" in capsys.readouterr().out
    assert load(model_dir).embed(path=gb).shape == (1, 16)
    # Latin-1 YAML config and tokenizer.json: the error names the file
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("kind: pretrain\nname: caf\xe9\n".encode("latin-1"))
    assert cli(["pretrain", "-c", str(cfg)]) == 2
    _one_line_error(capsys.readouterr().err, "latin1.yaml", "not UTF-8")
    m = tmp_path / "m"
    shutil.copytree(model_dir, m)
    (m / "tokenizer.json").write_bytes(b'{"type": "caf\xe9"}')
    assert cli(["score", str(m), "--seq", "ACGT"]) == 1
    _one_line_error(capsys.readouterr().err, "tokenizer.json", "not UTF-8")


# ----------------------------------------------------------------------------- 18, 19: argument ranges, output first


def test_18_generate_temperature_and_max_steps(model_dir, finished_run, tmp_path, capsys):
    for t in ("nan", "inf", "-1"):
        assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "5", "--temperature", t]) == 1
        _one_line_error(capsys.readouterr().err, "--temperature")
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "5", "--top-p", "0"]) == 1
    _one_line_error(capsys.readouterr().err, "--top-p")
    _, cfg, _ = finished_run
    for n in ("-5", "0"):
        assert cli(["pretrain", "-c", str(cfg), "--run-dir", str(tmp_path / "r"), "--max-steps", n]) == 2
        _one_line_error(capsys.readouterr().err, "--max-steps")
    assert cli(["pretrain", "-c", str(cfg), "--run-dir", str(tmp_path / "r"), "--set", "trainer.max_steps=0"]) == 2
    _one_line_error(capsys.readouterr().err, "trainer.max_steps: expected a positive int")
    assert not (tmp_path / "r").exists()


def test_19_a_bad_output_path_fails_before_any_scoring(model_dir, tmp_path, capsys):
    fa = tmp_path / "late_error.fa"
    fa.write_text(">ok\nACGT\n>bad\nACGTXX\n")  # scoring it would fail on record 2
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli(["score", str(model_dir), str(fa), "-o", str(blocker / "x.tsv")]) == 1
    _one_line_error(capsys.readouterr().err, "x.tsv", "is not a directory")


# ----------------------------------------------------------------------------- the formatter


def test_debug_flag_and_env_show_the_traceback(tmp_path):
    f = tmp_path / "not_a_store.fa"
    f.write_text(">a\nACGT\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GENOMAMBA_DEBUG", None)
    run = [sys.executable, "-m", "genomamba"]
    plain = subprocess.run(run + ["data", "info", str(f)], capture_output=True, text=True, env=env)
    assert plain.returncode == 1
    _one_line_error(plain.stderr, "not_a_store.fa")
    for argv, e in ((["--debug", "data", "info", str(f)], env),
                    (["data", "info", str(f), "--debug"], env),
                    (["data", "info", str(f)], {**env, "GENOMAMBA_DEBUG": "1"})):
        dbg = subprocess.run(run + argv, capture_output=True, text=True, env=e)
        assert dbg.returncode != 0 and "Traceback (most recent call last)" in dbg.stderr, dbg.stderr


def test_unexpected_errors_are_one_line_too(tmp_path, capsys, monkeypatch):
    import genomamba.commands.data as data_cmd

    def broken(args):
        raise RuntimeError("a bug, not the user's fault")

    monkeypatch.setattr(data_cmd, "_dispatch", broken)
    monkeypatch.delenv("GENOMAMBA_DEBUG", raising=False)
    assert cli(["data", "assets"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected error: RuntimeError: a bug" in err and "--debug" in err


def test_gzip_input_error_names_the_file(tmp_path, capsys):
    bad = tmp_path / "trunc.fa.gz"
    seq = np.frombuffer(b"ACGT", dtype=np.uint8)[np.random.default_rng(0).integers(0, 4, 20000)].tobytes()
    bad.write_bytes(gzip.compress(b">a\n" + seq)[:2000])
    assert cli(["data", "check", str(bad)]) == 1
    _one_line_error(capsys.readouterr().err, "trunc.fa.gz")


def test_api_generate_checks_its_numbers(model_dir):
    model = load(model_dir)
    for kw in ({"temperature": float("nan")}, {"temperature": float("inf")}, {"top_k": -1}, {"top_p": 1.5}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            model.generate("ACGT", 4, **kw)
    assert len(model.generate("ACGT", 4, temperature=0.0)) == 4
    assert np.isfinite(model.embed("ACGT")).all()


def test_predict_refuses_a_text_classifier(small_fa, tmp_path, capsys):
    """A byte-level (text) classifier fed DNA token ids gave confident labels: refused by name."""
    import torch

    from genomamba import MambaConfig, MambaLM
    from genomamba.adapters import get_adapter
    from genomamba.models.heads import SequenceClassifier

    torch.manual_seed(0)
    d = tmp_path / "text_clf"
    text = get_adapter("text")
    SequenceClassifier(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=text.vocab_size)), ["x", "y"]
                       ).save_pretrained(d)
    text.save(d)
    assert cli(["classify", "predict", str(small_fa), "--model", str(d)]) == 2
    _one_line_error(capsys.readouterr().err, "a text classifier; classify predict reads DNA FASTA")
