"""`genomamba embed | score | generate` end to end on real DNA (shipped phage lambda and U. maydis slices)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from urllib.parse import unquote

import h5py
import numpy as np
import pytest

import genomamba
from genomamba.__main__ import main as cli
from genomamba.commands.embed import hdf5_name
from genomamba.data import read_fasta

ASSETS = Path(genomamba.__file__).parent / "assets"
LAMBDA = ASSETS / "lambda_virus.fa.gz"


@pytest.fixture(scope="module")
def odd_fasta(tmp_path_factory):
    """Real lambda pieces under record names that are not valid HDF5 names as they stand."""
    (rec,) = list(read_fasta(LAMBDA))
    names = ["chr1/part.a", ".", "..", "gi|9626243|ref|NC_001416.1|", "100%", "plain"]
    f = tmp_path_factory.mktemp("fa") / "odd.fa.gz"
    with gzip.open(f, "wt") as fh:
        for i, n in enumerate(names):
            fh.write(f">{n} description {i}\n{rec.sequence[i * 500:i * 500 + 300 + 37 * i]}\n")
    return f, names


def test_help(capsys):
    for cmd in ("embed", "score", "generate"):
        with pytest.raises(SystemExit) as e:
            cli([cmd, "--help"])
        assert e.value.code == 0
        assert f"genomamba {cmd}" in capsys.readouterr().out


def test_hdf5_name_roundtrip():
    for n in ["chr1/part.a", "100%", "a%2Fb", "plain", "gi|1|ref|NC_1.1|"]:
        assert "/" not in hdf5_name(n) and unquote(hdf5_name(n)) == n
    assert hdf5_name(".") != "." and hdf5_name("..") != ".."


def test_embed_pooled_hdf5(model_dir, odd_fasta, tmp_path):
    fasta, names = odd_fasta
    out = tmp_path / "emb.h5"
    assert cli(["embed", str(model_dir), str(fasta), "-o", str(out), "--chunk-size", "128", "--batch-size", "2"]) == 0
    gm = genomamba.load(model_dir)
    ref = gm.embed(fasta, pooling="mean")
    with h5py.File(out, "r") as h5:
        assert h5.attrs["format"] == "genomamba.embeddings/1" and h5.attrs["n_records"] == len(names)
        assert h5.attrs["pooling"] == "mean" and h5.attrs["d_model"] == 16
        got = {h5[k].attrs["name"]: h5[k][()] for k in h5}
        lengths = {h5[k].attrs["name"]: int(h5[k].attrs["length"]) for k in h5}
        # the file lists the records in input order, each with its place
        assert [h5[k].attrs["name"] for k in h5] == names
        assert [int(h5[k].attrs["index"]) for k in h5] == list(range(len(names)))
    assert sorted(got) == sorted(names)
    for i, n in enumerate(names):
        assert got[n].shape == (16,)
        np.testing.assert_allclose(got[n], ref[i], rtol=1e-4, atol=1e-5)
        assert lengths[n] == 300 + 37 * i
    assert not list(tmp_path.glob(".*.tmp"))
    # refuses to overwrite without --force
    assert cli(["embed", str(model_dir), str(fasta), "-o", str(out)]) == 1
    assert cli(["embed", str(model_dir), str(fasta), "-o", str(out), "--force", "--pooling", "last"]) == 0


def test_embed_per_token_streams_chunks(model_dir, tmp_path):
    out = tmp_path / "tok.h5"
    # the whole 48.5 kb lambda genome per token, in 5000-token chunks, float16 storage
    assert cli(["embed", str(model_dir), str(LAMBDA), "-o", str(out), "--pooling", "none",
                "--chunk-size", "5000", "--dtype", "float16"]) == 0
    (rec,) = list(read_fasta(LAMBDA))
    gm = genomamba.load(model_dir)
    with h5py.File(out, "r") as h5:
        (key,) = list(h5)
        ds = h5[key]
        assert ds.shape == (len(rec.sequence), 16) and ds.dtype == np.float16
        head = ds[:3000].astype(np.float32)
        tail = ds[-100:].astype(np.float32)
    ref = gm.embed(rec.sequence[:3000], pooling=None)[0]
    np.testing.assert_allclose(head, ref, rtol=2e-2, atol=2e-2)
    full_last = gm.embed(rec.sequence, pooling="last", chunk_size=5000)[0]
    np.testing.assert_allclose(tail[-1], full_last, rtol=2e-2, atol=2e-2)


def test_embed_atomic_on_error(model_dir, tmp_path, capsys):
    (rec,) = list(read_fasta(LAMBDA))
    bad = tmp_path / "bad.fa"
    # record 2 has a protein letter: detected by the FASTA reader after record 1 was embedded
    bad.write_text(f">ok1\n{rec.sequence[:400]}\n>ok2\n{rec.sequence[400:800]}\n>bad\nACGTEFGH\n")
    out = tmp_path / "never.h5"
    assert cli(["embed", str(model_dir), str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "bad" in err and "genomamba embed: error" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
    # an existing good file is left untouched by a failed --force run
    good = tmp_path / "good.h5"
    assert cli(["embed", str(model_dir), str(LAMBDA), "-o", str(good)]) == 0
    before = good.read_bytes()
    assert cli(["embed", str(model_dir), str(bad), "-o", str(good), "--force"]) == 1
    assert good.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    assert cli(["embed", str(model_dir), str(tmp_path / "missing.fa"), "-o", str(out)]) == 1


def test_score_tsv_and_json(model_dir, tmp_path, capsys):
    fasta = ASSETS / "umaydis_val.fa.gz"
    gm = genomamba.load(model_dir)
    ref = gm.score(fasta)
    assert cli(["score", str(model_dir), str(fasta)]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert lines[0].split("\t") == ["name", "length", "n_scored", "log_likelihood", "bits_per_base"]
    assert len(lines) == 1 + len(ref)
    first = lines[1].split("\t")
    assert first[0] == ref.names[0] and float(first[4]) == pytest.approx(ref.bits_per_base[0], rel=1e-5)
    out = tmp_path / "s.json"
    assert cli(["score", str(model_dir), "--seq", "ACGTNNACGT", "--seq", "GGGCCCAAAT", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["n_scored"] for r in data["records"]] == [7, 9]
    assert data["total"]["n_scored"] == 16
    assert cli(["score", str(model_dir), "--seq", "ACGZ"]) == 1
    assert "position 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["score", str(model_dir)])


def test_generate_cli(model_dir, tmp_path, capsys):
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "50", "--seed", "1"]) == 0
    a = capsys.readouterr().out.strip()
    assert len(a) == 50 and set(a) <= set("ACGT")
    assert a == genomamba.load(model_dir).generate("ACGT", 50, seed=1)
    out = tmp_path / "g.fa"
    assert cli(["generate", str(model_dir), "--prompt", "ACGT", "-n", "170", "--seed", "1", "-o", str(out),
                "--include-prompt", "--top-k", "2"]) == 0
    (rec,) = list(read_fasta(out))
    assert len(rec.sequence) == 174 and rec.sequence.startswith("ACGT")
    assert cli(["generate", str(model_dir), "--prompt", "", "-n", "5"]) == 1
    assert cli(["generate", str(tmp_path / "no_model"), "--prompt", "A"]) == 1


def test_generate_cli_from_a_fasta_of_prompts(model_dir, prompts_fa, tmp_path, capsys):
    prompts = [r.sequence for r in read_fasta(prompts_fa)]
    out = tmp_path / "samples.fa"
    assert cli(["generate", str(model_dir), "--prompts", str(prompts_fa), "--num-samples", "2", "-n", "90",
                "--temperature", "0", "--batch-size", "4", "-o", str(out)]) == 0
    recs = list(read_fasta(out))
    assert [r.name for r in recs] == ["p0_sample1", "p0_sample2", "p1_sample1", "p1_sample2", "p2_sample1",
                                      "p2_sample2"]
    assert "prompt_len=95" in recs[2].description
    gm = genomamba.load(model_dir)
    for i, p in enumerate(prompts):  # batched greedy samples equal each prompt generated alone
        alone = gm.generate(p, 90, temperature=0)
        assert recs[2 * i].sequence == recs[2 * i + 1].sequence == alone
    # seeded sampling: the same file twice; to stdout without -o
    args = ["generate", str(model_dir), "--prompts", str(prompts_fa), "--num-samples", "3", "-n", "50",
            "--seed", "4", "--batch-size", "2", "--include-prompt"]
    assert cli(args + ["-o", str(tmp_path / "a.fa")]) == 0
    capsys.readouterr()
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "a.fa").read_text()
    recs = list(read_fasta(tmp_path / "a.fa"))
    assert len(recs) == 9 and all(r.sequence.startswith(prompts[i // 3]) for i, r in enumerate(recs))
    assert all(len(r.sequence) == len(prompts[i // 3]) + 50 for i, r in enumerate(recs))
    assert len({r.sequence for r in recs[:3]}) > 1  # the samples of one prompt differ
    # an existing output is kept without --force
    assert cli(["generate", str(model_dir), "--prompts", str(prompts_fa), "-n", "5", "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err and len(list(read_fasta(out))) == 6


def test_generate_cli_prompts_errors_name_the_file_and_the_record(model_dir, prompts_fa, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["generate", str(model_dir), "--prompt", "ACGT", "--prompts", str(prompts_fa)])
    assert e.value.code == 2
    capsys.readouterr()
    empty = tmp_path / "empty_record.fa"
    empty.write_text(">ok\nACGT\n>hollow\n>next\nACGT\n")
    assert cli(["generate", str(model_dir), "--prompts", str(empty), "-n", "5"]) == 1
    err = capsys.readouterr().err
    assert str(empty) in err and "hollow" in err
    protein = tmp_path / "protein.fa"
    protein.write_text(">ok\nACGT\n>prot\nMKLEFQ\n")
    assert cli(["generate", str(model_dir), "--prompts", str(protein), "-n", "5", "-o", str(tmp_path / "x.fa")]) == 1
    err = capsys.readouterr().err
    assert str(protein) in err and "prot" in err and not (tmp_path / "x.fa").exists()
    assert cli(["generate", str(model_dir), "--prompts", str(tmp_path / "missing.fa"), "-n", "5"]) == 1
    assert "--prompts" in capsys.readouterr().err
    assert cli(["generate", str(model_dir), "--prompts", str(prompts_fa), "--num-samples", "0"]) == 1
    assert "--num-samples" in capsys.readouterr().err
    assert cli(["generate", str(model_dir), "--prompts", str(prompts_fa), "--batch-size", "0"]) == 1
    assert "--batch-size" in capsys.readouterr().err


def test_hard_masked_fasta_reads_with_an_unk_tokenizer_model(tmp_path):
    """A model whose tokenizer maps unknown letters to <unk> embeds, scores and classifies FASTA with
    X-masked repeats (the CLI and the API alike), as it does the same sequence given as a string."""
    import torch

    from genomamba import DNATokenizer, MambaConfig, MambaLM
    from genomamba.models.heads import SequenceClassifier

    torch.manual_seed(0)
    lm_dir, clf_dir = tmp_path / "lm", tmp_path / "clf"
    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11)).save_pretrained(lm_dir)
    DNATokenizer(unknown="unk").save_pretrained(lm_dir)
    SequenceClassifier(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11)), ["a", "b"]).save_pretrained(clf_dir)
    DNATokenizer(unknown="unk").save_pretrained(clf_dir)
    fa = tmp_path / "hardmask.fa"
    fa.write_text(">r1\nACGTXXXXACGTACGGTTACAXXG\n")
    gm = genomamba.load(lm_dir)
    np.testing.assert_allclose(gm.embed(fa)[0], gm.embed("ACGTXXXXACGTACGGTTACAXXG")[0], rtol=1e-6)
    assert cli(["embed", str(lm_dir), str(fa), "-o", str(tmp_path / "e.h5")]) == 0
    assert cli(["score", str(lm_dir), str(fa), "-o", str(tmp_path / "s.tsv")]) == 0
    assert cli(["classify", "predict", str(fa), "--model", str(clf_dir), "--length", "16",
                "--out", str(tmp_path / "p.tsv")]) == 0
    assert (tmp_path / "p.tsv").read_text().splitlines()[1].startswith("r1\t24\t")
    assert cli(["generate", str(lm_dir), "--prompts", str(fa), "-n", "4", "--seed", "1",
                "-o", str(tmp_path / "g.fa")]) == 0


def test_a_pipe_as_input_is_refused_with_what_to_do(model_dir, tmp_path, capsys):
    import os

    fifo = tmp_path / "in.fa"
    os.mkfifo(fifo)
    assert cli(["score", str(model_dir), str(fifo)]) == 1
    err = capsys.readouterr().err
    assert "a pipe or device can be read only once" in err and "write it to a file first" in err


def test_batch_and_chunk_sizes_take_integers_of_any_kind(model_dir):
    gm = genomamba.load(model_dir)
    want = gm.embed(["ACGTACGTAC", "GGCA"], batch_size=2, chunk_size=4)
    got = gm.embed(["ACGTACGTAC", "GGCA"], batch_size=np.int64(2), chunk_size=np.int32(4))
    np.testing.assert_array_equal(got, want)
    for bad in (2.0, 0, True, "4"):
        with pytest.raises(ValueError, match=r"chunk_size: expected a positive int"):
            gm.embed("ACGT", chunk_size=bad)
    with pytest.raises(ValueError, match=r"batch_size: expected a positive int, got 1.5"):
        gm.embed("ACGT", batch_size=1.5)
