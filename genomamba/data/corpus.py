"""A pretraining corpus from a list of typed *sources*: one token store plus train/val/test splits.

A source is one of five kinds (as YAML mappings; ``parse_source`` turns a mapping into its class)::

    {assets: pretrain}                    # shipped LM slices (U. maydis train/val/test, fly, lambda)
    {assets: genomes}                     # shipped 5-species slices, split by strain
    {assets: text}                        # shipped KJV slice (last 10 % test, 5 % before it val)
    {assets: digits}                      # shipped spoken-digit clips, split by voice / engine
    {fetch: umaydis}                      # fetched dataset with its own split file (chr21-23 test)
    {fetch: bacteria, splits: [train]}    # keep only the training strains
    {fetch: text, files: kjv.txt, split: {by: tail, val_frac: 0.02, test_frac: 0.1}}
    {fetch: digits}                       # fetched labelled clips: each clip's split
    {manifest: path/to/species.yaml}      # any labelled-file manifest (YAML / TSV / CSV, or a folder)
    {path: genome.fa.gz, split: train}    # one FASTA, all of it in one split
    {path: genome.fa.gz, split: {by: contig, val: [chrX], test: ["chr2[123]"]}}
    {path: genome.fa.gz, split: {by: region, val_frac: 0.05, test_frac: 0.05, block: 100000}}
    {files: "books/*.txt", split: {by: tail, test_frac: 0.1}}   # files / globs ($VARS and ~ expanded)
    {files: [a.txt, b.txt.gz], split: test}

Split rules: a split name (the whole file), ``by: contig`` (records named as they are, or by
full-match regexes; one that matches no record is an error), ``by: region`` (seeded random blocks,
drawn per record, so the other files of a corpus never change them) and ``by: tail`` (the last
``test_frac`` of every file or record is test, the ``val_frac`` before it val, the rest train: the
usual held-out split of a text).

The files are tokenized by what ``build_corpus`` is given: the DNA tokenizer reads FASTA / GenBank
records; a modality adapter (anything with ``encode_file``) reads each file as one contig (the
bytes of a text, the mu-law samples of a clip).

Every kind takes ``split`` (a split name, or a rule mapping that overrides the source's own
splits) and ``splits`` (keep only these splits). Every source is tokenized into one in-RAM store
(contigs named ``"<source id>:<record>"``), the splits are assembled per source, and the result is
checked with ``assert_no_overlap``: no evaluation base lies inside any region a training window
can be drawn from.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import yaml

from genomamba.data.fetch import asset_files, assets_dir, default_assets, fetch
from genomamba.data.species import MANIFEST_NAMES, SpeciesManifest
from genomamba.data.store import MemoryStore
from genomamba.data.windows import Region, Splits, split_by_region
from genomamba.errors import UserError, check_input_file
from genomamba.files import read_text
from genomamba.tokenizers.dna import DNATokenizer

SPLIT_NAMES = ("train", "val", "test")
ASSET_SECTIONS = ("pretrain", "genomes", "text", "digits")
SPLIT_RULE_KEYS = ("by", "val", "test", "val_frac", "test_frac", "block", "seed")
SPLIT_BY = ("contig", "region", "tail")
# A text asset without a split of its own: the usual held-out tail.
TEXT_ASSET_SPLIT = {"by": "tail", "val_frac": 0.05, "test_frac": 0.1}
# What a fetched folder holds besides its data files.
_NOT_DATA = ("provenance.json", "split.yaml", *MANIFEST_NAMES)

SplitRule = Union[str, dict]


class CorpusError(UserError, ValueError):
    """A malformed corpus source; the message names the source and the key."""


def _check_split(split: Optional[SplitRule], splits: Optional[list]) -> None:
    if isinstance(split, str) and split not in SPLIT_NAMES:
        raise CorpusError(f"split: must be one of {SPLIT_NAMES} or a mapping, got {split!r}")
    if isinstance(split, dict):
        unknown = sorted(set(split) - set(SPLIT_RULE_KEYS))
        if unknown:
            raise CorpusError(f"split: unknown key(s) {unknown}; known: {list(SPLIT_RULE_KEYS)}")
        if split.get("by", "contig") not in SPLIT_BY:
            raise CorpusError(f"split.by: must be one of {list(SPLIT_BY)}, got {split.get('by')!r}")
        for key in ("val_frac", "test_frac"):
            v = split.get(key, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise CorpusError(f"split.{key}: expected a fraction in [0, 1), got {v!r}")
        if split.get("val_frac", 0.0) + split.get("test_frac", 0.0) >= 1:
            raise CorpusError("split: val_frac + test_frac must leave something to train on (< 1)")
    elif split is not None and not isinstance(split, str):
        raise CorpusError(f"split: expected a split name or a mapping, got {split!r}")
    if splits is not None:
        if not isinstance(splits, list):
            raise CorpusError(f"splits: expected a list of split names, got {splits!r}")
        bad = [s for s in splits if s not in SPLIT_NAMES]
        if bad:
            raise CorpusError(f"splits: unknown split(s) {bad}; known: {SPLIT_NAMES}")


class _Source:
    """What every source kind shares: validation and a YAML-ready mapping of the fields that are set."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("assets", "fetch", "manifest", "path", "id", "dest") and v is not None \
                    and not isinstance(v, str):
                raise CorpusError(f"{f.name}: expected a string, got {v!r}")
            if f.name == "files" and v is not None and not (
                    isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))):
                raise CorpusError(f"files: expected a path / glob or a non-empty list of them, got {v!r}")
        _check_split(self.split, self.splits)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class AssetsSource(_Source):
    """Genome slices shipped in the package: ``pretrain`` (LM corpus) or ``genomes`` (5 species)."""

    assets: str
    split: Optional[SplitRule] = None
    splits: Optional[list] = None

    def __post_init__(self):
        super().__post_init__()
        if self.assets not in ASSET_SECTIONS:
            raise CorpusError(f"assets: must be one of {ASSET_SECTIONS}, got {self.assets!r}")


@dataclass(frozen=True)
class FetchSource(_Source):
    """A named dataset of ``genomamba data fetch`` (fetched on first use into ``dest`` or the cache)."""

    fetch: str
    split: Optional[SplitRule] = None
    splits: Optional[list] = None
    id: Optional[str] = None
    dest: Optional[str] = None
    files: Optional[Union[str, list]] = None  # globs inside the fetched folder (default: every data file)


@dataclass(frozen=True)
class ManifestSource(_Source):
    """A species manifest: a path, ``assets`` (the shipped one) or ``fetch:NAME``."""

    manifest: str
    split: Optional[SplitRule] = None
    splits: Optional[list] = None


@dataclass(frozen=True)
class PathSource(_Source):
    """One FASTA / GenBank file (plain or compressed); all of it in ``split`` (default train)."""

    path: str
    split: Optional[SplitRule] = None
    splits: Optional[list] = None
    id: Optional[str] = None


@dataclass(frozen=True)
class FilesSource(_Source):
    """Files named by paths or globs (``$VARS`` and ``~`` expanded); each is one source, all in ``split``
    (default train). Read by the corpus's tokenizer: FASTA for DNA, any file for an adapter."""

    files: Union[str, list]
    split: Optional[SplitRule] = None
    splits: Optional[list] = None


Source = Union[AssetsSource, FetchSource, ManifestSource, PathSource, FilesSource]
SOURCE_KINDS = {"assets": AssetsSource, "fetch": FetchSource, "manifest": ManifestSource, "path": PathSource,
                "files": FilesSource}


def parse_source(src, where: str = "data.sources[0]") -> Source:
    """A YAML mapping -> its typed source (a typed source passes through); errors name ``where``."""
    if isinstance(src, tuple(SOURCE_KINDS.values())):
        return src
    if not isinstance(src, dict):
        raise CorpusError(f"{where}: expected a mapping like {{path: genome.fa, split: train}}, got {src!r}")
    kinds = [k for k in SOURCE_KINDS if k in src]
    if "fetch" in kinds and "files" in kinds:  # files: of a fetch source are globs inside its folder
        kinds.remove("files")
    if len(kinds) != 1:
        unknown = sorted(set(src) - {f.name for c in SOURCE_KINDS.values() for f in dataclasses.fields(c)})
        hint = f" (unknown key(s) {unknown})" if unknown else ""
        raise CorpusError(f"{where}: give exactly one of {' / '.join(SOURCE_KINDS)}, got {kinds or 'none'}{hint}")
    cls = SOURCE_KINDS[kinds[0]]
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(src) - set(known))
    if unknown:
        raise CorpusError(f"{where}: unknown key(s) {unknown} for a {kinds[0]} source; known: {known}")
    try:
        return cls(**src)
    except CorpusError as e:
        raise CorpusError(f"{where}.{e}") from None


def resolve_species_manifest(spec: Union[str, Path]) -> Path:
    """``assets`` -> the shipped manifest; ``fetch:NAME`` -> fetched dataset's manifest; else a path."""
    s = str(spec)
    if s == "assets":
        return default_assets()
    if s == "assets:digits":
        return assets_dir() / "digits"
    if s.startswith("fetch:"):
        folder = fetch(s.split(":", 1)[1])
        found = [folder / n for n in MANIFEST_NAMES if (folder / n).is_file()]
        if not found:
            raise CorpusError(f"manifest {s!r}: the fetched dataset has none of {list(MANIFEST_NAMES)} ({folder})")
        return found[0]
    p = Path(s).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"manifest {s!r}: no such file")
    return p


def _or(value, default):
    return default if value is None else value


def expand_files(patterns, where: str, root: Optional[Path] = None) -> list[Path]:
    """Paths / globs (``$VARS``, ``~``; relative to ``root`` if given) -> the files, in order, each once."""
    out: list[Path] = []
    for pat in [patterns] if isinstance(patterns, str) else list(patterns):
        text = os.path.expanduser(os.path.expandvars(pat))
        if root is not None and not os.path.isabs(text):
            text = str(root / text)
        if glob.has_magic(text):
            hits = sorted(Path(h) for h in glob.glob(text, recursive=True) if Path(h).is_file())
            if not hits:
                raise FileNotFoundError(f"{where}: {pat!r} matches no file")
        else:
            p = Path(text)
            if p.is_dir():
                raise CorpusError(f"{where}: {pat!r} is a directory, not a file (give a glob such as {pat}/*.txt)")
            if not p.exists():
                raise FileNotFoundError(f"{where}: {pat!r}: no such file" + (f" ({p})" if str(p) != pat else ""))
            hits = [p]
        out.extend(h for h in hits if h not in out)
    return out


def _file_id(p: Path) -> str:
    return re.sub(r"\.(fa|fasta|fna|txt|flac|wav)(\.(gz|xz|bgz|bz2))?$", "", p.name)


def _file_ids(paths: list) -> list[str]:
    """The ids of one ``files:`` source's files: each file's name without its extensions; names that
    several files share (``s1/genome.fa``, ``s2/genome.fa``) take the folders below the one they have
    in common as a prefix (``s1_genome``, ``s2_genome``)."""
    ids = [_file_id(p) for p in paths]
    count = Counter(ids)
    for gid in [g for g, n in count.items() if n > 1]:
        same = [i for i, g in enumerate(ids) if g == gid]
        root = Path(os.path.commonpath([str(Path(paths[i]).absolute().parent) for i in same]))
        for i in same:
            folders = Path(paths[i]).absolute().parent.relative_to(root).parts
            ids[i] = "_".join(folders + (gid,))
    return ids


def _adapter_assets(kind: str) -> list[tuple[str, Path, object]]:
    """The adapters' shipped files (``assets/adapters.yaml``) of one kind."""
    doc = yaml.safe_load((assets_dir() / "adapters.yaml").read_text())
    return [(_file_id(Path(e["path"])), assets_dir() / e["path"], e.get("split") or dict(TEXT_ASSET_SPLIT))
            for e in doc["files"] if e["kind"] == kind]


def expand_source(k: int, src: Source) -> list[tuple[str, Path, object]]:
    """One source -> [(id, fasta path, split rule)]; a rule is a split name or a dict."""
    where = f"data.sources[{k}]"
    out: list[tuple[str, Path, object]] = []
    if isinstance(src, AssetsSource) and src.assets == "digits":
        return expand_source(k, ManifestSource(str(assets_dir() / "digits"), src.split, src.splits))
    if isinstance(src, AssetsSource) and src.assets == "text":
        out.extend((gid, p, _or(src.split, rule)) for gid, p, rule in _adapter_assets("text"))
    elif isinstance(src, AssetsSource):
        for gid, e in asset_files(src.assets).items():
            out.append((gid, Path(e["path"]), _or(src.split, e["split"])))
    elif isinstance(src, FilesSource):
        paths = expand_files(src.files, f"{where}.files")
        for gid, p in zip(_file_ids(paths), paths):
            out.append((gid, p, _or(src.split, "train")))
    elif isinstance(src, ManifestSource):
        man = SpeciesManifest.from_file(resolve_species_manifest(src.manifest))
        man.check_files(verify_sha256=False)
        for g in man.genomes:
            out.append((g.id, g.path, _or(src.split, g.split)))
    elif isinstance(src, FetchSource):
        folder = fetch(src.fetch, src.dest)
        if src.files is not None:
            paths = expand_files(src.files, f"{where}.files", root=folder)
            for gid, p in zip(_file_ids(paths), paths):
                out.append((src.id or gid, p, _or(src.split, "train")))
            return _finish_entries(where, src, out)
        manifests = [folder / n for n in MANIFEST_NAMES if (folder / n).exists()]
        if manifests:
            return expand_source(k, ManifestSource(str(manifests[0]), src.split, src.splits))
        split_file = folder / "split.yaml"
        if split_file.exists():
            doc = yaml.safe_load(read_text(split_file))
            rule = _or(src.split, {"by": doc.get("split_by", "contig"), "val": doc.get("val") or [],
                                 "test": doc.get("test") or []})
            out.append((src.id or src.fetch, folder / doc["fasta"], rule))
        else:
            fastas = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                            and p.name not in _NOT_DATA)
            for p in fastas:
                out.append((f"{src.fetch}_{p.name.split('.')[0]}", p, _or(src.split, "train")))
    elif isinstance(src, PathSource):
        p = Path(src.path).expanduser()
        check_input_file(p, f"{where}: path")
        gid = src.id or re.sub(r"\.(fa|fasta|fna)(\.(gz|xz|bgz))?$", "", p.name)
        out.append((gid, p, _or(src.split, "train")))
    return _finish_entries(where, src, out)


def _finish_entries(where: str, src: Source, out: list) -> list:
    """Check every entry's split rule and apply the source's ``splits`` filter."""
    for gid, _, rule in out:
        try:
            _check_split(rule, None)
        except CorpusError as e:
            raise CorpusError(f"{where} ({gid}): {e}") from None
    if src.splits is not None:
        keep = list(src.splits)
        # whole-file rules outside ``keep`` drop the file; contig/region rules drop those parts
        out = [(g, p, {**r, "keep": keep} if isinstance(r, dict) else r)
               for g, p, r in out if not isinstance(r, str) or r in keep]
    return out


def build_corpus(sources: list, tokenizer=None):
    """Sources (typed, or their YAML mappings) -> (MemoryStore, Splits), leak-checked.

    ``tokenizer``: the DNA tokenizer (default), or a modality adapter (anything with ``encode_file``
    and ``pad_id``): then every file is one contig of its tokens.
    """
    if not sources:
        raise CorpusError("data.sources: empty; give at least one source, e.g. [{assets: pretrain}]")
    tok = tokenizer or DNATokenizer()
    entries: list[tuple[str, Path, object]] = []
    for k, src in enumerate(sources):
        entries.extend(expand_source(k, parse_source(src, f"data.sources[{k}]")))
    ids = [e[0] for e in entries]
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:
        files = [str(p) for gid, p, _ in entries if gid == dup[0]]
        raise CorpusError(f"data.sources: the same source id appears twice: {dup[:10]} ({dup[0]!r}: {files}); "
                          "ids come from file names: rename one, or give it as a path: source with its own id:")
    if not entries:
        raise CorpusError("data.sources: no files (every source was filtered out)")
    build = MemoryStore.from_files if hasattr(tok, "encode_file") else MemoryStore.from_fasta
    store = build([e[1] for e in entries], tok, genome_ids=ids)
    rules = {gid: rule for gid, _, rule in entries}
    splits = Splits()
    region_cache: dict = {}
    unmatched = {(gid, s, p) for gid, rule in rules.items() if isinstance(rule, dict)
                 and rule.get("by", "contig") == "contig" for s in ("val", "test") for p in rule.get(s) or []}
    for i, c in enumerate(store.contigs):
        gid = store.genome_of(i)
        rule = rules[gid]
        record = c.name[len(gid) + 1:]
        whole = Region(c.name, 0, c.length)
        if isinstance(rule, str):
            splits[rule].append(whole)
            continue
        keep = rule.get("keep", list(SPLIT_NAMES))
        if rule.get("by", "contig") == "contig":
            which = "train"
            for s in ("val", "test"):
                for p in rule.get(s) or []:
                    # a record's exact name first: names such as gi|448767443|gb|CM001786.1| are not
                    # the regular expressions they look like
                    if p in (record, c.name) or _full_match(p, record) or _full_match(p, c.name):
                        which = s
                        unmatched.discard((gid, s, p))
            if which in keep:
                splits[which].append(whole)
        elif rule.get("by") == "tail":
            for s, r in zip(SPLIT_NAMES, tail_split(c.name, c.length, rule.get("val_frac", 0.0),
                                                    rule.get("test_frac", 0.1))):
                if s in keep and len(r):
                    splits[s].append(r)
        else:
            key = (rule.get("val_frac", 0.05), rule.get("test_frac", 0.05), rule.get("block", 100_000),
                   rule.get("seed", 0))
            if key not in region_cache:
                region_cache[key] = split_by_region(store, *key[:3], seed=key[3])
            for s in SPLIT_NAMES:
                if s in keep:
                    splits[s].extend(r for r in region_cache[key][s] if r.contig == c.name)
    if unmatched:  # a held-out contig that silently stayed in training would leak into the test
        gid, s, p = sorted(unmatched)[0]
        names = [c.name[len(gid) + 1:] for i, c in enumerate(store.contigs) if store.genome_of(i) == gid]
        path = next(e[1] for e in entries if e[0] == gid)
        raise CorpusError(f"data.sources: {path}: split {s}: {p!r} matches no record (as a name or a regular "
                          f"expression); its records: {names[:8]}{' ...' if len(names) > 8 else ''}")
    if not splits.train:
        raise CorpusError("data.sources: no training sequence (every source is val/test or filtered out)")
    splits.check()
    return store, splits


def _full_match(pattern: str, name: str) -> bool:
    """``pattern`` as a regular expression matches all of ``name`` (False when it is not one)."""
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def tail_split(contig: str, length: int, val_frac: float, test_frac: float) -> tuple[Region, Region, Region]:
    """(train, val, test) regions of one contig: test is its last ``test_frac``, val the ``val_frac`` before."""
    # rounded before the floor: 100 * 0.29 is 28.999... in floating point, and the test is 29 bytes
    n_test = int(round(length * test_frac, 6))
    n_val = int(round(length * val_frac, 6))
    b = length - n_test
    a = b - n_val
    return Region(contig, 0, a), Region(contig, a, b), Region(contig, b, length)
