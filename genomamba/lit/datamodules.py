"""LightningDataModules over the genome data pipeline (``genomamba.data``).

Pretraining corpus: a list of *sources*, each a dict (from YAML)::

    {assets: pretrain}                    # shipped LM slices (U. maydis train/val/test, fly, lambda)
    {assets: genomes}                     # shipped 5-species slices, split by strain
    {fetch: umaydis}                      # fetched dataset with its own split file (chr21-23 test)
    {fetch: bacteria, splits: [train]}    # keep only the training strains
    {manifest: path/to/species.yaml}      # any species manifest: each genome's split
    {path: genome.fa.gz, split: train}    # one FASTA, all of it in one split
    {path: genome.fa.gz, split: {by: contig, val: [chrX], test: ["chr2[123]"]}}
    {path: genome.fa.gz, split: {by: region, val_frac: 0.05, test_frac: 0.05, block: 100000}}

Every source is tokenized into one in-RAM store (contigs named ``"<source id>:<record>"``), the
splits are assembled per source, and the result is checked with ``assert_no_overlap``: no
evaluation base lies inside any region a training window can be drawn from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

import numpy as np
from torch.utils.data import DataLoader

from genomamba.data.windows import Region, Splits, assert_no_overlap, split_by_region
from genomamba.lit._pl import pl
from genomamba.tokenizers.dna import DNATokenizer

SPLIT_NAMES = ("train", "val", "test")
_SOURCE_KEYS = {"assets", "fetch", "manifest", "path", "split", "splits", "id", "dest"}


class CorpusError(ValueError):
    """A malformed corpus source; the message names the source and the key."""


def _resolve_species_manifest(spec: Union[str, Path]) -> Path:
    """``assets`` -> the shipped manifest; ``fetch:NAME`` -> fetched dataset's manifest; else a path."""
    s = str(spec)
    if s == "assets":
        from genomamba.data.fetch import default_assets

        return default_assets()
    if s.startswith("fetch:"):
        from genomamba.data.fetch import fetch

        out = fetch(s.split(":", 1)[1]) / "manifest.yaml"
        if not out.exists():
            raise CorpusError(f"manifest {s!r}: the fetched dataset has no manifest.yaml ({out})")
        return out
    p = Path(s).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"manifest {s!r}: no such file")
    return p


def _expand_source(k: int, src: dict) -> list[tuple[str, Path, object]]:
    """One YAML source -> [(id, fasta path, split rule)]; a rule is a split name or a dict."""
    where = f"data.sources[{k}]"
    if not isinstance(src, dict):
        raise CorpusError(f"{where}: expected a mapping like {{path: genome.fa, split: train}}, got {src!r}")
    unknown = sorted(set(src) - _SOURCE_KEYS)
    if unknown:
        raise CorpusError(f"{where}: unknown key(s) {unknown}; known: {sorted(_SOURCE_KEYS)}")
    kinds = [x for x in ("assets", "fetch", "manifest", "path") if x in src]
    if len(kinds) != 1:
        raise CorpusError(f"{where}: give exactly one of assets / fetch / manifest / path, got {kinds or 'none'}")
    out: list[tuple[str, Path, object]] = []
    if "assets" in src:
        from genomamba.data.fetch import asset_files

        section = src["assets"]
        if section not in ("pretrain", "genomes"):
            raise CorpusError(f"{where}: assets must be 'pretrain' or 'genomes', got {section!r}")
        for gid, e in asset_files(section).items():
            out.append((gid, Path(e["path"]), src.get("split", e["split"])))
    elif "manifest" in src:
        from genomamba.data.species import SpeciesManifest

        man = SpeciesManifest.from_file(_resolve_species_manifest(src["manifest"]))
        man.check_files(verify_sha256=False)
        for g in man.genomes:
            out.append((g.id, g.path, src.get("split", g.split)))
    elif "fetch" in src:
        import yaml

        from genomamba.data.fetch import fetch

        name = str(src["fetch"])
        folder = fetch(name, src.get("dest"))
        if (folder / "manifest.yaml").exists():
            return _expand_source(k, {"manifest": str(folder / "manifest.yaml"),
                                      **{x: src[x] for x in ("split", "splits") if x in src}})
        split_file = folder / "split.yaml"
        if split_file.exists():
            doc = yaml.safe_load(split_file.read_text())
            rule = src.get("split", {"by": doc.get("split_by", "contig"), "val": doc.get("val") or [],
                                     "test": doc.get("test") or []})
            out.append((src.get("id", name), folder / doc["fasta"], rule))
        else:
            fastas = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
            for p in fastas:
                out.append((f"{name}_{p.name.split('.')[0]}", p, src.get("split", "train")))
    else:
        p = Path(str(src["path"])).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{where}: path {p}: no such file")
        gid = str(src.get("id") or re.sub(r"\.(fa|fasta|fna)(\.(gz|xz|bgz))?$", "", p.name))
        out.append((gid, p, src.get("split", "train")))
    keep = src.get("splits")
    for gid, _, rule in out:
        if isinstance(rule, str) and rule not in SPLIT_NAMES:
            raise CorpusError(f"{where} ({gid}): split must be one of {SPLIT_NAMES} or a mapping, got {rule!r}")
        if isinstance(rule, dict) and rule.get("by", "contig") not in ("contig", "region"):
            raise CorpusError(f"{where} ({gid}): split.by must be 'contig' or 'region', got {rule.get('by')!r}")
    if keep is not None:
        bad = [s for s in keep if s not in SPLIT_NAMES]
        if bad:
            raise CorpusError(f"{where}: splits lists unknown split(s) {bad}; known: {SPLIT_NAMES}")
        # whole-file rules outside ``keep`` drop the file; contig/region rules drop those parts
        out = [(g, p, {**r, "keep": list(keep)} if isinstance(r, dict) else r)
               for g, p, r in out if not isinstance(r, str) or r in keep]
    return out


def build_corpus(sources: list, tokenizer: Optional[DNATokenizer] = None):
    """Sources (see module docstring) -> (MemoryStore, Splits), leak-checked."""
    from genomamba.data.store import MemoryStore

    if not sources:
        raise CorpusError("data.sources: empty; give at least one source, e.g. [{assets: pretrain}]")
    tok = tokenizer or DNATokenizer()
    entries: list[tuple[str, Path, object]] = []
    for k, src in enumerate(sources):
        entries.extend(_expand_source(k, src))
    ids = [e[0] for e in entries]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CorpusError(f"data.sources: the same source id appears twice: {dup} (set id: on one of them)")
    store = MemoryStore.from_fasta([e[1] for e in entries], tok, genome_ids=ids)
    rules = {gid: rule for gid, _, rule in entries}
    splits = Splits()
    region_cache: dict = {}
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
                pats = rule.get(s) or []
                if any(re.fullmatch(p, record) or re.fullmatch(p, c.name) for p in pats):
                    which = s
            if which in keep:
                splits[which].append(whole)
        else:
            key = (rule.get("val_frac", 0.05), rule.get("test_frac", 0.05), rule.get("block", 100_000),
                   rule.get("seed", 0))
            if key not in region_cache:
                region_cache[key] = split_by_region(store, *key[:3], seed=key[3])
            for s in SPLIT_NAMES:
                if s in keep:
                    splits[s].extend(r for r in region_cache[key][s] if r.contig == c.name)
    if not splits.train:
        raise CorpusError("data.sources: no training sequence (every source is val/test or filtered out)")
    splits.check()
    return store, splits


def _set_epoch_from(trainer) -> None:
    """Seed the random windows of this epoch by the global step: a resumed run draws fresh windows
    rather than replaying the start of the interrupted epoch."""
    loader = trainer.train_dataloader
    ds = getattr(loader, "dataset", None)
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(int(trainer.global_step))


class EpochSeed(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        _set_epoch_from(trainer)


def _loader(ds, batch_size, num_workers, shuffle=False):
    return DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=shuffle,
                      persistent_workers=num_workers > 0, pin_memory=False)


class PretrainDataModule(pl.LightningDataModule):
    """Random training windows + tiled val/test windows over a multi-source corpus."""

    def __init__(self, sources: list, seq_len: int = 1024, batch_size: int = 8, train_samples: int = 10_000,
                 val_windows: Optional[int] = 64, test_windows: Optional[int] = None, rc_prob: float = 0.5,
                 max_n_frac: float = 0.1, num_workers: int = 0, seed: int = 0,
                 tokenizer: Optional[DNATokenizer] = None):
        super().__init__()
        if seq_len < 2:
            raise ValueError(f"data.seq_len: expected >= 2, got {seq_len}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size: expected >= 1, got {batch_size}")
        self.sources, self.seq_len, self.batch_size = sources, int(seq_len), int(batch_size)
        self.train_samples, self.val_windows, self.test_windows = int(train_samples), val_windows, test_windows
        self.rc_prob, self.max_n_frac, self.num_workers, self.seed = rc_prob, max_n_frac, num_workers, seed
        self.tokenizer = tokenizer or DNATokenizer()
        self.store = self.splits = None

    def setup(self, stage: Optional[str] = None):
        from genomamba.data.windows import RandomWindows, TiledWindows

        if self.store is None:
            self.store, self.splits = build_corpus(self.sources, self.tokenizer)
            self.train_ds = RandomWindows(self.store, self.seq_len, self.splits.train, seed=self.seed,
                                          rc_prob=self.rc_prob, max_n_frac=self.max_n_frac,
                                          num_samples=self.train_samples)
            self.val_ds = TiledWindows(self.store, self.seq_len, self.splits.val, max_windows=self.val_windows,
                                       seed=self.seed) if self.splits.val else None
            self.test_ds = TiledWindows(self.store, self.seq_len, self.splits.test, max_windows=self.test_windows,
                                        seed=self.seed) if self.splits.test else None
            # The proof, on the datasets actually used: no evaluation base inside a training window.
            assert_no_overlap(self.train_ds, [w for d in (self.val_ds, self.test_ds) if d for w in d.windows])

    def summary(self) -> dict:
        tot = {s: int(sum(len(r) for r in self.splits[s])) for s in SPLIT_NAMES}
        return {"bases": tot, "contigs": len(self.store.contigs), "sources": len(self.store.genomes)}

    def train_dataloader(self):
        return _loader(self.train_ds, self.batch_size, self.num_workers)

    def val_dataloader(self):
        return _loader(self.val_ds, self.batch_size, 0) if self.val_ds is not None else []

    def test_dataloader(self):
        if self.test_ds is None:
            raise CorpusError("no test split in data.sources (mark a source or contigs as test)")
        return _loader(self.test_ds, self.batch_size, 0)


class SpeciesDataModule(pl.LightningDataModule):
    """Species windows from a manifest: class-uniform random training windows, fixed eval windows.

    ``manifest``: a path, ``assets`` (the shipped slices) or ``fetch:bacteria`` (full genomes).
    Validation uses the manifest's ``val`` genomes when it has any, else none; ``test`` are the
    held-out strains. ``train_length`` (default ``length``) may be shorter than the evaluation
    windows: with mean pooling a model trained on short windows scores longer ones as is.
    """

    def __init__(self, manifest: str = "assets", length: int = 1024, batch_size: int = 32,
                 train_samples: int = 20_000, val_per_label: int = 100, test_per_label: int = 200,
                 rc_prob: float = 0.5, num_workers: int = 0, seed: int = 0, eval_seed: int = 1234,
                 tokenizer: Optional[DNATokenizer] = None, train_length: Optional[int] = None):
        super().__init__()
        self.manifest_spec = manifest
        self.length, self.batch_size, self.train_samples = int(length), int(batch_size), int(train_samples)
        self.train_length = int(train_length or length)
        if self.length < 1 or self.train_length < 1:
            raise ValueError(f"data.length / data.train_length: expected >= 1, got {length} / {train_length}")
        self.val_per_label, self.test_per_label = int(val_per_label), int(test_per_label)
        self.rc_prob, self.num_workers, self.seed, self.eval_seed = rc_prob, num_workers, seed, eval_seed
        self.tokenizer = tokenizer or DNATokenizer()
        self.manifest = None

    def prepare_manifest(self):
        from genomamba.data.species import SpeciesManifest

        if self.manifest is None:
            self.manifest = SpeciesManifest.from_file(_resolve_species_manifest(self.manifest_spec))
            self.manifest.check_files(verify_sha256=False)
        return self.manifest

    @property
    def labels(self) -> list[str]:
        return list(self.prepare_manifest().labels)

    def setup(self, stage: Optional[str] = None):
        from genomamba.data.species import SpeciesEvalWindows, SpeciesWindows

        man = self.prepare_manifest()
        if not hasattr(self, "train_ds") and stage in (None, "fit"):
            self.train_ds = SpeciesWindows(man, "train", self.train_length, seed=self.seed,
                                           num_samples=self.train_samples, rc_prob=self.rc_prob, return_mask=True,
                                           tokenizer=self.tokenizer)
            self.val_ds = SpeciesEvalWindows(man, "val", self.length, per_label=self.val_per_label,
                                             seed=self.eval_seed, return_mask=True, tokenizer=self.tokenizer) \
                if man.entries("val") else None
        if not hasattr(self, "test_ds") and man.entries("test"):
            self.test_ds = SpeciesEvalWindows(man, "test", self.length, per_label=self.test_per_label,
                                              seed=self.eval_seed, return_mask=True, tokenizer=self.tokenizer)
        # Whole strains carry one split, so held-out windows come from files training never reads.
        train_files = {g.path.resolve() for g in man.entries("train")}
        leak = [g.id for g in man.entries("test") + man.entries("val") if g.path.resolve() in train_files]
        if leak:
            raise CorpusError(f"{man.source_path}: genome file(s) of {leak} are also listed for training")

    def train_dataloader(self):
        return _loader(self.train_ds, self.batch_size, self.num_workers)

    def val_dataloader(self):
        return _loader(self.val_ds, self.batch_size, 0) if self.val_ds is not None else []

    def test_dataloader(self):
        if getattr(self, "test_ds", None) is None:
            raise CorpusError(f"{self.manifest.source_path}: no test genomes in the manifest")
        return _loader(self.test_ds, self.batch_size, 0)


def window_arrays(ds) -> tuple[list[np.ndarray], np.ndarray]:
    """(real-base token arrays, labels) of a species eval dataset, for the classical baselines."""
    wins, labels = [], []
    for i in range(len(ds)):
        ids, mask, lab = ds[i]
        wins.append(ids.numpy()[mask.numpy()])
        labels.append(int(lab))
    return wins, np.array(labels)
