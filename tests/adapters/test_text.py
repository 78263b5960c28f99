"""Byte-level text adapter: exact UTF-8 round trips, replacement on cut characters, raw file bytes."""

import gzip

import numpy as np
import pytest
import torch

from genomamba.adapters import get_adapter
from genomamba.adapters.text import ByteTextAdapter

TEXT = get_adapter("text")

SAMPLES = [
    "",
    "naïve 🧬",
    "In the beginning God created the heaven and the earth.",
    "e\u0301te\u0301 \u0915\u094d\u0937 a\u20dd",  # combining acute, Devanagari conjunct, enclosing circle
    "👩‍👩‍👧‍👦 family (ZWJ sequence), 🇫🇷 flag, 👍🏽 skin tone",
    "日本語のテキスト、한국어, עברית, العربية",
    "nul\x00byte\ttab\r\nCRLF\u2028line separator\ufeffBOM",
    "\U0010ffff max code point",
]


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_vocabulary_layout():
    assert isinstance(TEXT, ByteTextAdapter)
    assert TEXT.vocab_size == 260 and TEXT.vocab_size >= 256
    assert TEXT.specials == {"<pad>": 256, "<bos>": 257, "<eos>": 258, "<mask>": 259}
    assert TEXT.pad_id == 256 and (TEXT.bos_id, TEXT.eos_id, TEXT.mask_id) == (257, 258, 259)


@pytest.mark.parametrize("s", SAMPLES)
def test_exact_utf8_round_trip(s):
    ids = TEXT.encode(s)
    assert ids.ndim == 1 and ids.dtype == np.int16
    assert ids.tolist() == list(s.encode("utf-8"))  # id == byte value
    assert TEXT.decode(ids) == s
    assert TEXT.decode(torch.from_numpy(ids.astype(np.int64))) == s
    assert TEXT.decode(ids.tolist()) == s


def test_specials_frame_and_are_dropped_on_decode():
    ids = TEXT.encode("naïve 🧬", add_bos=True, add_eos=True)
    assert ids[0] == TEXT.bos_id and ids[-1] == TEXT.eos_id and len(ids) == len("naïve 🧬".encode()) + 2
    padded = np.concatenate([ids, np.full(5, TEXT.pad_id, dtype=ids.dtype)])
    assert TEXT.decode(padded) == "naïve 🧬"


def test_cut_multibyte_sequence_decodes_with_replacement():
    ids = TEXT.encode("naïve 🧬")  # 🧬 is 4 bytes, ï is 2
    for cut in range(1, 4):
        assert TEXT.decode(ids[:-cut]) == "naïve \ufffd"
    assert TEXT.decode(ids[3:]) == "\ufffdve 🧬"  # window starting inside ï
    # every possible window decodes without raising
    for a in range(len(ids)):
        for b in range(a, len(ids) + 1):
            TEXT.decode(ids[a:b])
    with pytest.raises(ValueError, match="invalid UTF-8 at byte 7"):
        TEXT.decode(ids[:-1], errors="strict")


def test_invalid_utf8_file_bytes_are_kept_exactly(tmp_path):
    raw = b"caf\xc3\xa9 \xff\xfe broken \xe2\x82 lone \x80 end\n" + bytes(range(256))
    p = tmp_path / "binary.txt"
    p.write_bytes(raw)
    ids = TEXT.read_file(p)
    assert np.array_equal(ids, TEXT.encode_file(p))
    assert ids.tolist() == list(raw)
    assert TEXT.decode_bytes(ids) == raw
    text = TEXT.decode(ids)
    assert text.startswith("café \ufffd\ufffd broken \ufffd lone \ufffd end\n")
    assert text == raw.decode("utf-8", errors="replace")


def test_compressed_file_is_decompressed(tmp_path):
    s = "the Jargon File — “hacker” lore 🧑‍💻\n" * 50
    gz = tmp_path / "corpus.txt.gz"
    gz.write_bytes(gzip.compress(s.encode()))
    assert TEXT.decode(TEXT.read_file(gz)) == s
    plain = tmp_path / "starts_like_bzip2.txt"
    plain.write_bytes(b"BZh9 is not a bzip2 stream here")
    assert TEXT.decode(TEXT.read_file(plain)) == "BZh9 is not a bzip2 stream here"
    assert [len(x) for x in TEXT.read_files([gz, plain])] == [len(s.encode()), 31]


def test_real_kjv_asset_round_trips(kjv_asset):
    raw = kjv_asset.read_bytes()
    ids = TEXT.read_file(kjv_asset)
    assert len(ids) == len(raw) > 50_000
    assert TEXT.decode(ids) == raw.decode("utf-8")
    assert TEXT.decode(ids).splitlines()[3].startswith("  1 In the beginning God created the heaven and the earth.")


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (b"bytes", "text must be str, got bytes \\(use encode_bytes"),
        (None, "text must be str, got NoneType"),
        (["a", "b"], "text must be str, got list"),
        (42, "text must be str, got int"),
    ],
)
def test_encode_rejects_non_str(bad, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
        TEXT.encode(bad)
    _one_line_error(e)


@pytest.mark.parametrize(
    "ids, pattern",
    [
        ([65, 260], "id 260 at position 1, outside \\[0, 260\\)"),
        ([-1, 65], "id -1 at position 0, outside \\[0, 260\\)"),
        (np.array([65.0, 66.0]), "must be integer token ids, got dtype float64"),
        (np.zeros((2, 3), dtype=np.int64), "must be 1-D, got shape \\(2, 3\\)"),
    ],
)
def test_decode_rejects_bad_ids(ids, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
        TEXT.decode(ids)
    _one_line_error(e)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt: no such file"):
        TEXT.read_file(tmp_path / "nope.txt")
    bad = tmp_path / "truncated.txt.gz"
    bad.write_bytes(gzip.compress(b"x" * 1000)[:20])
    with pytest.raises(ValueError, match="truncated.txt.gz: corrupt compressed file") as e:
        TEXT.read_file(bad)
    _one_line_error(e)
    with pytest.raises(ValueError, match="not a regular file"):
        TEXT.read_file(tmp_path)
    with pytest.raises(ValueError, match="single path"):
        TEXT.read_files(str(bad))


# ----------------------------------------------------------------------------- any Unicode (property)
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_any_unicode_round_trips_exactly(s):
    ids = TEXT.encode(s)
    assert ids.dtype == np.int16 and len(ids) == len(s.encode("utf-8"))
    assert TEXT.decode(ids) == s
    assert TEXT.decode(TEXT.encode(s, add_bos=True, add_eos=True)) == s


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60), st.integers(0, 400))
def test_any_cut_decodes_without_raising(s, cut):
    ids = TEXT.encode(s)[:cut]
    out = TEXT.decode(ids)
    assert isinstance(out, str) and len(out) <= len(ids)
    assert s.startswith(out.rstrip("\ufffd"))  # a prefix of the text, a cut character replaced
