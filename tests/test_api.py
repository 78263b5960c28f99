"""genomamba.api: load / embed / classify / score / generate on real DNA (phage lambda, shipped)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import genomamba
from genomamba import DNATokenizer, MambaConfig, MambaLM
from genomamba.api import GenomeModel, iter_sequences
from genomamba.data import read_fasta
from genomamba.models.heads import SequenceClassifier

ASSETS = Path(genomamba.__file__).parent / "assets"
LAMBDA = ASSETS / "lambda_virus.fa.gz"


@pytest.fixture(scope="module")
def lambda_seq() -> str:
    (rec,) = list(read_fasta(LAMBDA))
    return rec.sequence


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=DNATokenizer().vocab_size))
    d = tmp_path_factory.mktemp("lm")
    lm.save_pretrained(d)
    DNATokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def model(model_dir) -> GenomeModel:
    return genomamba.load(model_dir)


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
    torch.manual_seed(1)
    lm = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=DNATokenizer().vocab_size))
    clf = SequenceClassifier(lm, ["E_coli", "S_aureus", "H_pylori"], pooling="mean")
    torch.nn.init.normal_(clf.head.weight, std=2.0)
    d = tmp_path_factory.mktemp("clf")
    clf.save_pretrained(d)
    DNATokenizer().save_pretrained(d)
    return d


def test_load_returns_genome_model(model, model_dir):
    assert isinstance(model, GenomeModel)
    assert isinstance(model.lm, MambaLM)
    assert model.d_model == 32 and model.head is None
    # the raw loader is unchanged
    assert isinstance(MambaLM.from_pretrained(model_dir), MambaLM)
    assert "GenomeModel" in repr(model)


def test_load_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        genomamba.load(tmp_path / "nope")


@pytest.mark.parametrize("pooling", ["mean", "last", "max"])
def test_embed_chunked_equals_whole(model, lambda_seq, pooling):
    seqs = [lambda_seq[:3000], lambda_seq[5000:5017], lambda_seq[9000:10500]]
    whole = model.embed(seqs, pooling=pooling, chunk_size=1 << 20)
    chunked = model.embed(seqs, pooling=pooling, chunk_size=257, batch_size=2)
    assert whole.shape == (3, 32) and whole.dtype == np.float32
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-5)


def test_embed_per_token_chunked_equals_whole_and_direct_forward(model, lambda_seq):
    seqs = [lambda_seq[:2000], lambda_seq[2000:2100]]
    whole = model.embed(seqs, pooling=None)
    chunked = model.embed(seqs, pooling=None, chunk_size=300, batch_size=1)
    assert [a.shape for a in whole] == [(2000, 32), (100, 32)]
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    # equal to the raw module on each sequence alone (batching with right padding changes nothing)
    ids = torch.from_numpy(model.tokenizer.encode(seqs[1]).astype(np.int64))[None]
    with torch.no_grad():
        ref = model.lm.hidden_states(ids)[0].numpy()
    np.testing.assert_allclose(whole[1], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.embed(seqs[1], pooling="mean")[0], ref.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.embed(seqs[1], pooling="last")[0], ref[-1], rtol=1e-4, atol=1e-5)


def test_embed_real_fasta_path_and_order(model, tmp_path, lambda_seq):
    # whole lambda genome (48.5 kb) in chunks, from the shipped gzip FASTA
    emb = model.embed(LAMBDA, pooling="mean", chunk_size=16384)
    assert emb.shape == (1, 32) and np.isfinite(emb).all()
    np.testing.assert_allclose(emb, model.embed(path=str(LAMBDA), pooling="mean", chunk_size=1 << 20),
                               rtol=1e-4, atol=1e-5)
    # multi-record FASTA: output order = record order, even when lengths force regrouping
    lens = [700, 50, 3000, 10, 1200]
    f = tmp_path / "multi.fa.gz"
    with gzip.open(f, "wt") as fh:
        pos = 0
        for i, n in enumerate(lens):
            fh.write(f">r{i} piece\n{lambda_seq[pos:pos + n]}\n")
            pos += n
    per = model.embed(f, pooling=None, chunk_size=1024, batch_size=2)
    assert [a.shape[0] for a in per] == lens
    pooled = model.embed(f, pooling="last", chunk_size=1024, batch_size=2)
    np.testing.assert_allclose(pooled, np.stack([a[-1] for a in per]), rtol=1e-4, atol=1e-5)
    names = [n for n, _ in model.iter_embed(f, pooling="mean", batch_size=2)]
    assert names == [f"r{i}" for i in range(len(lens))]


def test_inputs_and_errors(model, tmp_path):
    one = model.embed("ACGTACGTNN")
    assert one.shape == (1, 32)
    np.testing.assert_allclose(model.embed(b"ACGTACGTNN"), one, rtol=1e-5)
    # lowercase (soft-masked) gives the same tokens
    np.testing.assert_allclose(model.embed("acgtacgtnn"), one, rtol=1e-5)
    with pytest.raises(ValueError, match=r"seqs\[1\].*empty"):
        model.embed(["ACGT", ""])
    with pytest.raises(ValueError, match=r"record 1 \('seq1'\).*position 2"):
        model.embed(["ACGT", "ACXGT"])
    with pytest.raises(ValueError, match="seqs: expected"):
        model.embed(12345)
    with pytest.raises(ValueError, match=r"seqs\[0\]: expected a DNA string"):
        model.embed([1.5])
    with pytest.raises(ValueError, match="pooling"):
        model.embed("ACGT", pooling="median")
    with pytest.raises(ValueError, match="batch_size"):
        model.embed("ACGT", batch_size=0)
    with pytest.raises(FileNotFoundError, match="seqs"):
        model.embed(tmp_path / "missing.fa")
    bad = tmp_path / "protein.fa"
    bad.write_text(">p1\nACGT\n>p2\nMKLVEFILQ\n")
    with pytest.raises(ValueError, match="p2"):
        model.embed(bad)
    # a plain string that is not an existing file is a sequence, never a path
    assert [n for n, _ in iter_sequences("ACGT")] == ["seq0"]


def test_score_matches_direct_log_likelihood(model, lambda_seq):
    seq = lambda_seq[100:1100]
    seq = seq[:300] + "NNNNN" + seq[305:]  # N targets are skipped, N context kept
    ids = torch.from_numpy(model.tokenizer.encode(seq).astype(np.int64))[None]
    with torch.no_grad():
        logp = torch.log_softmax(model.lm(ids).float(), -1)[0]
    tgt = ids[0, 1:]
    lp = logp[:-1].gather(-1, tgt[:, None])[:, 0].double()
    keep = tgt != model.tokenizer.n_id
    ref_ll = float(lp[keep].sum())
    s = model.score(seq)
    assert s.n_scored[0] == int(keep.sum()) == 999 - 5
    assert s.lengths[0] == 1000
    assert s.log_likelihood[0] == pytest.approx(ref_ll, rel=1e-5)
    assert s.bits_per_base[0] == pytest.approx(-ref_ll / (int(keep.sum()) * np.log(2)), rel=1e-5)
    # chunked (state carried, boundary logits kept) and batched with other sequences: the same
    s2 = model.score([lambda_seq[:50], seq, "ACGT"], chunk_size=97, batch_size=3)
    assert s2.log_likelihood[1] == pytest.approx(ref_ll, rel=1e-5)
    assert list(s2.n_scored) == [49, 994, 3]
    # an untrained model is near uniform over its 16 padded outputs: ~4 bits/base
    assert 3.0 < s.bits_per_base[0] < 5.0
    assert s2.to_records()[1]["name"] == "seq1"


def test_generate(model):
    a = model.generate("ACGTACGT", 200, seed=3)
    b = model.generate("ACGTACGT", 200, seed=3)
    assert a == b and len(a) == 200 and set(a) <= set("ACGT")
    assert model.generate("ACGT", 5, include_prompt=True, seed=0).startswith("ACGT")
    assert model.generate("ACGT", 0) == ""
    # greedy decoding through the recurrent step equals argmax of full re-forwards
    greedy = model.generate("GATTACA", 6, temperature=0)
    text = "GATTACA"
    allowed = [model.tokenizer.a_id, model.tokenizer.c_id, model.tokenizer.g_id, model.tokenizer.t_id]
    for _ in range(6):
        ids = torch.from_numpy(model.tokenizer.encode(text).astype(np.int64))[None]
        with torch.no_grad():
            logits = model.lm(ids)[0, -1, allowed]
        text += "ACGT"[int(logits.argmax())]
    assert greedy == text[7:]
    with pytest.raises(ValueError, match="prompt"):
        model.generate("", 5)
    with pytest.raises(ValueError, match="prompt"):
        model.generate("AC-GT", 5)
    with pytest.raises(ValueError, match="n:"):
        model.generate("ACGT", -1)


def test_generate_a_list_of_prompts(model, lambda_seq):
    prompts = [lambda_seq[:50], "ACG", lambda_seq[1000:1123], "T", "GGATC"]
    out = model.generate(prompts, 30, temperature=0)
    assert isinstance(out, list) and len(out) == len(prompts)
    for p, o in zip(prompts, out):  # batched greedy decoding equals each prompt alone
        assert o == model.generate(p, 30, temperature=0)
    assert model.generate(prompts, 30, temperature=0, batch_size=2) == out
    with_prompt = model.generate(prompts, 5, include_prompt=True, seed=1)
    assert all(o.startswith(p) and len(o) == len(p) + 5 for p, o in zip(prompts, with_prompt))
    a = model.generate(prompts, 40, seed=5, batch_size=3)
    assert a == model.generate(prompts, 40, seed=5, batch_size=3) and all(set(x) <= set("ACGT") for x in a)
    assert model.generate(["ACGT"], 7, seed=2) == [model.generate("ACGT", 7, seed=2)]
    with pytest.raises(ValueError, match="prompt: empty list"):
        model.generate([], 5)
    with pytest.raises(ValueError, match=r"prompt\[1\]: empty"):
        model.generate(["ACGT", ""], 5)
    with pytest.raises(ValueError, match=r"prompt\[2\]"):
        model.generate(["ACGT", "A", "AC-GT"], 5)
    with pytest.raises(ValueError, match=r"prompt\[0\]: expected a DNA string, got int"):
        model.generate([3], 5)
    with pytest.raises(ValueError, match="batch_size"):
        model.generate(["ACGT"], 5, batch_size=0)


def test_classify(clf_dir, model, lambda_seq):
    gm = genomamba.load(clf_dir)
    assert gm.labels == ["E_coli", "S_aureus", "H_pylori"]
    seqs = [lambda_seq[i * 1000:(i + 1) * 1000] for i in range(4)]
    one = gm.classify(seqs, chunk_size=333, both_strands=False)
    assert len(one) == 4 and one.probabilities.shape == (4, 3)
    np.testing.assert_allclose(one.probabilities.sum(1), 1.0, rtol=1e-5)
    # equal to the training-time module (SequenceClassifier.forward) on the whole sequence
    clf = SequenceClassifier.from_pretrained(clf_dir)
    ids = torch.stack([torch.from_numpy(gm.tokenizer.encode(s).astype(np.int64)) for s in seqs])
    rc_ids = gm.tokenizer.reverse_complement(ids)
    with torch.no_grad():
        fwd, rev = torch.softmax(clf(ids), -1).numpy(), torch.softmax(clf(rc_ids), -1).numpy()
    np.testing.assert_allclose(one.probabilities, fwd, rtol=1e-4, atol=1e-6)
    assert one.labels == [gm.labels[j] for j in fwd.argmax(1)]
    # default: both strands, the mean of the two strands' probabilities (as fine-tuning evaluates)
    out = gm.classify(seqs, chunk_size=333)
    assert not np.allclose(fwd, rev, atol=1e-4)  # the strands really differ for this model
    np.testing.assert_allclose(out.probabilities, (fwd + rev) / 2, rtol=1e-4, atol=1e-6)
    assert out.labels == [gm.labels[j] for j in ((fwd + rev) / 2).argmax(1)]
    assert out.names == one.names
    with pytest.raises(ValueError, match="no classifier head"):
        model.classify("ACGT")


def test_top_level_embed_in_one_call(tmp_path):
    import genomamba
    from genomamba import MambaConfig, MambaLM

    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11)).save_pretrained(tmp_path)
    emb = genomamba.embed(tmp_path, ["ACGTACGTNN", "ACG"])
    assert emb.shape == (2, 16) and "embed" in genomamba.__all__


def test_inference_dtype_auto_is_bf16_on_cuda_only():
    import torch

    from genomamba.api import inference_dtype
    from genomamba.errors import InvalidArgument

    assert inference_dtype("cuda") is torch.bfloat16 and inference_dtype("cuda:1") is torch.bfloat16
    assert inference_dtype(None) is None and inference_dtype("cpu") is None
    assert inference_dtype("cuda", None) is None and inference_dtype("cpu", "float16") is torch.float16
    assert inference_dtype("cuda", torch.float32) is torch.float32
    with pytest.raises(InvalidArgument, match="dtype"):
        inference_dtype("cpu", "fp8")


def test_a_text_classifier_warns_about_short_input_in_bytes(tmp_path):
    from genomamba.adapters import get_adapter
    from genomamba.models.heads import SequenceClassifier

    torch.manual_seed(0)
    text = get_adapter("text")
    SequenceClassifier(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=text.vocab_size)), ["x", "y"]
                       ).save_pretrained(tmp_path)
    text.save(tmp_path)
    model = genomamba.load(tmp_path)
    with pytest.warns(UserWarning, match=r"only 10 bytes: a label from so little input is a guess"):
        model.classify("ACGTACGTAC")
