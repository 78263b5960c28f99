"""How ranks split the data: different training windows per data-parallel rank (the same within a
context-parallel group), equal counts per rank, and evaluation windows each on exactly one shard."""

from __future__ import annotations

import pytest

from genomamba.data.windows import EvalShard
from genomamba.lit.datamodules import PretrainDataModule
from genomamba.parallel import ContextParallelError, layout, slice_bounds


@pytest.fixture(scope="module")
def dm():
    m = PretrainDataModule([{"assets": "pretrain", "splits": ["train", "val"]}], seq_len=64, batch_size=2,
                           train_samples=41, val_windows=7)
    m.setup("fit")
    return m


def _starts(ds, shard):
    ds.shard = shard
    try:
        return [tuple(ids.tolist()) for ids, _ in ds]
    finally:
        ds.shard = None


def test_each_replica_draws_its_own_windows_and_as_many(dm):
    a, b = _starts(dm.train_ds, (0, 2)), _starts(dm.train_ds, (1, 2))
    assert len(a) == len(b) == 41 // 2  # equal per rank: ranks stop on the same step
    assert not set(a) & set(b)
    assert _starts(dm.train_ds, (0, 1)) == _starts(dm.train_ds, None)  # one replica = one process
    assert _starts(dm.train_ds, (1, 2)) == b  # the ranks of one group read the same windows


def test_eval_shards_cover_every_window_once(dm):
    n = len(dm.val_ds)
    shards = [list(EvalShard(dm.val_ds, 3, r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(s) for s in shards] == [len(EvalShard(dm.val_ds, 3, r)) for r in range(3)]


def test_layout_and_slices():
    assert [layout(8, r, 2) for r in (0, 1, 2, 7)] == [(0, 0, 4), (1, 0, 4), (0, 1, 4), (1, 3, 4)]
    with pytest.raises(ContextParallelError, match="divide"):
        layout(6, 0, 4)
    assert [slice_bounds(30, 4, r) for r in range(4)] == [(0, 8), (8, 16), (16, 23), (23, 30)]
