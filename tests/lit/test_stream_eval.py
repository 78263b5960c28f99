"""Held-out sequences read as streams (``genomamba.lit.evaluate.stream_bits``): the score of one whole
forward whatever the chunk length; adapting while reading scores each chunk before learning from it."""

import math

import pytest
import torch
import torch.nn.functional as F

from genomamba.adapters import get_adapter
from genomamba.config import MambaConfig
from genomamba.data.fetch import assets_dir
from genomamba.lit.evaluate import stream_bits
from genomamba.models.lm import MambaLM

TEXT = get_adapter("text")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=TEXT.vocab_size, d_state=8)).double()
    ids = torch.as_tensor(TEXT.encode((assets_dir() / "text_kjv_genesis.txt").read_text()[:700])).long()
    ok = torch.zeros(model.config.padded_vocab_size, dtype=torch.bool)
    ok[TEXT.data_ids] = True
    return model, ids, ok


def _whole_forward_bits(model, ids):
    with torch.no_grad():
        logits = model(ids.view(1, -1))[0, :-1]
    return F.cross_entropy(logits, ids[1:], reduction="sum").item() / (len(ids) - 1) / math.log(2)


@pytest.mark.parametrize("chunk_len", [1, 7, 100, 699, 5000])
def test_stream_equals_one_whole_forward(setup, chunk_len):
    model, ids, ok = setup
    got = stream_bits(model, [ids], ok, chunk_len=chunk_len)
    assert got["tokens"] == len(ids) - 1
    assert got["bits"] == pytest.approx(_whole_forward_bits(model, ids), rel=1e-10)


def test_sequences_are_read_separately_and_weighted_by_tokens(setup):
    model, ids, ok = setup
    a, b = ids[:300], ids[300:]
    got = stream_bits(model, [a, b], ok, chunk_len=64)
    n_a, n_b = len(a) - 1, len(b) - 1
    want = (_whole_forward_bits(model, a) * n_a + _whole_forward_bits(model, b) * n_b) / (n_a + n_b)
    assert got["tokens"] == n_a + n_b and got["bits"] == pytest.approx(want, rel=1e-10)


def test_adapting_scores_before_learning_and_restores_the_weights(setup):
    model, ids, ok = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    short = ids[:50]  # one chunk: scored before the only update, so exactly the static score
    assert stream_bits(model, [short], ok, 64, adapt_lr=0.5)["bits"] == pytest.approx(
        stream_bits(model, [short], ok, 64)["bits"], rel=1e-12)
    static = stream_bits(model, [ids], ok, 64)["bits"]
    adaptive = stream_bits(model, [ids], ok, 64, adapt_lr=0.05)["bits"]
    assert adaptive != pytest.approx(static, rel=1e-6)  # later chunks were read by updated weights
    assert model.training  # the mode it came in with
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert all(p.grad is None for p in model.parameters())


def test_targets_outside_the_data_ids_are_not_scored(setup):
    model, ids, ok = setup
    with_pad = torch.cat([ids[:100], torch.tensor([TEXT.pad_id]), ids[100:200]])
    got = stream_bits(model, [with_pad], ok, chunk_len=32)
    assert got["tokens"] == 200 - 1  # the pad is context, never a target


@pytest.mark.parametrize("kw, pattern", [({"chunk_len": 0}, "chunk_len: expected a positive int"),
                                         ({"chunk_len": 8, "adapt_lr": -1.0}, "adapt_lr: expected"),
                                         ({"chunk_len": 8, "adapt_lr": float("nan")}, "adapt_lr: expected")])
def test_bad_arguments_are_named(setup, kw, pattern):
    model, ids, ok = setup
    with pytest.raises(ValueError, match=pattern):
        stream_bits(model, [ids], ok, **kw)


def test_dna_stream_skips_n_targets_and_keeps_them_as_context():
    """On a real genome slice with a run of N: N bases are read but never scored."""
    from genomamba.data.fasta import read_fasta
    from genomamba.tokenizers.dna import DNATokenizer

    tok = DNATokenizer()
    seq = next(read_fasta(assets_dir() / "umaydis_val.fa.gz")).sequence[:3000]
    seq = seq[:1000] + "N" * 50 + seq[1000:]
    ids = torch.as_tensor(tok.encode(seq)).long()
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=tok.vocab_size, d_state=8)).double()
    ok = torch.zeros(model.config.padded_vocab_size, dtype=torch.bool)
    ok[[tok.a_id, tok.c_id, tok.g_id, tok.t_id]] = True
    got = stream_bits(model, [ids], ok, chunk_len=333)
    targets = ids[1:]
    assert got["tokens"] == int(ok[targets].sum()) == len(seq) - 1 - 50
    with torch.no_grad():
        logits = model(ids.view(1, -1))[0, :-1]
    nll = F.cross_entropy(logits, targets, reduction="none")[ok[targets]].sum().item()
    assert got["bits"] == pytest.approx(nll / got["tokens"] / math.log(2), rel=1e-10)


def test_stream_test_picks_the_rate_on_validation_and_never_a_diverged_one():
    """On the shipped KJV slice's own split: a rate that blows the weights up is reported, not chosen."""
    from genomamba.data.corpus import build_corpus
    from genomamba.lit.evaluate import stream_test

    store, splits = build_corpus([{"assets": "text"}], TEXT)
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=TEXT.vocab_size, d_state=8))
    ok = torch.zeros(model.config.padded_vocab_size, dtype=torch.bool)
    ok[TEXT.data_ids] = True
    out = stream_test(model, store, splits, ok, 512, [1e9, 0.01], bits_key="bits_per_byte")
    n_test = sum(len(r) - 1 for r in splits.test)
    assert out["tokens"] == n_test and out["chunk_len"] == 512
    ad = out["adaptive"]
    assert ad["lr"] == 0.01 and ad["chosen_on"] == "validation"
    assert not math.isfinite(float(ad["val_by_lr"]["1000000000.0"])) or ad["val_by_lr"]["1000000000.0"] > 8
    assert math.isfinite(ad["bits_per_byte"])
