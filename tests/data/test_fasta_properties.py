"""hypothesis: arbitrary text never crashes the reader with anything but FastaFormatError, and
valid records survive any line width, line ending, case and compression."""

import gzip
import lzma

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genomamba.data import FastaFormatError, read_fasta

# Biased towards FASTA-looking text so the parser's deeper states are reached, plus arbitrary bytes.
_ALPHABET = [
    b">",
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"\t",
    b";",
    b"A",
    b"c",
    b"G",
    b"t",
    b"N",
    b"n",
    b"R",
    b"E",
    b"*",
    b"-",
    b"1",
    b"\x00",
    b"\xff",
    b"\xef\xbb\xbf",
    b"id",
    b"id2 desc",
]
fasta_like = st.lists(st.sampled_from(_ALPHABET), max_size=80).map(b"".join)
any_bytes = st.binary(max_size=300)


def _read_or_format_error(path):
    try:
        return list(read_fasta(path))
    except FastaFormatError:
        return None


SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(data=st.one_of(fasta_like, any_bytes), wrap=st.sampled_from(["plain", "gzip", "xz", "gzip-cut"]))
def test_never_crashes(tmp_path, data, wrap):
    if wrap == "gzip":
        data = gzip.compress(data, mtime=0)
    elif wrap == "xz":
        data = lzma.compress(data)
    elif wrap == "gzip-cut":
        data = gzip.compress(data, mtime=0)[: max(1, len(data) // 2)]
    p = tmp_path / "h.fa"
    p.write_bytes(data)
    recs = _read_or_format_error(p)
    if recs is not None:  # whatever is accepted is well formed
        names = [r.name for r in recs]
        assert len(set(names)) == len(names)
        for r in recs:
            assert r.name and r.sequence
            assert set(r.sequence) <= set("ACGTUNRYSWKMBDHVacgtunryswkmbdhv")


names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=">;"),
    min_size=1,
    max_size=12,
)
seqs = st.text(alphabet="ACGTNacgtnRYK", min_size=1, max_size=400)


@SETTINGS
@given(
    records=st.lists(st.tuples(names, seqs), min_size=1, max_size=6, unique_by=lambda r: r[0]),
    width=st.integers(1, 120),
    eol=st.sampled_from(["\n", "\r\n"]),
    compress=st.booleans(),
)
def test_roundtrip_any_layout(tmp_path, records, width, eol, compress):
    text = "".join(
        f">{n} some description{eol}" + "".join(s[i : i + width] + eol for i in range(0, len(s), width))
        for n, s in records
    ).encode()
    p = tmp_path / "r.fa"
    p.write_bytes(gzip.compress(text, mtime=0) if compress else text)
    got = [(r.name, r.sequence) for r in read_fasta(p)]
    assert got == records
