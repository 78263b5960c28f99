"""The malformed/tricky FASTA corpus: every file gives its documented result.

Each case is (file name, bytes, expected) where expected is either the list of (name, sequence)
records or ``Err(substring)``: a FastaFormatError whose message contains the substring and the
file's path (and the line, where there is one).
"""

import bz2
import gzip
import io
import lzma
from dataclasses import dataclass

import pytest
from Bio import bgzf

from genomamba.data import FastaFormatError, read_fasta, read_records
from genomamba.data.fasta import IndexedFasta, sniff_compression


@dataclass
class Err:
    text: str
    line: bool = True  # message must name a line


def gz(b: bytes) -> bytes:
    return gzip.compress(b, mtime=0)


def bgz(b: bytes) -> bytes:
    buf = io.BytesIO()
    w = bgzf.BgzfWriter(fileobj=buf, mode="wb")
    w.write(b)
    w.flush()
    buf.write(bgzf._bgzf_eof)
    return buf.getvalue()


LONG = "ACGT" * 250_000  # one 1 Mb line
TWO = b">r1 first record\nACGTACGTAC\nGTAC\n>r2\nTTTT\n"
TWO_EXPECT = [("r1", "ACGTACGTACGTAC"), ("r2", "TTTT")]
MANY = b"".join(b">rec%d\n%s\n" % (i, b"ACGTTGCA" * (i % 13 + 1)) for i in range(400))

CASES = [
    # ---- documented errors
    ("empty.fa", b"", Err("empty file", line=False)),
    ("blank_only.fa", b"\n\n  \n", Err("empty file", line=False)),
    ("no_header.fa", b"ACGTACGT\nACGT\n", Err("before the first '>'")),
    ("binary.fa", bytes(range(256)) * 4, Err("binary")),
    ("protein.fa", b">sp|P69905|HBA_HUMAN\nMVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSF\n", Err("protein")),
    ("stop_codon.fa", b">p\nACGT*\n", Err("protein")),
    ("header_no_seq_end.fa", b">a\nACGT\n>b\n", Err("'b' (header at line 3) has no sequence")),
    ("header_no_seq_mid.fa", b">a\n>b\nACGT\n", Err("'a' (header at line 1) has no sequence")),
    (
        "duplicate.fa",
        b">a\nACGT\n>b\nAC\n>a x\nGG\n",
        Err("duplicate record name 'a' at line 5 (first seen at line 1)"),
    ),
    ("gt_only.fa", b">\n", Err("has no record name")),
    ("gt_only_with_seq.fa", b">\nACGT\n", Err("has no record name")),
    ("gt_space_only.fa", b">   \nACGT\n", Err("has no record name")),
    ("truncated.fa.gz", gz(MANY)[:-40], Err("truncated or corrupt gzip")),
    ("truncated.fa.xz", lzma.compress(MANY)[:-30], Err("truncated or corrupt xz")),
    ("gaps.fa", b">aln\nACGT--ACGT\n", Err("alignment gap '-'")),
    ("digits.fa", b">gb\n1 acgtacgt\n", Err("invalid character '1'")),
    ("cr_only.fa", b">a\rACGT\rACGT\r", Err("classic Mac")),
    ("utf16.fa", "\ufeff>a\nACGT\n".encode("utf-16"), Err("UTF-16")),
    ("bad_header_utf8.fa", b">a\xff\xfe\nACGT\n", Err("not UTF-8")),
    ("genbank_as_fasta.fa", b"LOCUS       X52329  2961 bp  DNA\nORIGIN\n//\n", Err("GenBank")),
    ("error_line_number.fa", b">a\nACGT\nACGT\n\nACXT\n", Err("line 5, column 3")),
    # ---- documented successes
    ("two.fa", TWO, TWO_EXPECT),
    ("lowercase.fa", b">soft\nACGTacgtnnNN\n", [("soft", "ACGTacgtnnNN")]),
    ("iupac.fa", b">amb\nACGTRYSWKMBDHVNU\nryswkmbdhvnu\n", [("amb", "ACGTRYSWKMBDHVNUryswkmbdhvnu")]),
    (
        "n_runs.fa",
        b">n\n" + b"N" * 5000 + b"\nACGT\n" + b"n" * 70 + b"\n",
        [("n", "N" * 5000 + "ACGT" + "n" * 70)],
    ),
    ("long_line.fa", b">long\n" + LONG.encode() + b"\n", [("long", LONG)]),
    ("crlf.fa", TWO.replace(b"\n", b"\r\n"), TWO_EXPECT),
    ("bom.fa", b"\xef\xbb\xbf" + TWO, TWO_EXPECT),
    ("trailing_spaces.fa", b">r1 first record   \nACGTACGTAC  \t\nGTAC \n>r2\t\nTTTT\n", TWO_EXPECT),
    ("blank_lines.fa", b"\n\n>r1 first record\n\nACGTACGTAC\n\nGTAC\n\n>r2\nTTTT\n\n\n", TWO_EXPECT),
    ("no_final_newline.fa", TWO.rstrip(b"\n"), TWO_EXPECT),
    ("ragged_width.fa", b">r1\nA\nCGTACG\nTACGTAC\n>r2\nTTTT\n", [("r1", "ACGTACGTACGTAC"), ("r2", "TTTT")]),
    (
        "comment.fa",
        b";old-style comment\n>r1 first record\nACGTACGTAC\n;inside\nGTAC\n>r2\nTTTT\n",
        TWO_EXPECT,
    ),
    ("inner_spaces.fa", b">r1\nACGT ACGT AC\n", [("r1", "ACGTACGTAC")]),
    ("plain.fa.gz", gz(TWO), TWO_EXPECT),
    ("bgzip.fa.gz", bgz(TWO), TWO_EXPECT),
    ("xz.fa.xz", lzma.compress(TWO), TWO_EXPECT),
    ("bz2.fa.bz2", bz2.compress(TWO), TWO_EXPECT),
    ("gz_wrong_extension.fa", gz(TWO), TWO_EXPECT),  # compression by magic bytes, not name
    ("multimember.fa.gz", gz(TWO[:20]) + gz(TWO[20:]), TWO_EXPECT),
]


def test_corpus_is_big_enough():
    assert len(CASES) >= 20
    assert sum(isinstance(c[2], Err) for c in CASES) >= 12


@pytest.mark.parametrize("fname,data,expected", CASES, ids=[c[0] for c in CASES])
def test_corpus_case(tmp_path, fname, data, expected):
    path = tmp_path / fname
    path.write_bytes(data)
    if isinstance(expected, Err):
        with pytest.raises(FastaFormatError) as ei:
            list(read_fasta(path))
        msg = str(ei.value)
        assert expected.text in msg, msg
        assert str(path) in msg, msg
        if expected.line:
            assert "line" in msg, msg
        assert isinstance(ei.value, ValueError)
    else:
        got = [(r.name, r.sequence) for r in read_fasta(path)]
        assert got == expected


def test_name_and_description_follow_biopython(tmp_path):
    p = tmp_path / "h.fa"
    p.write_bytes(b">gi|386593590|ref|NC_017625.1| Escherichia coli DH1\tchromosome\nAC\n")
    (rec,) = read_fasta(p)
    assert rec.name == rec.id == "gi|386593590|ref|NC_017625.1|"
    assert rec.description == "gi|386593590|ref|NC_017625.1| Escherichia coli DH1\tchromosome"
    assert rec.line == 1 and len(rec) == 2


def test_duplicates_allowed_on_request(tmp_path):
    p = tmp_path / "d.fa"
    p.write_bytes(b">a\nAC\n>a\nGT\n")
    assert [r.sequence for r in read_fasta(p, allow_duplicates=True)] == ["AC", "GT"]


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fa"):
        list(read_fasta(tmp_path / "nope.fa"))


def test_sniff_bgzf_vs_gzip(tmp_path):
    (tmp_path / "a.gz").write_bytes(gz(TWO))
    (tmp_path / "b.gz").write_bytes(bgz(TWO))
    assert sniff_compression(tmp_path / "a.gz") == "gzip"
    assert sniff_compression(tmp_path / "b.gz") == "bgzf"


@pytest.mark.parametrize("kind", ["plain", "bgzip", "gzip", "xz"])
def test_indexed_access_matches_streaming(tmp_path, kind):
    recs = b"".join(b">c%d desc\n" % i + (b"ACGTNacgtn" * (37 + i)) + b"\n" for i in range(5))
    data = {"plain": recs, "bgzip": bgz(recs), "gzip": gz(recs), "xz": lzma.compress(recs)}[kind]
    p = tmp_path / f"x.{kind}"
    p.write_bytes(data)
    streamed = {r.name: r.sequence for r in read_fasta(p)}
    with IndexedFasta(p, cache_dir=tmp_path / "cache") as fa:
        assert fa.names == list(streamed)
        for name, seq in streamed.items():
            assert fa.length(name) == len(seq)
            assert fa.fetch(name, 3, 57) == seq[3:57]
        with pytest.raises(KeyError, match="no record 'zz'"):
            fa.fetch("zz", 0, 1)
        n = fa.length("c0")
        assert fa.fetch("c0", n - 3, n) == streamed["c0"][-3:] and fa.fetch("c0", 5, 5) == ""
        for start, stop in ((n - 3, n + 1), (-1, 4), (6, 5)):  # the same error plain or compressed
            with pytest.raises(ValueError, match=rf"record 'c0': \[{start}, {stop}\) is not inside its {n} bases"):
                fa.fetch("c0", start, stop)


def test_indexed_access_checks_the_bases_it_returns(tmp_path):
    p = tmp_path / "odd.fa"
    p.write_text(">a\nAC GTACGTAC\n>b\nACGTEFACGT\n")
    with IndexedFasta(p) as fa:
        assert fa.fetch("a", 0, 2) == "AC"
        with pytest.raises(FastaFormatError, match="record 'a', base 2: a space inside a sequence line"):
            fa.fetch("a", 0, 6)
        with pytest.raises(FastaFormatError, match=r"record 'b', base 4: 'E' is not a nucleotide"):
            fa.fetch("b", 2, 8)


def test_read_records_dispatches_genbank(tmp_path):
    gb = (
        "LOCUS       TEST01                    12 bp    DNA     linear   SYN 01-JAN-2000\n"
        "DEFINITION  test record.\nACCESSION   TEST01\nVERSION     TEST01.1\n"
        "FEATURES             Location/Qualifiers\n"
        "ORIGIN\n        1 acgtnnacgt ac\n//\n"
    )
    p = tmp_path / "t.gb"
    p.write_text(gb)
    (rec,) = read_records(p)
    assert rec.name == "TEST01.1" and rec.sequence.upper() == "ACGTNNACGTAC"
    bad = tmp_path / "bad.gb"
    bad.write_text(gb.replace("acgtnnacgt ac", "acgtnnacgt a*"))
    with pytest.raises(FastaFormatError, match="bad.gb"):
        list(read_records(bad))
