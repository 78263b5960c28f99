"""Training batches do not depend on how many loader workers read them: each sample is seeded by its
index in the epoch and each batch comes whole from one worker, in the order the loader collects them.
Real windows of the shipped lambda phage genome and of the shipped species manifest."""

from pathlib import Path

import pytest
import torch

import genomamba
from genomamba.data.species import SpeciesManifest, SpeciesWindows
from genomamba.data.store import MemoryStore
from genomamba.data.windows import RandomWindows, epoch_sample_ids
from genomamba.lit.datamodules import _train_loader

ASSETS = Path(genomamba.__file__).parent / "assets"


def _batches(ds, batch_size, workers):
    loader = _train_loader(ds, batch_size, workers)
    got = [tuple(t.clone() for t in b) for b in loader]
    assert len(got) == len(loader)  # the progress bar's count is the real one
    return got


def _same(a, b):
    assert [len(x[0]) for x in a] == [len(x[0]) for x in b]
    for x, y in zip(a, b):
        assert all(torch.equal(s, t) for s, t in zip(x, y))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_dna_windows_equal_for_any_worker_count(workers):
    store = MemoryStore.from_fasta(ASSETS / "lambda_virus.fa.gz")
    ds = RandomWindows(store, 64, seed=0, rc_prob=0.5, num_samples=10)
    ds.set_epoch(2)
    alone = _batches(ds, 4, 0)
    assert [len(b[0]) for b in alone] == [4, 4, 2]
    _same(_batches(ds, 4, workers), alone)
    ds.set_epoch(3)
    assert not torch.equal(_batches(ds, 4, 0)[0][0], alone[0][0])  # another epoch, other windows


def test_species_windows_equal_for_any_worker_count():
    manifest = SpeciesManifest.from_file(ASSETS / "manifest.yaml")
    ds = SpeciesWindows(manifest, "train", 200, seed=5, num_samples=7, rc_prob=0.5)
    alone = _batches(ds, 3, 0)
    assert [len(b[0]) for b in alone] == [3, 3, 1]
    _same(_batches(ds, 3, 2), alone)


def test_epoch_samples_split_over_ranks_and_workers():
    """Every rank takes total // world samples, none twice; its batches go to its workers in turn."""
    total, size = 23, 4
    for world in (1, 2, 3):
        seen = []
        for rank in range(world):
            alone = list(epoch_sample_ids(total, size, rank, world, 0, 1))
            assert len(alone) == total // world
            for workers in (2, 3):
                parts = [list(epoch_sample_ids(total, size, rank, world, w, workers)) for w in range(workers)]
                batches = [p[i:i + size] for p in parts for i in range(0, len(p), size)]
                order = sorted(batches, key=lambda b: b[0])  # the loader's turn order
                assert sum(order, []) == alone
            seen += alone
        assert len(set(seen)) == len(seen) == (total // world) * world
