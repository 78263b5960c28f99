"""Species manifests (labels -> genome files -> split) and the classification window samplers.

Manifest, YAML::

    name: bacteria-5
    labels: [Escherichia_coli, Helicobacter_pylori]      # optional; fixes label ids (order)
    genomes:
      - {id: MG1655, label: Escherichia_coli, path: MG1655.fasta.gz, split: train}
      - {id: DH1,    label: Escherichia_coli, path: DH1.fasta.gz,    split: test, sha256: ...}

or TSV with a header line ``id  label  path  split  [sha256]`` (``#`` starts a comment), or CSV
with the same columns (``id`` optional: the path as written is the id; other columns are ignored;
``genomamba data fetch digits`` writes one). Relative paths are resolved against the manifest's
folder (or its ``root:`` key). Whole genomes/strains carry one split, so a held-out strain never
contributes a base to training. Labels that are all integers are ordered numerically.

The same manifests label files of any modality (audio clips for the spoken-digit classifier): a
manifest is a list of labelled files, and ``load(split, tokenizer)`` tokenizes them with the DNA
tokenizer or with any adapter-like object that has ``encode_file`` (one contig per file). A folder
is read as its ``manifest.yaml`` / ``manifest.csv`` / ``manifest.tsv``, or else as labelled files
laid out ``SPLIT/LABEL/FILE`` (``train/seven/clip.flac``).

Sampling (the Mamba paper's species protocol, after HyenaDNA): a class uniformly at random, then
one of that class's contigs (in the split) with probability proportional to its length, then a
start uniformly at random. A contig shorter than L is returned whole and right-padded.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset, IterableDataset

from genomamba.data.augment import AudioAugment
from genomamba.data.fasta import file_sha256
from genomamba.data.store import MemoryStore, SequenceSource, TokenStore
from genomamba.data.windows import Region, check_rc_prob, data_rank, epoch_sample_ids, loader_worker
from genomamba.errors import UserError
from genomamba.files import read_text
from genomamba.tokenizers.dna import DNATokenizer

SPLITS = ("train", "val", "test")
MANIFEST_NAMES = ("manifest.yaml", "manifest.yml", "manifest.csv", "manifest.tsv")
PathLike = Union[str, os.PathLike]


class ManifestError(UserError, ValueError):
    """Malformed species manifest; the message names the file and the entry."""


@dataclass(frozen=True)
class GenomeEntry:
    id: str
    label: str
    path: Path
    split: str
    sha256: Optional[str] = None


class SpeciesManifest:
    """Labels, their genome files and splits. Build with ``from_file`` or ``from_entries``."""

    def __init__(self, entries: list[GenomeEntry], labels: Optional[list[str]] = None, name: str = "", source=None):
        self.name = name
        self.source_path = source
        self.genomes = list(entries)
        where = f"{source}: " if source else ""
        if not self.genomes:
            raise ManifestError(f"{where}manifest lists no genomes")
        dup = sorted(i for i, n in Counter(g.id for g in self.genomes).items() if n > 1)
        if dup:
            raise ManifestError(f"{where}duplicate genome ids {dup}")
        for g in self.genomes:
            if g.split not in SPLITS:
                raise ManifestError(f"{where}genome {g.id!r}: split must be one of {SPLITS}, got {g.split!r}")
        seen = list(dict.fromkeys(g.label for g in self.genomes))
        if labels is None:
            labels = sorted(seen, key=int) if all(_is_int(x) for x in seen) else seen
        else:
            labels = [str(x) for x in labels]  # YAML reads labels 0..9 as numbers, genome labels as str
            twice = sorted({x for x in labels if labels.count(x) > 1})
            if twice:
                raise ManifestError(f"{where}labels: {twice} declared more than once")
            missing = [lab for lab in seen if lab not in labels]
            if missing:
                raise ManifestError(f"{where}labels {missing} used by genomes but not declared in labels:")
        self.labels: list[str] = labels
        self.label_to_id = {lab: i for i, lab in enumerate(labels)}
        self._sources: dict = {}

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_file(cls, path: PathLike) -> "SpeciesManifest":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such manifest")
        if path.is_dir():
            found = [path / n for n in MANIFEST_NAMES if (path / n).is_file()]
            return cls.from_file(found[0]) if found else cls._from_folders(path)
        if path.suffix.lower() in (".tsv", ".txt"):
            return cls._from_tsv(path)
        if path.suffix.lower() == ".csv":
            return cls._from_tsv(path, delimiter=",")
        return cls._from_yaml(path)

    @classmethod
    def _from_folders(cls, root: Path) -> "SpeciesManifest":
        """Labelled files laid out ``root/SPLIT/LABEL/FILE``; the id of a file is its path below root."""
        entries = []
        for split in SPLITS:
            if not (root / split).is_dir():
                continue
            for label_dir in sorted(d for d in (root / split).iterdir() if d.is_dir()):
                for f in sorted(label_dir.iterdir()):
                    if f.is_file() and not f.name.startswith("."):
                        entries.append(GenomeEntry(f.relative_to(root).as_posix(), label_dir.name, f, split))
        if not entries:
            raise ManifestError(f"{root}: a directory without labelled files: expected one of {list(MANIFEST_NAMES)} "
                                "or files laid out SPLIT/LABEL/FILE (e.g. train/seven/clip.flac)")
        return cls(entries, None, name=root.name, source=root)

    @classmethod
    def _from_yaml(cls, path: Path) -> "SpeciesManifest":
        try:
            doc = yaml.safe_load(read_text(path))
        except yaml.YAMLError as e:
            raise ManifestError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("genomes"), list):
            raise ManifestError(f"{path}: expected a mapping with a 'genomes:' list")
        root = path.parent / doc.get("root", ".")
        entries = []
        for k, g in enumerate(doc["genomes"]):
            if not isinstance(g, dict):
                raise ManifestError(f"{path}: genomes[{k}] is not a mapping")
            entries.append(cls._entry(path, f"genomes[{k}]", g, root))
        return cls(entries, doc.get("labels"), name=str(doc.get("name", path.stem)), source=path)

    @classmethod
    def _from_tsv(cls, path: Path, delimiter: str = "\t") -> "SpeciesManifest":
        lines = [ln for ln in read_text(path).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines:
            raise ManifestError(f"{path}: empty manifest")
        rows = list(csv.DictReader(lines, delimiter=delimiter))
        need = {"label", "path", "split"}
        header = set(rows[0].keys()) if rows else set(lines[0].split(delimiter))
        if not need <= header:
            kind = "TSV" if delimiter == "\t" else "CSV"
            raise ManifestError(f"{path}: {kind} header must contain {sorted(need)}, got {sorted(header)}")
        if delimiter == ",":  # CSV rows without an id are named by their path (unique; stems repeat across labels)
            rows = [r if r.get("id") else {**r, "id": r["path"]} for r in rows]
        entries = [cls._entry(path, f"line {k + 2}", r, path.parent) for k, r in enumerate(rows)]
        return cls(entries, None, name=path.stem, source=path)

    @staticmethod
    def _entry(src: Path, where: str, g: dict, root: Path) -> GenomeEntry:
        for key in ("label", "path", "split"):
            if g.get(key) is None or not str(g[key]).strip():  # a label may be the number 0
                raise ManifestError(f"{src}: {where}: missing {key!r}")
        p = Path(str(g["path"])).expanduser()
        p = p if p.is_absolute() else (root / p)
        gid = str(g.get("id") or _stem(p))
        return GenomeEntry(gid, str(g["label"]), p, str(g["split"]).strip(), g.get("sha256") or None)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "labels": list(self.labels),
            "genomes": [
                {"id": g.id, "label": g.label, "path": str(g.path), "split": g.split}
                | ({"sha256": g.sha256} if g.sha256 else {})
                for g in self.genomes
            ],
        }

    # ------------------------------------------------------------------ queries
    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def entries(self, split: Optional[str] = None, label: Optional[str] = None) -> list[GenomeEntry]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [g for g in self.genomes if (split is None or g.split == split) and (label is None or g.label == label)]

    def files(self, label: Optional[str] = None, split: Optional[str] = None) -> list[Path]:
        return [g.path for g in self.entries(split, label)]

    def check_files(self, verify_sha256: bool = True) -> None:
        """Every file exists (and matches its sha256 when the manifest gives one)."""
        for g in self.genomes:
            if not g.path.exists():
                raise FileNotFoundError(f"{self.source_path}: genome {g.id!r}: missing file {g.path}")
            if verify_sha256 and g.sha256 and file_sha256(g.path) != g.sha256:
                raise ManifestError(f"{self.source_path}: genome {g.id!r}: sha256 mismatch for {g.path}")

    def load(self, split: Optional[str] = None, tokenizer: Optional[DNATokenizer] = None) -> MemoryStore:
        """Tokenize the split's genomes into RAM (contigs named ``"<genome id>:<record>"``); cached."""
        files = hasattr(tokenizer, "encode_file")  # a modality adapter: one contig per file
        # the tokenizer's settings, not only its vocabulary: iupac "n" and "unk" share one vocabulary
        key = (split, None if tokenizer is None else repr(tokenizer))
        if key not in self._sources:
            ents = self.entries(split)
            if not ents:
                raise ManifestError(f"{self.source_path}: no genomes in split {split!r}")
            self.check_files(verify_sha256=False) if files else self.check_files()
            build = MemoryStore.from_files if files else MemoryStore.from_fasta
            self._sources[key] = build([g.path for g in ents], tokenizer, genome_ids=[g.id for g in ents])
        return self._sources[key]

    def build_store(self, out_path: PathLike, tokenizer: Optional[DNATokenizer] = None,
                    replace: bool = True, compression: Optional[str] = None) -> TokenStore:
        """All genomes into one HDF5 token store (contigs ``"<genome id>:<record>"``)."""
        self.check_files()
        return TokenStore.build(
            [g.path for g in self.genomes], out_path, tokenizer, genome_ids=[g.id for g in self.genomes],
            compression=compression, replace=replace,
        )

    def label_of_genome(self, genome_id: str) -> int:
        for g in self.genomes:
            if g.id == genome_id:
                return self.label_to_id[g.label]
        raise KeyError(f"genome {genome_id!r} not in manifest {self.name!r}")


def _is_int(x: str) -> bool:
    try:
        int(x)
    except ValueError:
        return False
    return True


def _stem(p: Path) -> str:
    name = p.name
    for ext in (".gz", ".bgz", ".xz", ".bz2", ".fasta", ".fa", ".fna", ".gbk", ".gb"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


class _SpeciesSampler:
    """Per-split index: label -> its contigs (indices into the source) and their length CDF.

    ``span = (lo, hi)`` restricts every contig to ``[floor(lo * n), floor(hi * n))``: e.g.
    ``(0, 0.9)`` to fit and ``(0.9, 1)`` to validate on the *training* strains without a shared
    base (windows never cross the cut), while the held-out strains stay for the test.
    """

    def __init__(self, manifest, split: str, source: Optional[SequenceSource], tokenizer, span=(0.0, 1.0)):
        lo, hi = float(span[0]), float(span[1])
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"span must satisfy 0 <= lo < hi <= 1, got {span}")
        self.manifest = manifest
        self.split = split
        self.source = source if source is not None else manifest.load(split, tokenizer)
        wanted = {g.id: manifest.label_to_id[g.label] for g in manifest.entries(split)}
        if not wanted:
            raise ManifestError(f"{manifest.source_path}: no genomes in split {split!r}")
        per_label: dict[int, list[int]] = {}
        for i in range(len(self.source.contigs)):
            g = self.source.genome_of(i)
            if g in wanted:
                per_label.setdefault(wanted[g], []).append(i)
        missing = set(wanted) - {self.source.genome_of(i) for i in range(len(self.source.contigs))}
        if missing:
            raise ManifestError(f"source has no contigs for genome(s) {sorted(missing)} of split {split!r}")
        self.label_ids = sorted(per_label)
        self.contigs = {lab: np.array(ix, dtype=np.int64) for lab, ix in per_label.items()}
        lengths = self.source.lengths
        # int64 bounds of the usable part of every contig (floor keeps neighbouring spans disjoint).
        self.lo = np.floor(lengths * lo).astype(np.int64)
        self.hi = np.floor(lengths * hi).astype(np.int64)
        self.cum = {lab: np.cumsum(self.hi[ix] - self.lo[ix]) for lab, ix in self.contigs.items()}
        for lab, c in self.cum.items():
            if c[-1] <= 0:
                raise ManifestError(f"label {manifest.labels[lab]!r}: no sequence in span {span} of split {split!r}")

    def draw(self, rng: np.random.Generator, length: int, lab: Optional[int] = None):
        if lab is None:
            lab = self.label_ids[int(rng.integers(len(self.label_ids)))]  # class uniform
        cum = self.cum[lab]
        k = int(np.searchsorted(cum, rng.integers(0, cum[-1]), side="right"))  # contig by length
        ci = int(self.contigs[lab][k])
        a, b = int(self.lo[ci]), int(self.hi[ci])
        start = a + int(rng.integers(0, b - a - length + 1)) if b - a > length else a  # position uniform
        return lab, ci, start, min(start + length, b)

    def support(self):
        names = self.source.names
        return [Region(names[ci], int(self.lo[ci]), int(self.hi[ci])) for ix in self.contigs.values() for ci in ix]


def _window(source: SequenceSource, ci: int, start: int, stop: int, length: int):
    ids = source.read(ci, start, stop)
    out = np.full(length, source.tokenizer.pad_id, dtype=np.int64)
    out[: stop - start] = ids
    mask = np.zeros(length, dtype=np.bool_)
    mask[: stop - start] = True
    return out, mask


_AUGMENT_STREAM = 0xA0D10  # last in the augmentation seed: never a trailing 0 that would alias another stream


def _audio_augment(augment, tokenizer) -> Optional[AudioAugment]:
    """The checked augmentation of a training source, or None when nothing can change a window."""
    aug = AudioAugment.from_value(augment)
    if aug is None:
        return None
    rate = getattr(tokenizer, "sample_rate", None)
    if rate is None or not hasattr(tokenizer, "decode"):
        name = getattr(tokenizer, "name", type(tokenizer).__name__)
        raise ValueError(f"augment: waveform augmentation applies to audio only, not to {name!r} tokens")
    aug.check(rate)
    return aug if aug.active else None


class SpeciesWindows(IterableDataset):
    """Random training windows for species classification; yields ``(ids int64 (L,), label int)``.

    ``return_mask=True`` yields ``(ids, mask, label)`` (mask False on padding). ``rc_prob``
    reverse-complements a window (the label of a strand is the label of its complement).
    ``augment`` (audio tokens only: an ``AudioAugment`` or a mapping of its keys) decodes each window
    to a float waveform, augments it and encodes it again; the window keeps its length and mask.
    ``span`` restricts each contig to a fraction range (see ``_SpeciesSampler``).

    Determinism: sample k of an epoch is a function of (seed, epoch, k); with ``batch_size`` set to
    the loader's (the training loaders set it), the batches are the same for any number of workers.
    """

    def support(self):
        """Every window lies inside one of these regions (for ``assert_no_overlap``)."""
        return self.sampler.support()

    def __init__(
        self,
        manifest: SpeciesManifest,
        split: str,
        length: int,
        seed: int = 0,
        num_samples: int = 1000,
        rc_prob: float = 0.0,
        return_mask: bool = False,
        source: Optional[SequenceSource] = None,
        tokenizer: Optional[DNATokenizer] = None,
        span: tuple = (0.0, 1.0),
        augment=None,
    ):
        if length <= 0:
            raise ValueError(f"window length must be positive, got {length}")
        self.sampler = _SpeciesSampler(manifest, split, source, tokenizer, span)
        check_rc_prob(self.sampler.source, rc_prob)
        self.length, self.seed, self.num_samples = int(length), int(seed), int(num_samples)
        self.rc_prob, self.return_mask = float(rc_prob), return_mask
        self.augment = _audio_augment(augment, self.sampler.source.tokenizer)
        self.epoch = 0
        self.batch_size = 1  # the loader's: each batch comes from one worker (see epoch_sample_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator:
        wid, nw = loader_worker()
        rank, world = data_rank()
        src = self.sampler.source
        tok, aug = src.tokenizer, self.augment
        for k in epoch_sample_ids(self.num_samples, self.batch_size, rank, world, wid, nw):
            rng = np.random.default_rng([self.seed, self.epoch, k])
            lab, ci, a, b = self.sampler.draw(rng, self.length)
            ids, mask = _window(src, ci, a, b, self.length)
            if rng.random() < self.rc_prob:  # always tossed: rc_prob never changes the draws
                ids[: b - a] = tok.reverse_complement(ids[: b - a])
            if aug is not None:  # its own generator per window: augmenting never changes the draws
                aug_rng = np.random.default_rng([self.seed, self.epoch, k, _AUGMENT_STREAM])
                ids[: b - a] = tok.encode(aug.apply(tok.decode(ids[: b - a]), aug_rng, tok.sample_rate))
            ids_t = torch.from_numpy(ids)
            yield (ids_t, torch.from_numpy(mask), lab) if self.return_mask else (ids_t, lab)


class SpeciesEvalWindows(Dataset):
    """Deterministic evaluation windows: ``per_label`` windows per class, drawn once from ``seed``.

    The same protocol as training (class, contig by length, position), but the draw is fixed at
    construction, so every epoch and every run scores the same windows. ``per_label=None`` scores every
    contig of the split once instead (its first ``length`` tokens): whole clips of an audio manifest.
    """

    def __init__(
        self,
        manifest: SpeciesManifest,
        split: str,
        length: int,
        per_label: Optional[int] = 100,
        seed: int = 1234,
        return_mask: bool = False,
        source: Optional[SequenceSource] = None,
        tokenizer: Optional[DNATokenizer] = None,
        span: tuple = (0.0, 1.0),
    ):
        if length <= 0:
            raise ValueError(f"window length must be positive, got {length}")
        self.sampler = _SpeciesSampler(manifest, split, source, tokenizer, span)
        self.length, self.return_mask = int(length), return_mask
        rng = np.random.default_rng(seed)
        smp = self.sampler
        if per_label is None:
            self.items = [(lab, int(ci), int(smp.lo[ci]), int(min(smp.lo[ci] + self.length, smp.hi[ci])))
                          for lab in smp.label_ids for ci in smp.contigs[lab]]
            return
        # The class is fixed per draw so every class gets exactly per_label windows.
        self.items = [
            self.sampler.draw(rng, self.length, lab) for lab in self.sampler.label_ids for _ in range(per_label)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        lab, ci, a, b = self.items[i]
        ids, mask = _window(self.sampler.source, ci, a, b, self.length)
        ids_t = torch.from_numpy(ids)
        return (ids_t, torch.from_numpy(mask), lab) if self.return_mask else (ids_t, lab)

    @property
    def windows(self):
        src = self.sampler.source
        return [Region(src.contigs[ci].name, a, b) for _, ci, a, b in self.items]
