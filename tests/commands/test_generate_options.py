"""`genomamba generate` / `score` options end to end: several samples after one prompt, samples
reproducible from their FASTA headers, errors in the command line's words, `.gz` outputs."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

import genomamba
from genomamba.__main__ import main as cli
from genomamba.data import read_fasta


def _fields(description: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in description.split()[1:])


def read_fasta_text(text: str, path: Path):
    path.write_text(text)
    return read_fasta(path)


def test_num_samples_after_one_prompt(model_dir, tmp_path, capsys):
    gm = genomamba.load(model_dir)
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "5", "--num-samples", "3", "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    recs = list(read_fasta_text(printed, tmp_path / "printed.fa"))
    assert [r.name for r in recs] == ["prompt_sample1", "prompt_sample2", "prompt_sample3"]
    assert [r.sequence for r in recs] == gm.generate(["ACGT"] * 3, 5, seed=0)
    assert len({r.sequence for r in recs}) > 1
    # -o, decoded two at a time: sample g from seed 0 + g, the same samples as in one batch
    out = tmp_path / "three.fa"
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "5", "--num-samples", "3", "--seed", "0",
                "--batch-size", "2", "-o", str(out)]) == 0
    assert "wrote 3 samples" in capsys.readouterr().err
    recs = list(read_fasta(out))
    assert [r.sequence for r in recs] == gm.generate(["ACGT"] * 3, 5, seed=0)
    assert [r.sequence for r in recs] == [gm.generate("ACGT", 5, seed=g) for g in range(3)]
    assert [_fields(r.description)["sample_seed"] for r in recs] == ["0", "1", "2"]
    # one sample: the bare sequence, whatever --batch-size says
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "5", "--seed", "0", "--batch-size", "4"]) == 0
    assert capsys.readouterr().out.strip() == gm.generate("ACGT", 5, seed=0)


def test_samples_do_not_depend_on_the_batch_size_and_each_is_reproduced_from_its_header(
        model_dir, prompts_fa, tmp_path):
    prompts = {r.name: r.sequence for r in read_fasta(prompts_fa)}
    runs = {}
    for batch_size in (1, 2, 4, 16):
        out = tmp_path / f"s{batch_size}.fa"
        assert cli(["generate", str(model_dir), "--prompts", str(prompts_fa), "--num-samples", "2", "-n", "30",
                    "--seed", "7", "--batch-size", str(batch_size), "-o", str(out)]) == 0
        runs[batch_size] = list(read_fasta(out))
    recs = runs[1]
    assert len(recs) == 6 and len({r.sequence for r in recs}) == 6
    for batch_size, other in runs.items():
        assert [(r.name, r.description, r.sequence) for r in other] == \
            [(r.name, r.description, r.sequence) for r in recs], batch_size
    gm = genomamba.load(model_dir)
    for g, r in enumerate(recs):
        f = _fields(r.description)
        assert f["seed"] == "7" and f["sample_seed"] == str(7 + g)
        # the header says how it was drawn: that prompt alone, from that seed, gives it again
        prompt = prompts[re.sub(r"_sample\d+$", "", r.name)]
        assert gm.generate(prompt, int(f["n"]), seed=int(f["sample_seed"])) == r.sequence


GENERATE_ERRORS = [
    (["--prompt", "AC*GT"], "--prompt: invalid nucleotide character '*'"),
    (["--prompt", "AC*GT", "--num-samples", "2"], "--prompt: invalid nucleotide character '*'"),
    (["--prompt", "ACGT", "-n", "-1"], "-n/--num-bases: expected an int >= 0"),
    (["--prompt", "ACGT", "--top-k", "-1"], "--top-k: expected an int >= 0"),
    (["--prompt", "ACGT", "--top-p", "2"], "--top-p: expected a number in (0, 1]"),
    (["--prompt", "ACGT", "--seconds", "2"], "--seconds: audio models only; this is a DNA model"),
    (["--prompt", "ACGT", "--num-samples", "0"], "--num-samples: expected a positive int"),
]


@pytest.mark.parametrize("args, message", GENERATE_ERRORS)
def test_generate_errors_name_the_option(model_dir, tmp_path, capsys, args, message):
    out = tmp_path / "never.fa"
    assert cli(["generate", str(model_dir), *args, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("genomamba generate: error: ") and err.count("\n") == 1
    assert message in err and "unknown=" not in err and "top_k" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_score_errors_name_the_option(model_dir, capsys):
    assert cli(["score", str(model_dir), "--seq", "ACGT*X"]) == 1
    err = capsys.readouterr().err
    assert "--seq: invalid nucleotide character '*'" in err and "position 4" in err
    assert "unknown=" not in err and "remove or replace" in err
    assert cli(["score", str(model_dir), "--seq", "ACGT", "--seq", "AC*"]) == 1
    assert "--seq #2: invalid nucleotide character" in capsys.readouterr().err


def test_gz_outputs_are_gzip(model_dir, prompts_fa, tmp_path, capsys):
    gm = genomamba.load(model_dir)
    one = tmp_path / "g.fa.gz"
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "5", "--seed", "0", "-o", str(one)]) == 0
    assert one.read_bytes()[:2] == b"\x1f\x8b"
    (rec,) = list(read_fasta(one))
    assert rec.name == "generated" and rec.sequence == gm.generate("ACGT", 5, seed=0)
    many = tmp_path / "samples.fa.gz"
    assert cli(["generate", str(model_dir), "--prompts", str(prompts_fa), "--num-samples", "2", "-n", "20",
                "--seed", "3", "-o", str(many)]) == 0
    plain = tmp_path / "samples.fa"
    assert cli(["generate", str(model_dir), "--prompts", str(prompts_fa), "--num-samples", "2", "-n", "20",
                "--seed", "3", "-o", str(plain)]) == 0
    with gzip.open(many, "rt") as fh:
        assert fh.read() == plain.read_text()
    multi = tmp_path / "multi.fa"
    multi.write_text(">a\nACGTACGTAA\n>b\nGGCCTTAACG\n")
    capsys.readouterr()
    assert cli(["score", str(model_dir), str(multi)]) == 0
    tsv = capsys.readouterr().out
    assert cli(["score", str(model_dir), str(multi), "-o", str(tmp_path / "s.tsv.gz")]) == 0
    with gzip.open(tmp_path / "s.tsv.gz", "rt") as fh:
        assert fh.read() == tsv
    assert cli(["score", str(model_dir), str(multi), "-o", str(tmp_path / "s.json.gz")]) == 0
    with gzip.open(tmp_path / "s.json.gz", "rt") as fh:
        assert [r["name"] for r in json.load(fh)["records"]] == ["a", "b"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_closed_pipe_stops_generate_quietly(model_dir, tmp_path):
    """``genomamba generate ... | head -2``: no error line once the reader has gone, the shell's code
    for a tool stopped by a closed pipe."""
    import subprocess
    import sys

    many = tmp_path / "many.fa"
    many.write_text("".join(f">r{i}\n{'ACGT' * 10}\n" for i in range(2000)))
    proc = subprocess.Popen([sys.executable, "-m", "genomamba", "generate", str(model_dir), "--prompts", str(many),
                             "-n", "3", "--no-progress", "--batch-size", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as `head -1` would
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert first.startswith(b">r0_sample1 ") and "error" not in err, err


@pytest.mark.parametrize("extra", [["--temperature", "1e300"], ["--temperature", "1e39", "--top-k", "2"],
                                   ["--top-p", "1e-50"]])
def test_extreme_sampling_options_still_sample_bases(model_dir, capsys, extra):
    args = ["generate", str(model_dir), "--prompt", "ACGT", "-n", "20", "--seed", "1", "--num-samples", "2", *extra]
    assert cli(args) == 0
    out = capsys.readouterr().out
    seqs = [line for line in out.splitlines() if not line.startswith(">")]
    assert len(seqs) == 2 and all(len(s) == 20 and set(s) <= set("ACGT") for s in seqs), out
    if "--top-p" in extra:  # only the top base stays: the greedy sample, whatever the seed
        assert seqs == [genomamba.load(model_dir).generate("ACGT", 20, temperature=0)] * 2


SEED_ERRORS = [
    (["--seed", "99999999999999999999999"], "--seed: expected an int in [0, 4294967295], got 99999999999999999999999"),
    (["--seed", "-1"], "--seed: expected an int in [0, 4294967295], got -1"),
    (["--seed", "18446744073709551615"], "--seed: expected an int in [0, 4294967295]"),
    (["--seed", "4294967295", "--num-samples", "3", "--batch-size", "1"],
     "--seed: 4294967295 is too large for 3 samples: sample i draws from seed + i"),
]


@pytest.mark.parametrize("args, message", SEED_ERRORS)
@pytest.mark.parametrize("to_file", [False, True])
def test_seeds_out_of_range_are_refused_before_any_output(model_dir, tmp_path, capsys, args, message, to_file):
    out = tmp_path / "never.fa"
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "3", *args,
                *(["-o", str(out)] if to_file else [])]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_last_seed_counts_every_sample_of_a_fasta_of_prompts(model_dir, prompts_fa, tmp_path, capsys):
    """Three records x 2 samples: sample 5 draws from seed + 5, which must fit; nothing is written otherwise."""
    top = 2**32 - 1
    assert cli(["generate", str(model_dir), "--prompts", str(prompts_fa), "--num-samples", "2", "-n", "3",
                "--seed", str(top - 4), "--batch-size", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--seed: 4294967291 is too large for 6 samples" in captured.err
    assert "give a seed <= 4294967290" in captured.err
    assert cli(["generate", str(model_dir), "--prompts", str(prompts_fa), "--num-samples", "2", "-n", "3",
                "--seed", str(top - 5)]) == 0
    recs = list(read_fasta_text(capsys.readouterr().out, tmp_path / "fits.fa"))
    assert _fields(recs[-1].description)["sample_seed"] == str(top)


@pytest.fixture(scope="module")
def unk_model_dir(tmp_path_factory):
    """A small untrained DNA LM whose tokenizer reads unknown characters as <unk>."""
    import torch

    from genomamba import MambaConfig, MambaLM
    from genomamba.tokenizers.dna import DNATokenizer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("unk_lm")
    MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=11)).save_pretrained(d)
    DNATokenizer(unknown="unk").save_pretrained(d)
    return d


def test_include_prompt_writes_the_prompt_as_given(unk_model_dir, tmp_path, capsys):
    prompt = "acXgtRYN"
    out = tmp_path / "one.fa"
    assert cli(["generate", str(unk_model_dir), "--prompt", prompt, "-n", "5", "--seed", "2", "--include-prompt",
                "-o", str(out)]) == 0
    header, seq = out.read_text().splitlines()  # 'X' is no nucleotide: a FASTA reader would refuse the record
    sample = genomamba.load(unk_model_dir).generate(prompt, 5, seed=2)
    assert seq == prompt + sample and _fields(header)["prompt_len"] == str(len(prompt))
    fa = tmp_path / "prompts.fa"
    fa.write_text(">low\nacgtnn\n>iupac\nRYKMswBDHV\n")
    assert cli(["generate", str(unk_model_dir), "--prompts", str(fa), "-n", "4", "--seed", "0",
                "--include-prompt"]) == 0
    recs = list(read_fasta_text(capsys.readouterr().out, tmp_path / "printed.fa"))
    assert len(recs) == 2
    for rec, given in zip(recs, ["acgtnn", "RYKMswBDHV"]):
        n = int(_fields(rec.description)["prompt_len"])
        assert n == len(given) and rec.sequence[:n] == given and len(rec.sequence) == n + 4


def test_a_file_name_given_to_prompt_points_at_prompts(model_dir, unk_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.fa").write_text(">a\nACGT\n")
    assert cli(["generate", str(model_dir), "--prompt", "prompts.fa", "-n", "3"]) == 1
    err = capsys.readouterr().err
    assert "--prompt: 'prompts.fa' is the name of a file" in err and "use --prompts prompts.fa" in err
    assert "pathlib" not in err and "path=" not in err and err.count("\n") == 1
    # a tokenizer that reads unknown characters as <unk> takes the name as a sequence: a warning says so
    assert cli(["generate", str(unk_model_dir), "--prompt", "prompts.fa", "-n", "3"]) == 0
    captured = capsys.readouterr()
    assert "warning: --prompt: 'prompts.fa' is also the name of a file" in captured.err
    assert "--prompts prompts.fa" in captured.err and len(captured.out.strip()) == 3


def test_progress_bar_counts_bases_on_a_terminal(model_dir, tmp_path, capsys, monkeypatch):
    """On a terminal the bar counts the bases sampled over every sample (not whole batches), for one
    prompt as for several; --no-progress, or stderr not a terminal, shows none."""
    import sys

    out = tmp_path / "s.fa"
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "300", "--num-samples", "3", "--seed", "0",
                "--batch-size", "2", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "generate: 100%" in err and "900/900" in err and "base/s" in err
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "7", "--seed", "0"]) == 0
    assert "7/7" in capsys.readouterr().err
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "7", "--seed", "0", "--no-progress"]) == 0
    assert "generate:" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "7", "--seed", "0"]) == 0
    assert "generate:" not in capsys.readouterr().err
