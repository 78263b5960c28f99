"""Errors that must name the file, the record and the line: cut-short and inconsistent GenBank
records, FASTQ given as FASTA, and the column of a bad character in a line with spaces or tabs."""

import gzip
import warnings

import pytest
from Bio import BiopythonParserWarning

from genomamba.data import FastaFormatError, read_fasta, read_genbank, read_records


def locus(name: str, length: int) -> str:
    return f"LOCUS       {name:<16} {length:>11} bp    DNA     linear   SYN 01-JAN-2000\n"


def gb_record(name: str, bases: str) -> str:
    """A complete GenBank record (LOCUS length = number of bases), sequence lines of 60 bases."""
    origin = "".join(
        f"{i + 1:>9} " + " ".join(bases[j : j + 10] for j in range(i, min(i + 60, len(bases)), 10)) + "\n"
        for i in range(0, len(bases), 60)
    )
    return (
        locus(name, len(bases))
        + f"DEFINITION  {name} test record.\nACCESSION   {name}\nVERSION     {name}.1\n"
        + "FEATURES             Location/Qualifiers\n"
        + f"     source          1..{len(bases)}\n"
        + '                     /mol_type="genomic DNA"\n'
        + f"ORIGIN\n{origin}//\n"
    )


T1 = gb_record("T1", "acgtnnacgtac")  # 10 lines: LOCUS at line 1, '//' at line 10
SEQS = {"A1": "acgt" * 40, "B2": "ttgca" * 13, "C3": "gattaca"}


# ----------------------------------------------------------------------------- GenBank


def test_well_formed_multi_record_genbank_reads(tmp_path):
    p = tmp_path / "multi.gb"
    p.write_text("".join(gb_record(n, s) for n, s in SEQS.items()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-formed file gives no warning at all
        recs = list(read_records(p))
    assert [(r.name, r.sequence) for r in recs] == [(f"{n}.1", s.upper()) for n, s in SEQS.items()]
    assert [r.line for r in recs] == [1, 13, 24]  # the LOCUS line of each record


def test_genbank_truncated_last_record_is_an_error(tmp_path):
    p = tmp_path / "cut.gb"
    p.write_text(T1 + locus("T2", 30) + "ORIGIN\n        1 acgtac\n")  # no '//': the file was cut short
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error replaces Biopython's warning, it is not shown too
        with pytest.raises(FastaFormatError) as ei:
            list(read_genbank(p))
    msg = str(ei.value)
    assert msg.startswith(f"{p}: record 2 'T2' (LOCUS at line 11): ")
    assert msg.endswith("the file ends at line 13, before the record's closing '//': truncated file?")
    assert "\n" not in msg


def test_genbank_truncated_file_through_read_records_and_gzip(tmp_path):
    p = tmp_path / "cut.gb.gz"
    p.write_bytes(gzip.compress((T1 + locus("T2", 30) + "ORIGIN\n        1 acgtac\n").encode()))
    with pytest.raises(FastaFormatError, match=r"cut\.gb\.gz: record 2 'T2' .*before the record's closing '//'"):
        list(read_records(p))


@pytest.mark.parametrize("keep", [1, 2, 5, 7, 8, 9])  # LOCUS only, header, features, ORIGIN, mid-sequence
def test_genbank_cut_anywhere_in_the_last_record(tmp_path, keep):
    p = tmp_path / "cut.gb"
    p.write_text(T1 + "".join(gb_record("T2", "acgt" * 20).splitlines(keepends=True)[:keep]))
    with pytest.raises(FastaFormatError) as ei:
        list(read_genbank(p))
    assert str(ei.value) == (
        f"{p}: record 2 'T2' (LOCUS at line 11): the file ends at line {10 + keep}, "
        "before the record's closing '//': truncated file?"
    )


def test_genbank_locus_length_mismatch_is_an_error(tmp_path):
    p = tmp_path / "short.gb"
    p.write_text(T1 + locus("T2", 30) + "ORIGIN\n        1 acgtac\n//\n" + gb_record("T3", "acgt"))
    with pytest.raises(FastaFormatError) as ei:
        list(read_genbank(p))
    msg = str(ei.value)
    assert msg.startswith(f"{p}: record 2 'T2' (LOCUS at line 11): ")
    assert "the LOCUS line says 30 bp but the sequence has 6 bases (record ends at line 14)" in msg


def test_genbank_records_before_the_bad_one_are_still_streamed(tmp_path):
    p = tmp_path / "short.gb"
    p.write_text(T1 + locus("T2", 30) + "ORIGIN\n        1 acgtac\n//\n")
    it = read_genbank(p)
    assert next(it).sequence == "ACGTNNACGTAC"
    with pytest.raises(FastaFormatError, match="record 2 'T2'"):
        next(it)


def test_harmless_biopython_warnings_stay_warnings(tmp_path):
    # A blank line inside ORIGIN loses nothing: Biopython warns and the record reads whole.
    p = tmp_path / "blank.gb"
    p.write_text(T1.replace("ORIGIN\n", "ORIGIN\n\n"))
    with pytest.warns(BiopythonParserWarning, match="Blank line in sequence data") as rec_warnings:
        (rec,) = read_genbank(p)
    assert rec.sequence == "ACGTNNACGTAC"
    (w,) = [w for w in rec_warnings if "Blank line" in str(w.message)]  # said once, with file and record
    assert str(w.message).startswith(f"{p}: record 1 'T1' (LOCUS at line 1): ")


def test_warning_filters_are_not_changed_between_records(tmp_path):
    p = tmp_path / "two.gb"
    p.write_text(T1 + gb_record("T2", "acgt"))
    before = list(warnings.filters)
    it = read_genbank(p)
    next(it)  # suspended between records: the caller's warnings behave as the caller set them
    assert warnings.filters == before
    with pytest.warns(BiopythonParserWarning):
        warnings.warn("Expected sequence length 3, found 2 (X).", BiopythonParserWarning)
    assert [r.name for r in it] == ["T2.1"]


def test_genbank_error_names_record_and_base(tmp_path):
    p = tmp_path / "star.gb"
    p.write_text(T1 + gb_record("T2", "acgtacgtacgt*c"))
    with pytest.raises(FastaFormatError) as ei:
        list(read_genbank(p))
    assert str(ei.value).startswith(f"{p}: record 2 'T2.1' (LOCUS at line 11), base 13 of the sequence: '*'")


def test_genbank_duplicate_names_the_records_and_lines(tmp_path):
    p = tmp_path / "dup.gb"
    p.write_text(T1 + T1)
    with pytest.raises(FastaFormatError) as ei:
        list(read_genbank(p))
    assert str(ei.value) == (
        f"{p}: record 2 'T1.1' (LOCUS at line 11): duplicate record name 'T1.1' "
        "(first seen as record 1, LOCUS at line 1)"
    )


# ----------------------------------------------------------------------------- FASTQ given as FASTA


@pytest.mark.parametrize("reader", [read_fasta, read_records])
def test_fastq_is_named_as_such(tmp_path, reader):
    p = tmp_path / "reads.fa"
    p.write_bytes(b"@q1\nACGT\n+\nIIII\n@q2\nGGCC\n+q2\nIIII\n")
    with pytest.raises(FastaFormatError) as ei:
        list(reader(p))
    msg = str(ei.value)
    assert msg.startswith(f"{p}: line 1: this looks like FASTQ")
    assert "genomamba reads FASTA and GenBank" in msg


def test_fastq_after_blank_lines_and_gzipped(tmp_path):
    p = tmp_path / "reads.fq.gz"
    p.write_bytes(gzip.compress(b"\n\n@q1 run=1\nACGT\n+\nIIII\n"))
    with pytest.raises(FastaFormatError, match=r"reads\.fq\.gz: line 3: this looks like FASTQ .*line 5"):
        list(read_fasta(p))


def test_at_sign_without_fastq_layout_is_plain_missing_header(tmp_path):
    p = tmp_path / "at.fa"
    p.write_bytes(b"@q1\nACGT\nACGT\n")
    with pytest.raises(FastaFormatError, match=r"line 1: sequence data before the first '>' header .*'@q1'"):
        list(read_fasta(p))


# ----------------------------------------------------------------------------- columns in the line as written


@pytest.mark.parametrize(
    "line,column",
    [
        (b"ACGT 1ACGT", 6),
        (b"ACGT\t1ACGT", 6),
        (b"  \tACGT1", 8),  # leading spaces and a tab
        (b"AC GT AC GT 1", 13),
        (b"ACGT1 ACGT", 5),  # the spaces come after the bad character
        (b"ACGT 1ACGT\r", 6),  # CRLF line
    ],
)
def test_bad_character_column_counts_spaces_and_tabs(tmp_path, line, column):
    p = tmp_path / "col.fa"
    p.write_bytes(b">d\n" + line + b"\n")
    with pytest.raises(FastaFormatError) as ei:
        list(read_fasta(p))
    assert str(ei.value) == f"{p}: record 'd', line 2, column {column}: invalid character '1' in nucleotide sequence"


def test_bad_character_column_on_a_later_line(tmp_path):
    p = tmp_path / "later.fa"
    p.write_bytes(b">a\nACGT\n>d\nAC GT\n\nACGT ACGT\tAC-GT\n")
    with pytest.raises(FastaFormatError, match=r"record 'd', line 6, column 13: alignment gap '-'"):
        list(read_fasta(p))


def test_comment_line_inside_a_record_keeps_line_numbers(tmp_path):
    p = tmp_path / "comment.fa"
    p.write_bytes(b">a\nACGT\n;a comment\nACXT\n")
    with pytest.raises(FastaFormatError, match=r"record 'a', line 4, column 3: 'X' is not a nucleotide"):
        list(read_fasta(p))


def test_genbank_without_a_locus_line_is_an_error(tmp_path):
    """Read as GenBank (format="genbank"), a file with no LOCUS line is no records: said, not empty."""
    p = tmp_path / "notes.gb"
    p.write_text("DEFINITION  something.\nORIGIN\n        1 acgt\n")
    with pytest.raises(FastaFormatError, match=r"notes\.gb: no GenBank record \(no LOCUS line in 3 lines\)"):
        list(read_genbank(p))
    p.write_text("")
    with pytest.raises(FastaFormatError, match=r"no GenBank record \(no LOCUS line in 0 lines\)"):
        list(read_genbank(p))


def test_hard_masked_repeats_are_read_by_a_tokenizer_that_takes_unknown_letters(tmp_path):
    """RepeatMasker -x writes X over repeats: refused by default (naming the remedy), read as <unk>
    with unknown='unk' into both stores."""
    from genomamba.data.store import MemoryStore, TokenStore
    from genomamba.tokenizers.dna import DNATokenizer

    p = tmp_path / "xmask.fa"
    p.write_text(">chr1\nACGTXXXXACGT\n>chr2\nacgtxx-*ACGT\n")
    with pytest.raises(FastaFormatError, match=r"line 2, column 5: 'X' is not a nucleotide "
                                               r"\(protein sequence or hard-masked repeats\?\).*unknown='unk'"):
        MemoryStore.from_fasta(p)
    tok = DNATokenizer(unknown="unk")
    want = tok.encode("ACGTXXXXACGT")
    assert list(want[4:8]) == [tok.unk_id] * 4
    for store in (MemoryStore.from_fasta(p, tok), TokenStore.build([p], tmp_path / "x.h5", tok)):
        assert list(store.read("chr1", 0, 12)) == list(want)
        assert list(store.read("chr2", 4, 8)) == [tok.unk_id] * 4
        assert list(store.softmask("chr2", 0, 6)) == [True] * 6  # lowercase x is soft-masked like acgt
    with pytest.raises(FastaFormatError, match="binary/non-ASCII byte 0xc3"):  # still text only
        p.write_bytes(b">c\nAC\xc3\xa9GT\n")
        MemoryStore.from_fasta(p, tok)
