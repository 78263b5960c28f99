"""FASTA / GenBank readers: streaming, strict, every error names file, record and line.

Accepted FASTA (documented behaviour, each case covered by ``tests/data/test_fasta_corpus.py``):

- plain, gzip, BGZF (bgzip) and xz (and bzip2), detected by magic bytes, not by extension;
- any line width, one very long line, LF or CRLF endings, a UTF-8 BOM, trailing spaces/tabs,
  blank lines anywhere, ``;`` comment lines (old FASTA spec, skipped);
- upper/lower case (kept as is in ``.sequence``: soft-masking is information), ``N`` runs, ``U``,
  IUPAC ambiguity codes ``RYSWKMBDHV``; ``*`` (translation stop) is *not* accepted.

``FastaFormatError`` (a ``ValueError``) for: an empty file, text before the first ``>`` (no
header; a FASTQ file is named as such), binary or non-UTF-8 content, protein or other
non-nucleotide letters, alignment gaps, a ``>`` with no name, a header with no sequence, duplicate
record names, classic-Mac CR-only line endings, a truncated/corrupt gzip/xz/bzip2 stream. A bad
character is reported at its line and its 1-based column in the line as written (spaces and tabs
count). With ``any_letter=True`` (what a store built with ``DNATokenizer(unknown="unk")`` asks for)
every printable ASCII character is sequence (``X`` of hard-masked repeats, gaps), left to the tokenizer.

GenBank goes through ``Bio.SeqIO``; a record cut short by the end of the file, or whose sequence
length differs from its LOCUS line, is an error too (``read_genbank``).

``.name`` is the first whitespace-separated word of the header, ``.description`` the whole header
text (the same as ``Bio.SeqIO``'s ``id`` and ``description``).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import itertools
import logging
import lzma
import os
import re
import stat
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Optional, Union

from genomamba.errors import InputFileError, UserError, check_input_file
from genomamba.files import atomic_path

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

NUCLEOTIDES = b"ACGTUNRYSWKMBDHVacgtunryswkmbdhv"
_WHITESPACE = b" \t\r\n\x0b\x0c"
# Letters that occur in protein but never in nucleotide FASTA: the first one seen names the problem.
_PROTEIN_ONLY = set(b"EFILPQXZJOefilpqxzjo*")
_BOM = b"\xef\xbb\xbf"
# what a sequence line may hold when the caller takes any letter (a tokenizer mapping unknown
# characters to <unk>): printable ASCII
_PRINTABLE = bytes(range(0x21, 0x7F))


class FastaFormatError(UserError, ValueError):
    """Malformed sequence file. The message names the file, the record and the line."""


@dataclass
class FastaRecord:
    """One sequence record. ``line`` is the 1-based line number of its header."""

    name: str
    description: str
    sequence: str
    line: int = 0

    @property
    def id(self) -> str:  # Bio.SeqIO spelling
        return self.name

    def __len__(self) -> int:
        return len(self.sequence)


def sniff_compression(path: PathLike) -> str:
    """``"gzip"``, ``"bgzf"``, ``"xz"``, ``"bz2"`` or ``"plain"`` from the first bytes of the file."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    if head[:2] == b"\x1f\x8b":
        # BGZF = gzip member with FEXTRA and a 'BC' subfield (SAM spec, section 4.1).
        if len(head) >= 16 and head[3] & 4 and head[12:14] == b"BC":
            return "bgzf"
        return "gzip"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"BZh":
        return "bz2"
    return "plain"


def open_binary(path: PathLike) -> IO[bytes]:
    """Open a (possibly compressed) file for binary reading; compression from magic bytes."""
    kind = sniff_compression(path)
    if kind in ("gzip", "bgzf"):
        return gzip.open(path, "rb")  # BGZF is valid multi-member gzip
    if kind == "xz":
        return lzma.open(path, "rb")
    if kind == "bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes as stored (compressed bytes for compressed files)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


_DECOMPRESS_ERRORS = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, OSError)


def read_fasta(path: PathLike, allow_duplicates: bool = False, any_letter: bool = False) -> Iterator[FastaRecord]:
    """Stream the records of a FASTA file (plain/gzip/bgzip/xz/bz2), validating as it goes.
    ``any_letter``: sequence lines may hold any printable ASCII character (for a tokenizer that maps
    what is not a nucleotide to ``<unk>``), not only nucleotides and IUPAC codes.

    Raises:
        FastaFormatError: see the module docstring for every case.
    """
    path = Path(path)
    check_input_file(path, "FASTA file")
    _check_rereadable(path)
    kind = sniff_compression(path)
    fh = open_binary(path)
    state = {"line": 0, "record": None}
    try:
        yield from _parse(fh, str(path), state, allow_duplicates, _PRINTABLE if any_letter else NUCLEOTIDES)
    except _DECOMPRESS_ERRORS as e:
        if isinstance(e, FileNotFoundError):
            raise
        where = f"record {state['record']!r}, " if state["record"] else ""
        raise FastaFormatError(
            f"{path}: truncated or corrupt {kind} stream ({where}after line {state['line']}): {e}"
        ) from None
    finally:
        fh.close()


def _parse(fh: IO[bytes], src: str, state: dict, allow_duplicates: bool,
           letters: bytes = NUCLEOTIDES) -> Iterator[FastaRecord]:
    seen: dict[str, int] = {}
    name = desc = None
    header_line = 0
    chunks: list[bytes] = []  # stripped sequence lines of the current record, blank ones as b""
    spaced: dict[int, bytes] = {}  # chunk index -> raw line, for lines with spaces before or among the bases
    lineno = 0
    any_content = False

    def finish() -> FastaRecord:
        seq = b"".join(chunks)
        if not seq:
            raise FastaFormatError(f"{src}: record {name!r} (header at line {header_line}) has no sequence")
        if seq.translate(None, letters):
            _raise_bad_char(src, name, header_line, chunks, spaced, letters)
        if not allow_duplicates:
            if name in seen:
                raise FastaFormatError(
                    f"{src}: duplicate record name {name!r} at line {header_line} "
                    f"(first seen at line {seen[name]})"
                )
            seen[name] = header_line
        return FastaRecord(name, desc, seq.decode("ascii"), header_line)

    for raw in fh:
        lineno += 1
        state["line"] = lineno
        if lineno == 1:
            if raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            elif raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
                raise FastaFormatError(
                    f"{src}: line 1: UTF-16 text is not supported; save the file as ASCII/UTF-8"
                )
        if raw[:1] == b">":
            if name is not None:
                yield finish()
            header_bytes = raw[1:].strip()
            if b"\r" in header_bytes:
                raise FastaFormatError(
                    f"{src}: line {lineno}: bare CR line endings (classic Mac) are not supported"
                )
            try:
                header = header_bytes.decode("utf-8")
            except UnicodeDecodeError:
                raise FastaFormatError(
                    f"{src}: line {lineno}: header is not UTF-8 text (binary file?)"
                ) from None
            if "\x00" in header:
                raise FastaFormatError(f"{src}: line {lineno}: NUL byte in header (binary file?)")
            if not header:
                raise FastaFormatError(f"{src}: line {lineno}: header '>' has no record name")
            name, desc = header.split(None, 1)[0], header
            header_line = lineno
            state["record"] = name
            chunks = []
            spaced = {}
            any_content = True
            continue
        if raw[:1] == b";":  # old-style comment line
            if name is not None:
                chunks.append(b"")  # keeps the line numbers of the lines after it
            continue
        stripped = raw.translate(None, _WHITESPACE)
        if name is None:
            if not stripped:
                continue
            _raise_no_header(src, lineno, raw, fh)
        if not raw.startswith(stripped):  # spaces before or among the bases: columns differ from `stripped`
            spaced[len(chunks)] = raw
        chunks.append(stripped)
    if name is not None:
        yield finish()
    elif not any_content:
        raise FastaFormatError(f"{src}: empty file (no '>' header, no sequence)")


def _raise_no_header(src: str, lineno: int, raw: bytes, fh: IO[bytes]) -> None:
    if b"\x00" in raw:
        raise FastaFormatError(f"{src}: line {lineno}: binary content (NUL bytes); not a FASTA file")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise FastaFormatError(f"{src}: line {lineno}: binary/non-UTF-8 content; not a FASTA file") from None
    if text.startswith("LOCUS"):
        raise FastaFormatError(f"{src}: line {lineno}: this is GenBank, not FASTA (read it with format 'auto')")
    if text.startswith("@"):
        # FASTQ: '@name', bases, '+' separator, qualities. Only this error path reads ahead.
        following = list(itertools.islice(fh, 2))
        if len(following) == 2 and following[1][:1] == b"+":
            raise FastaFormatError(
                f"{src}: line {lineno}: this looks like FASTQ ('@' header, '+' separator at line {lineno + 2}); "
                f"genomamba reads FASTA and GenBank, not FASTQ: convert it to FASTA first"
            )
    raise FastaFormatError(
        f"{src}: line {lineno}: sequence data before the first '>' header (no FASTA header): {text[:40]!r}"
    )


def _raise_bad_char(src: str, name: str, header_line: int, chunks: list[bytes], spaced: dict[int, bytes],
                    letters: bytes = NUCLEOTIDES) -> None:
    # Slow path, taken only on error: find the first offending line and its column in the line as written.
    for i, chunk in enumerate(chunks):
        if chunk.translate(None, letters):
            line = spaced.get(i, chunk)
            col = next(j for j, b in enumerate(line) if b not in letters and b not in _WHITESPACE)
            lineno = header_line + 1 + i
            _raise_bad_byte(f"{src}: record {name!r}, line {lineno}, column {col + 1}", line[col])
    raise AssertionError("unreachable: a bad byte was detected but not located")


def _raise_bad_byte(where: str, byte: int) -> None:
    if byte == 0 or byte >= 0x80 or (byte < 0x20):
        raise FastaFormatError(f"{where}: binary/non-ASCII byte 0x{byte:02x} in sequence")
    ch = chr(byte)
    if ch in "-.":
        raise FastaFormatError(f"{where}: alignment gap {ch!r}; remove gaps (this reader takes unaligned DNA)")
    if byte in _PROTEIN_ONLY:
        hint = " or hard-masked repeats" if ch in "Xx" else ""
        raise FastaFormatError(f"{where}: {ch!r} is not a nucleotide (protein sequence{hint}?); a tokenizer "
                               "with unknown='unk' reads such letters as <unk>")
    raise FastaFormatError(f"{where}: invalid character {ch!r} in nucleotide sequence")


# --------------------------------------------------------------------------- GenBank via biopython
def sniff_format(path: PathLike) -> str:
    """``"fasta"`` or ``"genbank"`` from the first non-blank line (compression handled)."""
    with open_binary(path) as fh:
        try:
            for raw in fh:
                s = raw.lstrip(_BOM).strip()
                if not s:
                    continue
                if s.startswith(b"LOCUS"):
                    return "genbank"
                return "fasta"
        except _DECOMPRESS_ERRORS as e:
            raise FastaFormatError(f"{path}: truncated or corrupt compressed stream: {e}") from None
    return "fasta"


# Biopython's GenBank parser only warns when sequence data is lost or inconsistent and then carries
# on with what it has; these warnings are errors here. The others (feature tables, LOCUS layout,
# qualifier quoting) leave the sequence intact.
_GENBANK_SEQUENCE_WARNINGS = ("Premature end of file in sequence data", "Expected sequence length")


class _GenBankLines:
    """The text handle given to ``Bio.SeqIO``: counts lines and remembers the current record's LOCUS
    line, so that an error can name the record and the line even when Biopython cannot."""

    def __init__(self, fh: IO[str]):
        self._fh = fh
        self.line = 0  # lines read so far
        self.record = 0  # 1-based index of the record being read
        self.locus_name = ""
        self.locus_line = 0
        self.eof = False

    def read(self, size: int = -1) -> str:
        return self._fh.read(size)

    def readline(self) -> str:
        text = self._fh.readline()
        self.eof = not text
        if text:
            self.line += 1
            if text.startswith("LOCUS"):
                self.record += 1
                self.locus_name = (text.split() + [""])[1]
                self.locus_line = self.line
        return text

    def where(self) -> str:
        """``record N 'NAME' (LOCUS at line L): `` for the record being read, ``""`` before the first."""
        if not self.record:
            return ""
        return f"record {self.record} {self.locus_name!r} (LOCUS at line {self.locus_line}): "

    def truncated(self) -> str:
        return f"the file ends at line {self.line}, before the record's closing '//': truncated file?"


def read_genbank(path: PathLike) -> Iterator[FastaRecord]:
    """GenBank records through ``Bio.SeqIO`` (the format is too rich to hand-parse), validated like FASTA.

    A record cut short (the file ends before its ``//``) or whose sequence length differs from its
    LOCUS line is a ``FastaFormatError``, as is anything Biopython cannot parse.
    """
    from Bio import BiopythonParserWarning, SeqIO

    path = Path(path)
    check_input_file(path, "GenBank file")
    seen: dict[str, tuple[int, int]] = {}
    with open_binary(path) as fhb:
        lines = _GenBankLines(io.TextIOWrapper(fhb, encoding="utf-8", errors="strict"))
        try:
            records = SeqIO.parse(lines, "genbank")
            while True:
                # Only around the parsing itself: the warning filters are global, and the caller
                # runs between records.
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    for message in _GENBANK_SEQUENCE_WARNINGS:
                        warnings.filterwarnings("error", message=re.escape(message), category=BiopythonParserWarning)
                    rec = next(records, None)
                for w in caught:  # Biopython's other warnings, said again with the file and record
                    warnings.warn(f"{path}: {lines.where()}{w.message}", w.category, stacklevel=2)
                if rec is None:
                    if not lines.record:  # Biopython reads a file without a LOCUS line as no records
                        raise FastaFormatError(f"{path}: no GenBank record (no LOCUS line in {lines.line} lines)")
                    break
                where = f"{path}: record {lines.record} {rec.id!r} (LOCUS at line {lines.locus_line})"
                try:
                    seq = bytes(rec.seq)
                except Exception as e:  # Bio's UndefinedSequenceError: a CONTIG-only record
                    raise FastaFormatError(f"{where} has no sequence ({e})") from None
                if not seq:
                    raise FastaFormatError(f"{where} has no sequence")
                if rec.id in seen:
                    first, first_line = seen[rec.id]
                    raise FastaFormatError(
                        f"{where}: duplicate record name {rec.id!r} (first seen as record {first}, "
                        f"LOCUS at line {first_line})"
                    )
                seen[rec.id] = (lines.record, lines.locus_line)
                if seq.translate(None, NUCLEOTIDES):
                    pos = next(j for j, b in enumerate(seq) if b not in NUCLEOTIDES)
                    _raise_bad_byte(f"{where}, base {pos + 1} of the sequence", seq[pos])
                yield FastaRecord(rec.id, rec.description, seq.decode("ascii"), lines.locus_line)
        except FastaFormatError:
            raise
        except BiopythonParserWarning as w:
            text = str(w)
            length = re.match(r"Expected sequence length (\d+), found (\d+)", text)
            if length:
                why = (
                    f"the LOCUS line says {length[1]} bp but the sequence has {length[2]} bases "
                    f"(record ends at line {lines.line}); truncated or edited record?"
                )
            elif text.startswith(_GENBANK_SEQUENCE_WARNINGS[0]):
                why = lines.truncated()
            else:
                why = text
            raise FastaFormatError(f"{path}: {lines.where()}{why}") from None
        except (ValueError, UnicodeDecodeError) + _DECOMPRESS_ERRORS as e:
            if lines.eof and lines.record and str(e).startswith("Premature end"):  # Bio: "... of file", "... of line"
                raise FastaFormatError(f"{path}: {lines.where()}{lines.truncated()}") from None
            raise FastaFormatError(
                f"{path}: {lines.where()}malformed GenBank file at line {lines.line}: {e}"
            ) from None


def _check_rereadable(path: Path) -> None:
    """Sequence files are opened more than once (the compression and the format are sniffed first):
    a pipe or a device would reach the parser empty."""
    mode = os.stat(path).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        raise InputFileError(f"{path}: a pipe or device can be read only once and sequence files are read "
                             "more than once; write it to a file first (compressed files are read as they are)")


def read_records(path: PathLike, format: str = "auto", any_letter: bool = False) -> Iterator[FastaRecord]:
    """FASTA or GenBank records (``format="auto"`` sniffs the first line); ``any_letter`` as in
    :func:`read_fasta`."""
    check_input_file(path, "sequence file")
    _check_rereadable(Path(path))
    fmt = sniff_format(path) if format == "auto" else format
    if fmt == "fasta":
        return read_fasta(path, any_letter=any_letter)
    if fmt in ("genbank", "gb"):
        return read_genbank(path)
    raise ValueError(f"unknown sequence format {format!r}; use 'auto', 'fasta' or 'genbank'")


# --------------------------------------------------------------------------- indexed access (pyfaidx)
class IndexedFasta:
    """Random access to one FASTA file through pyfaidx (``.fai``, plus ``.gzi`` for BGZF).

    Plain gzip and xz cannot be seeked: they are converted once to BGZF (``<name>.bgz`` in
    ``cache_dir``, default beside the file) with a logged notice, then indexed.
    """

    def __init__(self, path: PathLike, cache_dir: Optional[PathLike] = None):
        import pyfaidx

        path = Path(path)
        check_input_file(path, "FASTA file")
        kind = sniff_compression(path)
        # pyfaidx recognises BGZF by the file name only, so a BGZF file named otherwise is copied.
        if kind in ("gzip", "xz", "bz2") or (kind == "bgzf" and not path.name.endswith((".gz", ".bgz"))):
            path = to_bgzf(path, cache_dir)
        self.path = path
        drop_stale_indexes(path)
        try:
            self._fa = pyfaidx.Fasta(str(path), sequence_always_upper=False, rebuild=True, build_index=True)
        except (pyfaidx.FastaIndexingError, UnicodeDecodeError, ValueError) as e:
            raise FastaFormatError(f"{path}: cannot index: {e}") from None

    @property
    def names(self) -> list[str]:
        return list(self._fa.keys())

    def length(self, name: str) -> int:
        return len(self._fa[name])

    def fetch(self, name: str, start: int, stop: int) -> str:
        """Bases ``[start, stop)`` (0-based, half-open) of record ``name``, checked as
        :func:`read_fasta` checks them (the index itself takes any byte of a sequence line as a base)."""
        if name not in self._fa:
            raise KeyError(f"{self.path}: no record {name!r}")
        start, stop, length = int(start), int(stop), self.length(name)
        if not 0 <= start <= stop <= length:
            raise ValueError(f"{self.path}: record {name!r}: [{start}, {stop}) is not inside its {length} bases")
        seq = self._fa[name][start:stop].seq
        raw = seq.encode("ascii", "replace")
        if raw.translate(None, NUCLEOTIDES):
            pos = next(i for i, b in enumerate(raw) if b not in NUCLEOTIDES)
            if raw[pos] in _WHITESPACE:
                raise FastaFormatError(f"{self.path}: record {name!r}, base {start + pos}: a space inside a "
                                       "sequence line, which indexed access cannot skip; remove it")
            _raise_bad_byte(f"{self.path}: record {name!r}, base {start + pos}", raw[pos])
        return seq

    def close(self) -> None:
        self._fa.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _changed_at(path: Path) -> int:
    """When the file's content last changed, in ns: the later of mtime and ctime. ``cp -p`` and
    ``touch -d`` set an old mtime, but the inode's ctime still says when it was written."""
    st = path.stat()
    return max(st.st_mtime_ns, st.st_ctime_ns)


def index_is_fresh(index: Path, data: Path) -> bool:
    """An index (``.fai``, ``.gzi``, a converted copy) describes ``data`` only if it was written after
    ``data`` last changed; a newer mtime alone proves nothing (copies keep old mtimes)."""
    try:  # strictly later: a file system's clock tick can give both the same time stamp
        return index.stat().st_mtime_ns > _changed_at(data)
    except FileNotFoundError:
        return False


def drop_stale_indexes(path: PathLike) -> list[Path]:
    """Remove ``path``'s ``.fai`` / ``.gzi`` when they predate its last change; the index is then rebuilt."""
    path = Path(path)
    dropped = []
    for ext in (".fai", ".gzi"):
        idx = path.with_name(path.name + ext)
        if idx.exists() and not index_is_fresh(idx, path):
            log.warning("%s is older than %s's last change; rebuilding it", idx, path)
            try:
                idx.unlink()
                dropped.append(idx)
            except OSError as e:
                raise UserError(f"{idx}: stale index of {path} and cannot be removed ({e.strerror})") from None
    return dropped


def to_bgzf(path: PathLike, cache_dir: Optional[PathLike] = None) -> Path:
    """Recompress a gzip/xz/bz2/plain FASTA as BGZF (seekable), once; returns the new path."""
    from Bio import bgzf

    path = Path(path)
    out_dir = Path(cache_dir) if cache_dir else path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (path.name + ".bgz")
    if out.exists() and index_is_fresh(out, path):
        return out
    log.warning(
        "%s is %s-compressed and not seekable; converting to BGZF at %s", path, sniff_compression(path), out
    )
    with atomic_path(out) as tmp, open_binary(path) as src, bgzf.BgzfWriter(str(tmp), "wb") as dst:
        try:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
        except _DECOMPRESS_ERRORS as e:
            raise FastaFormatError(f"{path}: truncated or corrupt stream: {e}") from None
    return out
