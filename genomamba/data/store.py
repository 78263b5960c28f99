"""On-disk token store: FASTA parsed and tokenized once, then read by slicing.

HDF5 layout (``format = "genomamba.TokenStore"``, ``format_version = 1``)::

    /                  attrs: format, format_version, tokenizer (JSON), n_contigs, total_length
                       (tokenizer: the DNA tokenizer, or a text / audio adapter's to_dict())
    /contigs/name      (c,) str      record names (unique in the store)
    /contigs/description (c,) str    full header
    /contigs/length    (c,) int64
    /contigs/source    (c,) int32    index into /sources
    /sources/path      (s,) str      source file's absolute path at build time (verify_sources from any folder)
    /sources/sha256    (s,) str      checksum of the source file's bytes
    /sources/genome    (s,) str      genome/strain id (file stem unless given)
    /seq/<i>           (length,) token ids of contig i, chunked (uint8; an adapter's dtype otherwise)
    /softmask/<i>      (k, 2) int64  [start, stop) runs of lowercase (soft-masked) bases
    /nruns/<i>         (k, 2) int64  [start, stop) runs of N tokens

Datasets are keyed by contig index, not name, because record names may contain '/'. Soft-mask
and N runs are stored as intervals: both are long runs in real genomes (chr2R: 10.5 % lowercase in
a few thousand runs), so intervals are tiny and answer "how many N in [a, b)" in O(log k)
without touching the sequence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np

from genomamba.data.fasta import FastaFormatError, file_sha256, read_records
from genomamba.errors import InvalidArgument, check_input_file
from genomamba.files import atomic_path, check_output
from genomamba.tokenizers.dna import DNATokenizer

PathLike = Union[str, os.PathLike]
STORE_FORMAT = "genomamba.TokenStore"
STORE_VERSION = 1
# 256 KiB chunks: a random 1M-token window touches at most 5 chunks (1.25 MB read), while a
# short read (1 kb classification window) decompresses/reads only one small chunk.
DEFAULT_CHUNK = 1 << 18
COMPRESSIONS = (None, "lzf", "gzip")


class Contig(NamedTuple):
    name: str
    length: int


def runs_of(flag: np.ndarray) -> np.ndarray:
    """[start, stop) intervals (int64, (k, 2)) of the True runs in a boolean array; O(L)."""
    if flag.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    f = flag.view(np.int8) if flag.dtype == np.bool_ else flag.astype(np.int8)
    d = np.diff(f, prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(d == 1).astype(np.int64)
    stops = np.flatnonzero(d == -1).astype(np.int64)
    return np.stack([starts, stops], axis=1)


def _count_in_runs(runs: np.ndarray, cum: np.ndarray, start: int, stop: int) -> int:
    """Bases of ``runs`` inside [start, stop); ``cum`` = prefix sums of run lengths. O(log k)."""
    if runs.shape[0] == 0 or stop <= start:
        return 0
    total = _covered_before(runs, cum, stop) - _covered_before(runs, cum, start)
    return int(total)


def _covered_before(runs: np.ndarray, cum: np.ndarray, x: int) -> int:
    # Bases covered by runs in [0, x): whole runs that start before x, clipped at x.
    i = int(np.searchsorted(runs[:, 0], x, side="right"))  # runs with start < x  (start <= x-1)
    if i == 0:
        return 0
    full = int(cum[i - 1])
    overshoot = int(runs[i - 1, 1]) - x
    return full - max(overshoot, 0)


def _fill_runs(runs: np.ndarray, start: int, stop: int) -> np.ndarray:
    out = np.zeros(stop - start, dtype=np.bool_)
    if runs.shape[0] == 0 or stop <= start:
        return out
    lo = int(np.searchsorted(runs[:, 1], start, side="right"))
    hi = int(np.searchsorted(runs[:, 0], stop, side="left"))
    for a, b in runs[lo:hi]:  # only the runs that intersect the window
        out[max(a, start) - start : min(b, stop) - start] = True
    return out


class _RunsIndex:
    def __init__(self, runs: np.ndarray):
        self.runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
        self.cum = np.cumsum(self.runs[:, 1] - self.runs[:, 0]) if len(self.runs) else np.zeros(0, np.int64)

    def count(self, start: int, stop: int) -> int:
        return _count_in_runs(self.runs, self.cum, start, stop)

    def fill(self, start: int, stop: int) -> np.ndarray:
        return _fill_runs(self.runs, start, stop)

    @property
    def total(self) -> int:
        return int(self.cum[-1]) if len(self.cum) else 0


ADAPTER_TYPE = "genomamba.adapter"


class StoredVocab:
    """What a store needs of a text / audio adapter whose ``to_dict()`` it recorded: ``pad_id``,
    ``vocab_size``, ``name`` (rebuild the adapter itself with ``genomamba.adapters.adapter_from_json``)."""

    def __init__(self, d: dict):
        self.record = dict(d)
        self.name, self.vocab_size, self.pad_id = d["name"], int(d["vocab_size"]), int(d["pad_id"])

    def to_dict(self) -> dict:
        return dict(self.record)

    def __repr__(self) -> str:
        return f"StoredVocab({self.name!r}, settings={self.record.get('settings')})"


def _iter_files(paths: Sequence[PathLike], tokenizer, genome_ids: Optional[Sequence[str]]):
    """One contig per file, ``"<id>:<file name>"``, tokenized by ``tokenizer.encode_file``; two files
    that would get one name (same file name in two folders) are refused, naming both."""
    seen: dict[str, PathLike] = {}
    for s, p in enumerate(paths):
        gid = genome_ids[s] if genome_ids is not None else _genome_id(p)
        name = f"{gid}:{Path(p).name}"
        if name in seen:
            raise FastaFormatError(
                f"{p}: would be stored as {name!r}, as {seen[name]} is; give each file its own genome id "
                "(--genome-ids, or genome_ids= in Python) or rename one")
        seen[name] = p
        ids = np.asarray(tokenizer.encode_file(p))
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"{p}: no tokens (an empty file)")
        yield s, name, str(p), ids, np.zeros(ids.shape[0], dtype=np.bool_)


class SequenceSource:
    """What windows and samplers need: contigs, ``read``, ``softmask``, N-run queries.

    ``TokenStore`` (on disk) and ``MemoryStore`` (in RAM) both implement it. ``tokenizer`` is the
    DNA tokenizer, or for another modality its adapter (anything with ``pad_id``; DNA's ``n_id`` and
    ``reverse_complement`` are used only when present).
    """

    tokenizer: DNATokenizer
    contigs: list[Contig]
    contig_source: np.ndarray  # (c,) int32 index into genomes
    genomes: list[str]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.contigs]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([c.length for c in self.contigs], dtype=np.int64)

    def index(self, contig: Union[int, str]) -> int:
        if isinstance(contig, (int, np.integer)):
            i = int(contig)
            if not 0 <= i < len(self.contigs):
                raise IndexError(f"contig index {i} out of range (store has {len(self.contigs)})")
            return i
        try:
            return self._name_to_index[contig]
        except KeyError:
            raise KeyError(f"no contig {contig!r} in store (first names: {self.names[:5]})") from None

    def _check(self, contig, start: int, stop: int) -> int:
        i = self.index(contig)
        n = self.contigs[i].length
        if not (0 <= start <= stop <= n):
            raise ValueError(
                f"window [{start}, {stop}) outside contig {self.contigs[i].name!r} of length {n}"
            )
        return i

    def read(self, contig, start: int, stop: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_regions(self, regions) -> list:
        """The tokens of each region (anything with ``contig``, ``start``, ``stop``), in order."""
        return [self.read(r.contig, r.start, r.stop) for r in regions]

    def softmask(self, contig, start: int, stop: int) -> np.ndarray:
        i = self._check(contig, int(start), int(stop))
        return self._soft[i].fill(int(start), int(stop))

    def n_runs(self, contig) -> np.ndarray:
        """[start, stop) int64 intervals of N in the contig."""
        return self._nruns[self.index(contig)].runs

    def n_count(self, contig, start: int, stop: int) -> int:
        i = self._check(contig, int(start), int(stop))
        return self._nruns[i].count(int(start), int(stop))

    def softmask_runs(self, contig) -> np.ndarray:
        return self._soft[self.index(contig)].runs

    def genome_of(self, contig) -> str:
        return self.genomes[int(self.contig_source[self.index(contig)])]

    def __len__(self) -> int:
        return len(self.contigs)


def _genome_id(path: PathLike) -> str:
    name = Path(path).name
    for ext in (".gz", ".bgz", ".xz", ".bz2"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    for ext in (".fasta", ".fa", ".fna", ".fas", ".gb", ".gbk", ".genbank", ".txt", ".flac", ".wav"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


def _iter_encoded(paths: Sequence[PathLike], tokenizer: DNATokenizer, prefixes: Optional[Sequence[str]]):
    seen: dict[str, str] = {}
    any_letter = getattr(tokenizer, "reads_any_letter", False)
    for s, p in enumerate(paths):
        for rec in read_records(p, any_letter=any_letter):
            name = rec.name if prefixes is None else f"{prefixes[s]}:{rec.name}"
            if name in seen:
                raise FastaFormatError(
                    f"{p}: record {rec.name!r} (line {rec.line}) has the same name as a record "
                    f"in {seen[name]}; "
                    + ("give each file its own genome id" if prefixes is not None else
                       "prefix names per file with genome ids (--genome-ids, or genome_ids= in Python)")
                )
            seen[name] = str(p)
            try:
                ids, soft = tokenizer.encode(rec.sequence, return_mask=True)
            except ValueError as e:
                raise FastaFormatError(f"{p}: record {rec.name!r} (line {rec.line}): {e}") from None
            yield s, name, rec.description, ids, soft


class MemoryStore(SequenceSource):
    """All contigs tokenized in RAM; for small corpora (shipped assets, tests, a few bacteria)."""

    def __init__(self, names, descriptions, seqs, softruns, sources, genomes, tokenizer):
        self.tokenizer = tokenizer
        self._seqs = seqs
        self.contigs = [Contig(n, int(len(s))) for n, s in zip(names, seqs)]
        self.descriptions = list(descriptions)
        self.contig_source = np.asarray(sources, dtype=np.int32)
        self.genomes = list(genomes)
        self._name_to_index = {n: i for i, n in enumerate(names)}
        self._soft = [_RunsIndex(r) for r in softruns]
        # Only DNA has an "unknown base" token; bytes and audio samples have no N runs.
        n_id = getattr(tokenizer, "n_id", None)
        self._nruns = [_RunsIndex(runs_of(s == n_id) if n_id is not None else np.zeros((0, 2), np.int64))
                       for s in seqs]

    @classmethod
    def from_fasta(cls, paths, tokenizer: Optional[DNATokenizer] = None, genome_ids=None) -> "MemoryStore":
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        tok = tokenizer or DNATokenizer()
        names, descs, seqs, soft, srcs = [], [], [], [], []
        for s, name, desc, ids, sm in _iter_encoded(paths, tok, genome_ids):
            names.append(name)
            descs.append(desc)
            seqs.append(ids)
            soft.append(runs_of(sm))
            srcs.append(s)
        genomes = list(genome_ids) if genome_ids is not None else [_genome_id(p) for p in paths]
        return cls(names, descs, seqs, soft, srcs, genomes, tok)

    @classmethod
    def from_files(cls, paths, tokenizer, genome_ids=None) -> "MemoryStore":
        """One contig per file, named ``"<genome id>:<file name>"``, tokenized by ``tokenizer.encode_file``.

        ``tokenizer`` is any object with ``encode_file(path) -> 1-D ids`` and ``pad_id`` (a modality
        adapter: bytes of a text file, mu-law samples of a clip); an empty file is refused by name.
        """
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        gids = list(genome_ids) if genome_ids is not None else [_genome_id(p) for p in paths]
        names, seqs = [], []
        for _, name, _, ids, _ in _iter_files(paths, tokenizer, gids):
            names.append(name)
            seqs.append(ids)
        soft = [np.zeros((0, 2), np.int64) for _ in seqs]
        return cls(names, [str(p) for p in paths], seqs, soft, range(len(seqs)), gids, tokenizer)

    def read(self, contig, start: int, stop: int) -> np.ndarray:
        i = self._check(contig, int(start), int(stop))
        return self._seqs[i][int(start) : int(stop)].copy()


class TokenStore(SequenceSource):
    """Read side of the HDF5 token store. Safe in DataLoader workers (the file opens per process)."""

    def __init__(self, path: PathLike):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no token store (build one with `genomamba data build`)")
        try:
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("format") != STORE_FORMAT:
                    raise ValueError(
                        f"{self.path}: not a genomamba token store (format={f.attrs.get('format')!r})"
                    )
                ver = int(f.attrs["format_version"])
                if ver > STORE_VERSION:
                    raise ValueError(
                        f"{self.path}: store format_version {ver} is newer than this reader ({STORE_VERSION})"
                    )
                tok = json.loads(f.attrs["tokenizer"])
                is_adapter = isinstance(tok, dict) and tok.get("type") == ADAPTER_TYPE
                self.tokenizer = StoredVocab(tok) if is_adapter else DNATokenizer.from_dict(tok)
                names = [x.decode() if isinstance(x, bytes) else x for x in f["contigs/name"][()]]
                self.descriptions = [
                    x.decode() if isinstance(x, bytes) else x for x in f["contigs/description"][()]
                ]
                lengths = f["contigs/length"][()].astype(np.int64)
                self.contig_source = f["contigs/source"][()].astype(np.int32)
                self.source_paths = [x.decode() for x in f["sources/path"][()]]
                self.source_sha256 = [x.decode() for x in f["sources/sha256"][()]]
                self.genomes = [x.decode() for x in f["sources/genome"][()]]
                self._soft = [_RunsIndex(f[f"softmask/{i}"][()]) for i in range(len(names))]
                self._nruns = [_RunsIndex(f[f"nruns/{i}"][()]) for i in range(len(names))]
        except OSError as e:
            raise ValueError(f"{self.path}: cannot open as HDF5 token store: {e}") from None
        self.contigs = [Contig(n, int(n_)) for n, n_ in zip(names, lengths)]
        self._name_to_index = {n: i for i, n in enumerate(names)}
        self._h5 = None
        self._pid = None
        self._ds: dict[int, object] = {}

    def _dataset(self, i: int):
        import h5py

        if self._h5 is None or self._pid != os.getpid():
            # HDF5 handles must not cross fork(): reopen in each DataLoader worker.
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._ds = {}
        ds = self._ds.get(i)
        if ds is None:
            ds = self._ds[i] = self._h5[f"seq/{i}"]
        return ds

    def read(self, contig, start: int, stop: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Token ids of ``contig[start:stop]`` (uint8 for DNA). ``out`` (stop-start) avoids an allocation."""
        start, stop = int(start), int(stop)
        i = self._check(contig, start, stop)
        ds = self._dataset(i)
        if out is None:
            out = np.empty(stop - start, dtype=ds.dtype)
        if stop > start:
            ds.read_direct(out, np.s_[start:stop], np.s_[0 : stop - start])
        return out

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
        self._h5, self._ds = None, {}

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_h5"], d["_pid"], d["_ds"] = None, None, {}
        return d

    def verify_sources(self) -> list[str]:
        """Recompute the sources' SHA-256; returns the paths whose bytes changed (or vanished)."""
        bad = []
        for p, h in zip(self.source_paths, self.source_sha256):
            if not Path(p).exists() or file_sha256(p) != h:
                bad.append(p)
        return bad

    @staticmethod
    def build(
        fasta_paths: Union[PathLike, Iterable[PathLike]],
        out_path: PathLike,
        tokenizer: Optional[DNATokenizer] = None,
        genome_ids: Optional[Sequence[str]] = None,
        chunk: int = DEFAULT_CHUNK,
        compression: Optional[str] = None,
        replace: bool = True,
    ) -> "TokenStore":
        """Parse + tokenize FASTA/GenBank files into an HDF5 store at ``out_path``.

        ``tokenizer`` may instead be a text / audio adapter (anything with ``encode_file`` and
        ``to_dict``): then each file is one contig of its tokens (bytes, mu-law samples).

        Written to a temporary file beside ``out_path`` and renamed at the end, so a crash never leaves a store
        that looks complete. One record is held in memory at a time.

        Args:
            genome_ids: one id per file; contig names become ``"<id>:<record>"`` (needed when
                several files share record names). Default: file stem, names unprefixed.
            compression: ``None`` (fastest reads) or an h5py filter: ``"lzf"`` or ``"gzip"``.
            replace: replace an existing ``out_path`` (else ``OutputExistsError``, checked before
                the work and again, atomically, when the store is committed). ``out_path`` is never
                allowed to be one of the inputs.
        """
        import h5py

        paths = [fasta_paths] if isinstance(fasta_paths, (str, os.PathLike)) else list(fasta_paths)
        if not paths:
            raise ValueError("TokenStore.build: no input files")
        if genome_ids is not None and len(genome_ids) != len(paths):
            raise InvalidArgument(f"genome_ids has {len(genome_ids)} entries for {len(paths)} files")
        if compression not in COMPRESSIONS:
            raise InvalidArgument(f"compression: expected one of {', '.join(map(str, COMPRESSIONS))}, "
                                  f"got {compression!r}")
        for p in paths:
            check_input_file(p, "sequence file")
        out_path = check_output(out_path, paths, "out_path", force=replace)
        tok = tokenizer or DNATokenizer()
        files = hasattr(tok, "encode_file")
        records = _iter_files(paths, tok, genome_ids) if files else _iter_encoded(paths, tok, genome_ids)
        names, descs, lengths, sources = [], [], [], []
        str_dt = h5py.string_dtype("utf-8")
        with atomic_path(out_path, replace=replace) as tmp:
            with h5py.File(tmp, "w") as f:
                for s, name, desc, ids, soft in records:
                    i = len(names)
                    n = int(ids.shape[0])
                    f.create_dataset(
                        f"seq/{i}", data=ids, chunks=(max(1, min(chunk, n)),), compression=compression
                    )
                    f.create_dataset(f"softmask/{i}", data=runs_of(soft))
                    n_id = getattr(tok, "n_id", None)
                    f.create_dataset(f"nruns/{i}", data=runs_of(ids == n_id) if n_id is not None
                                     else np.zeros((0, 2), np.int64))
                    names.append(name)
                    descs.append(desc)
                    lengths.append(n)
                    sources.append(s)
                if not names:
                    raise FastaFormatError(f"no records in {[str(p) for p in paths]}")
                f.create_dataset("contigs/name", data=np.array(names, dtype=object), dtype=str_dt)
                f.create_dataset("contigs/description", data=np.array(descs, dtype=object), dtype=str_dt)
                f.create_dataset("contigs/length", data=np.array(lengths, dtype=np.int64))
                f.create_dataset("contigs/source", data=np.array(sources, dtype=np.int32))
                f.create_dataset(
                    "sources/path", data=np.array([os.path.abspath(p) for p in paths], dtype=object), dtype=str_dt
                )
                f.create_dataset(
                    "sources/sha256",
                    data=np.array([file_sha256(p) for p in paths], dtype=object),
                    dtype=str_dt,
                )
                gids = list(genome_ids) if genome_ids is not None else [_genome_id(p) for p in paths]
                f.create_dataset("sources/genome", data=np.array(gids, dtype=object), dtype=str_dt)
                f.attrs["format"] = STORE_FORMAT
                f.attrs["format_version"] = STORE_VERSION
                f.attrs["tokenizer"] = json.dumps(tok.to_dict())
                f.attrs["n_contigs"] = len(names)
                f.attrs["total_length"] = int(np.sum(np.array(lengths, dtype=np.int64)))
        return TokenStore(out_path)
