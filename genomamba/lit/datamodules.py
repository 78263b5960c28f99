"""LightningDataModules over the data pipeline (``genomamba.data``), for any modality.

``PretrainDataModule``: random training windows and tiled val/test windows over a corpus built
from typed sources (``genomamba.data.corpus``). ``SpeciesDataModule``: class-uniform windows from a
labelled-file manifest (species genomes, spoken-digit clips), evaluated on held-out strains or voices.
``tokenizer`` is the DNA tokenizer or, for text and audio, the modality's adapter.
"""

from __future__ import annotations

import signal
from typing import Optional

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader

from genomamba.data.corpus import SPLIT_NAMES, CorpusError, build_corpus, resolve_species_manifest
from genomamba.data.fasta import file_sha256
from genomamba.data.species import SpeciesEvalWindows, SpeciesManifest, SpeciesWindows
from genomamba.data.windows import EvalShard, RandomWindows, TiledWindows, assert_no_overlap
from genomamba.lit._pl import pl
from genomamba.parallel import data_shard
from genomamba.tokenizers.dna import DNATokenizer


def _worker_ignores_sigterm(worker_id: int) -> None:
    """A loader worker leaves SIGTERM to the training process. A scheduler (or ``timeout``, ``kill -TERM
    -PGID``) signals the whole process group: a worker that died of it would make the next batch fail
    before the training process could save its step; the workers end with that process instead."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _train_loader(ds, batch_size, num_workers):
    """Training windows. Workers are started again each epoch: a persistent worker keeps the copy of
    the dataset it started with, so the epoch set by ``EpochSeed`` would never reach it and every
    epoch would replay the first one's windows. The dataset learns the batch size, so that each batch
    comes whole from one worker and the batches are the same for any number of workers."""
    ds.batch_size = batch_size
    return DataLoader(ds, batch_size=batch_size, num_workers=num_workers, persistent_workers=False,
                      pin_memory=False, worker_init_fn=_worker_ignores_sigterm if num_workers else None)


def _eval_loader(ds, batch_size, context_parallel: int = 1):
    """Evaluation windows, sharded over the data-parallel replicas without repeats when several
    processes run (Lightning leaves a loader that already has a DistributedSampler alone)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return DataLoader(ds, batch_size=batch_size, num_workers=0, pin_memory=False)
    rank, world = data_shard(context_parallel)
    return DataLoader(ds, batch_size=batch_size, sampler=EvalShard(ds, world, rank), num_workers=0)


class PretrainDataModule(pl.LightningDataModule):
    """Random training windows + tiled val/test windows over a multi-source corpus."""

    def __init__(self, sources: list, seq_len: int = 1024, batch_size: int = 8, train_samples: int = 10_000,
                 val_windows: Optional[int] = 64, test_windows: Optional[int] = None, rc_prob: float = 0.5,
                 max_n_frac: float = 0.1, num_workers: int = 0, seed: int = 0,
                 tokenizer: Optional[DNATokenizer] = None, context_parallel: int = 1):
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
        self.context_parallel = int(context_parallel)  # ranks per sequence: they read the same windows

    def setup(self, stage: Optional[str] = None):
        if self.store is None:
            self.store, self.splits = build_corpus(self.sources, self.tokenizer)
            longest = max((len(r) for r in self.splits.train), default=0)
            if longest < self.seq_len:
                raise CorpusError(f"data.sources: the longest training sequence has {longest:,} bases, shorter than "
                                  f"data.seq_len={self.seq_len}; lower data.seq_len or add longer sequences")
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
        if dist.is_available() and dist.is_initialized():
            self.train_ds.shard = data_shard(self.context_parallel)
        return _train_loader(self.train_ds, self.batch_size, self.num_workers)

    def val_dataloader(self):
        return _eval_loader(self.val_ds, self.batch_size, self.context_parallel) if self.val_ds is not None else []

    def test_dataloader(self):
        if self.test_ds is None:
            raise CorpusError("no test split in data.sources (mark a source or contigs as test)")
        return _eval_loader(self.test_ds, self.batch_size, self.context_parallel)


def held_out_training_files(man: SpeciesManifest) -> list[str]:
    """Ids of the val/test genomes whose file is a training genome's: the same path, a link to it, or a
    copy of its bytes (content hashed only where sizes match)."""
    inodes, by_size = set(), {}
    for g in man.entries("train"):
        st = g.path.stat()
        inodes.add((st.st_dev, st.st_ino))
        by_size.setdefault(st.st_size, []).append(g.path)
    hashed: dict = {}  # size -> digests of the training files of that size, made when first needed
    leak = []
    for g in man.entries("test") + man.entries("val"):
        st = g.path.stat()
        if (st.st_dev, st.st_ino) in inodes:
            leak.append(g.id)
        elif st.st_size in by_size:
            if st.st_size not in hashed:
                hashed[st.st_size] = {file_sha256(p) for p in by_size[st.st_size]}
            if file_sha256(g.path) in hashed[st.st_size]:
                leak.append(g.id)
    return leak


class SpeciesDataModule(pl.LightningDataModule):
    """Species windows from a manifest: class-uniform random training windows, fixed eval windows.

    ``manifest``: a path, ``assets`` (the shipped slices) or ``fetch:bacteria`` (full genomes).
    Validation uses the manifest's ``val`` genomes when it has any, else none; ``test`` are the
    held-out strains. ``train_length`` (default ``length``) may be shorter than the evaluation
    windows: with mean pooling a model trained on short windows scores longer ones as is.
    ``augment`` (audio: ``genomamba.data.augment.AudioAugment`` or a mapping of its keys) augments the
    training waveforms; validation and test windows are never augmented.
    """

    def __init__(self, manifest: str = "assets", length: int = 1024, batch_size: int = 32,
                 train_samples: int = 20_000, val_per_label: int = 100, test_per_label: int = 200,
                 rc_prob: float = 0.5, num_workers: int = 0, seed: int = 0, eval_seed: int = 1234,
                 tokenizer: Optional[DNATokenizer] = None, train_length: Optional[int] = None, augment=None):
        super().__init__()
        self.manifest_spec = manifest
        self.length, self.batch_size, self.train_samples = int(length), int(batch_size), int(train_samples)
        self.train_length = int(train_length or length)
        if self.length < 1 or self.train_length < 1:
            raise ValueError(f"data.length / data.train_length: expected >= 1, got {length} / {train_length}")
        self.val_per_label = None if val_per_label is None else int(val_per_label)
        self.test_per_label = None if test_per_label is None else int(test_per_label)
        self.rc_prob, self.num_workers, self.seed, self.eval_seed = rc_prob, num_workers, seed, eval_seed
        self.tokenizer = tokenizer or DNATokenizer()
        self.augment = augment
        self.manifest = None

    def prepare_manifest(self):
        if self.manifest is None:
            self.manifest = SpeciesManifest.from_file(resolve_species_manifest(self.manifest_spec))
            self.manifest.check_files(verify_sha256=False)
        return self.manifest

    @property
    def labels(self) -> list[str]:
        return list(self.prepare_manifest().labels)

    def setup(self, stage: Optional[str] = None):
        man = self.prepare_manifest()
        if stage in (None, "fit"):
            untrained = [lab for lab in man.labels if not man.entries("train", lab)]
            if untrained:
                raise CorpusError(f"{man.source_path}: label(s) {untrained} have no training genome; the model "
                                  "could never predict them (add a training genome or drop the label)")
        # Whole strains carry one split, so held-out windows come from files training never reads.
        if not hasattr(self, "_leak"):  # once: setup runs for fit, again inside fit, and for test
            self._leak = held_out_training_files(man)
        leak = self._leak
        if leak:
            raise CorpusError(f"{man.source_path}: genome file(s) of {leak} are also listed for training "
                              "(the same file, a link to it, or a copy of its content)")
        if not hasattr(self, "train_ds") and stage in (None, "fit"):
            self.train_ds = SpeciesWindows(man, "train", self.train_length, seed=self.seed,
                                           num_samples=self.train_samples, rc_prob=self.rc_prob, return_mask=True,
                                           tokenizer=self.tokenizer, augment=self.augment)
            self.val_ds = SpeciesEvalWindows(man, "val", self.length, per_label=self.val_per_label,
                                             seed=self.eval_seed, return_mask=True, tokenizer=self.tokenizer) \
                if man.entries("val") else None
        if not hasattr(self, "test_ds") and man.entries("test"):
            self.test_ds = SpeciesEvalWindows(man, "test", self.length, per_label=self.test_per_label,
                                              seed=self.eval_seed, return_mask=True, tokenizer=self.tokenizer)

    def train_dataloader(self):
        return _train_loader(self.train_ds, self.batch_size, self.num_workers)

    def val_dataloader(self):
        return _eval_loader(self.val_ds, self.batch_size) if self.val_ds is not None else []

    def test_dataloader(self):
        if getattr(self, "test_ds", None) is None:
            raise CorpusError(f"{self.manifest.source_path}: no test genomes in the manifest")
        return _eval_loader(self.test_ds, self.batch_size)


def window_arrays(ds) -> tuple[list[np.ndarray], np.ndarray]:
    """(real-base token arrays, labels) of a species eval dataset, for the classical baselines."""
    wins, labels = [], []
    for i in range(len(ds)):
        ids, mask, lab = ds[i]
        wins.append(ids.numpy()[mask.numpy()])
        labels.append(int(lab))
    return wins, np.array(labels)
