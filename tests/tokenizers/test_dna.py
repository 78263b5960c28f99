import json
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genomamba.tokenizers.dna import DNATokenizer

TOK = DNATokenizer()


def test_vocab_layout():
    t = TOK
    assert t.vocab_size == 11 <= 16 and len(t) == 11
    assert t.pad_id == 0
    assert [t.a_id, t.c_id, t.g_id, t.t_id, t.n_id] == [6, 7, 8, 9, 10]
    assert {t.bos_id, t.eos_id, t.cls_id, t.mask_id, t.unk_id} == {1, 2, 3, 4, 5}
    assert DNATokenizer(iupac="tokens").vocab_size == 21


def test_encode_case_and_softmask():
    ids, soft = TOK.encode("ACGTNacgtn", return_mask=True)
    assert ids.dtype == np.uint8 and soft.dtype == np.bool_
    assert ids.tolist() == [6, 7, 8, 9, 10] * 2  # case never reaches the token
    assert soft.tolist() == [False] * 5 + [True] * 5
    assert TOK.decode(ids, soft) == "ACGTNacgtn"
    assert TOK.decode(ids) == "ACGTNACGTN"
    assert np.array_equal(TOK.encode(b"acgt"), TOK.encode("ACGT"))
    assert np.array_equal(TOK.encode(np.frombuffer(b"ACGT", np.uint8)), TOK.encode("ACGT"))


def test_iupac_policies():
    s = "ACRYSWKMBDHVU"
    assert TOK.encode(s).tolist() == [6, 7] + [10] * 10 + [9]  # U reads as T
    t = DNATokenizer(iupac="tokens")
    ids = t.encode(s)
    assert t.decode(ids) == "ACRYSWKMBDHVT"
    assert DNATokenizer(iupac="unk").encode("R").tolist() == [5]
    with pytest.raises(ValueError, match="IUPAC ambiguity code 'R' at position 2"):
        DNATokenizer(iupac="error").encode("ACR")


@pytest.mark.parametrize("bad", ["ACGE", "AC-G", "AC G", "ACG*", "ACG1"])
def test_invalid_characters_raise_with_position(bad):
    with pytest.raises(ValueError, match="position"):
        TOK.encode(bad)
    assert DNATokenizer(unknown="unk").encode(bad)[-1 if bad[-1] in "*1E" else 2] == TOK.unk_id


def test_non_ascii_raises():
    with pytest.raises(ValueError, match="non-ASCII"):
        TOK.encode("ACGTé")


def test_bos_eos():
    ids, soft = TOK.encode("ac", return_mask=True, add_bos=True, add_eos=True)
    assert ids.tolist() == [1, 6, 7, 2] and soft.tolist() == [False, True, True, False]


def test_reverse_complement_basic_and_specials_stay():
    ids = TOK.encode("AACGTN")
    assert TOK.decode(TOK.reverse_complement(ids)) == "NACGTT"
    framed = np.array([1, 6, 6, 7, 2, 0, 0], np.uint8)  # <bos> A A C <eos> <pad> <pad>
    assert TOK.reverse_complement(framed).tolist() == [1, 8, 9, 9, 2, 0, 0]
    batch = torch.tensor([[6, 7, 8, 0, 0], [1, 6, 6, 6, 9]])
    out, mask = TOK.reverse_complement(batch, batch > 5)
    assert out.tolist() == [[7, 8, 9, 0, 0], [1, 6, 9, 9, 9]]
    assert mask.tolist() == [[True, True, True, False, False], [False, True, True, True, True]]
    t = DNATokenizer(iupac="tokens")
    assert t.decode(t.reverse_complement(t.encode("RYKMBVDHSWN"))) == "NWSDHBVKMRY"


def test_reverse_complement_moves_unk_with_the_bases():
    # <unk> is a base that could not be read: it is its own complement and sits where its base does
    t = DNATokenizer(iupac="unk")
    ids = t.encode("AARC")  # R -> <unk>
    assert ids.tolist() == [6, 6, t.unk_id, 7]
    want = [8, t.unk_id, 9, 9]  # G <unk> T T
    assert t.reverse_complement(ids).tolist() == want
    assert t.reverse_complement(torch.from_numpy(ids)).tolist() == want
    framed = np.array([1, 6, 6, t.unk_id, 7, 0, 0], np.int64)  # <bos> A A <unk> C <pad> <pad>
    out, soft = t.reverse_complement(framed, np.array([0, 1, 1, 1, 0, 0, 0]))
    assert out.tolist() == [1, 8, t.unk_id, 9, 9, 0, 0] and soft.tolist() == [0, 0, 1, 1, 1, 0, 0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10), min_size=1, max_size=64), st.integers(1, 4))
def test_rc_is_involution_and_torch_matches_numpy(tokens, b):
    x = np.array([tokens] * b, dtype=np.int64)
    x[0] = np.roll(x[0], 1)
    rc = TOK.reverse_complement(x)
    assert np.array_equal(TOK.reverse_complement(rc), x)
    special = (x < TOK.first_base_id) & (x != TOK.unk_id)
    assert np.array_equal(rc[special], x[special])  # specials never move
    assert np.array_equal(TOK.reverse_complement(torch.from_numpy(x)).numpy(), rc)
    for row in range(b):
        assert np.array_equal(TOK.reverse_complement(x[row].astype(np.uint8)), rc[row])


def test_save_load(tmp_path):
    t = DNATokenizer(iupac="tokens")
    t.save_pretrained(tmp_path)
    assert DNATokenizer.from_pretrained(tmp_path) == t
    d = json.loads((tmp_path / "tokenizer.json").read_text())
    d["vocab"] = d["vocab"][::-1]
    (tmp_path / "tokenizer.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"tokenizer\.json: tokenizer vocab mismatch"):
        DNATokenizer.from_pretrained(tmp_path)
    d["vocab"] = 5
    (tmp_path / "tokenizer.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"tokenizer\.json: vocab: expected the list of token strings, got 5"):
        DNATokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        DNATokenizer.from_pretrained(tmp_path / "nothing")
    for text, needle in (('{"type": "x"}', "not a genomamba.DNATokenizer config: type='x'"),
                         ("[1, 2]", "expected a JSON object")):
        (tmp_path / "tokenizer.json").write_text(text)
        with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'tokenizer.json'))}: {re.escape(needle)}"):
            DNATokenizer.from_pretrained(tmp_path)
