"""Training windows, tiled evaluation windows and leak-free splits over a token store.

Guarantee behind every split here: a training window is always drawn *inside one training
region* (start in ``[r.start, r.stop - L]``; a region shorter than L is returned whole and
right-padded). Training regions and evaluation regions are disjoint by construction, and
``assert_no_overlap`` checks it on the actual coordinates, so no evaluation base can ever sit
inside a training window.
"""

from __future__ import annotations

import bisect
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset, DistributedSampler, IterableDataset, get_worker_info

from genomamba.data.store import SequenceSource
from genomamba.files import read_text


@dataclass(frozen=True, order=True)
class Region:
    """Half-open interval ``[start, stop)`` of one contig (0-based)."""

    contig: str
    start: int
    stop: int

    def __post_init__(self):
        if not (0 <= self.start <= self.stop):
            raise ValueError(f"bad region {self.contig}:[{self.start}, {self.stop})")

    def __len__(self) -> int:
        return self.stop - self.start

    def __str__(self) -> str:
        return f"{self.contig}:{self.start}-{self.stop}"


class DataLeakError(AssertionError):
    """An evaluation base lies inside a training window."""


@dataclass
class Splits:
    train: list = field(default_factory=list)
    val: list = field(default_factory=list)
    test: list = field(default_factory=list)

    def __getitem__(self, name: str) -> list:
        if name not in ("train", "val", "test"):
            raise KeyError(f"split must be train/val/test, got {name!r}")
        return getattr(self, name)

    def to_dict(self) -> dict:
        return {k: [[r.contig, r.start, r.stop] for r in getattr(self, k)] for k in ("train", "val", "test")}

    @classmethod
    def from_dict(cls, d: dict) -> "Splits":
        return cls(
            **{k: [Region(c, int(a), int(b)) for c, a, b in d.get(k, [])] for k in ("train", "val", "test")}
        )

    def check(self) -> None:
        """Raise DataLeakError if any two splits share a base."""
        assert_no_overlap(self.train, self.val + self.test)
        assert_no_overlap(self.val, self.test)


# --------------------------------------------------------------------------- splits
def whole_contigs(source: SequenceSource, names: Optional[Iterable[str]] = None) -> list[Region]:
    names = source.names if names is None else list(names)
    return [Region(n, 0, source.contigs[source.index(n)].length) for n in names]


def _match(source: SequenceSource, patterns: Iterable[str], what: str) -> set:
    chosen = set()
    for p in patterns:
        if p in source._name_to_index:
            chosen.add(p)
            continue
        try:
            hits = [n for n in source.names if re.fullmatch(p, n)]
        except re.error as e:
            raise ValueError(f"{what} {p!r}: neither a contig name nor a valid regular expression ({e})") from None
        if not hits:
            raise KeyError(f"{what} {p!r} matches no contig (first names: {source.names[:5]})")
        chosen.update(hits)
    return chosen


def split_by_contig(source: SequenceSource, val: Iterable[str] = (), test: Iterable[str] = ()) -> Splits:
    """Whole contigs held out. Names or full-match regexes, e.g. ``test=[r".*chr2[123]"]``."""
    v, t = _match(source, val, "val contig"), _match(source, test, "test contig")
    if v & t:
        raise ValueError(f"contigs in both val and test: {sorted(v & t)}")
    s = Splits()
    for r in whole_contigs(source):
        (s.test if r.contig in t else s.val if r.contig in v else s.train).append(r)
    return s


def split_by_genome(source: SequenceSource, val: Iterable[str] = (), test: Iterable[str] = ()) -> Splits:
    """Whole genomes/strains (source files) held out."""
    val, test = set(val), set(test)
    unknown = (val | test) - set(source.genomes)
    if unknown:
        raise KeyError(f"unknown genome(s) {sorted(unknown)}; store has {source.genomes}")
    s = Splits()
    for r in whole_contigs(source):
        g = source.genome_of(r.contig)
        (s.test if g in test else s.val if g in val else s.train).append(r)
    return s


def split_by_region(
    source: SequenceSource,
    val_frac: float = 0.05,
    test_frac: float = 0.05,
    block: int = 100_000,
    seed: int = 0,
) -> Splits:
    """Cut every contig into ``block``-sized pieces and assign them to splits by a seeded draw.

    Adjacent pieces of one split are merged, so training regions are as long as possible (a
    window can only be drawn inside one region: pieces shorter than L only yield padded windows).
    Each contig draws from its own generator, seeded by ``seed`` and the contig's name, so its
    split does not depend on which other contigs (or files) are in ``source``, nor on their order.
    """
    if not (0 <= val_frac and 0 <= test_frac and val_frac + test_frac < 1):
        raise ValueError(f"bad fractions val={val_frac} test={test_frac}")
    if block <= 0:
        raise ValueError("block must be positive")
    s = Splits()
    for c in source.contigs:
        n_blocks = -(-c.length // block)
        u = np.random.default_rng([seed, zlib.crc32(c.name.encode("utf-8"))]).random(n_blocks)
        labels = np.where(u < test_frac, 2, np.where(u < test_frac + val_frac, 1, 0))
        cur, cur_start = labels[0], 0
        for b in range(1, n_blocks + 1):
            if b == n_blocks or labels[b] != cur:
                stop = min(b * block, c.length)
                (s.train, s.val, s.test)[int(cur)].append(Region(c.name, cur_start, stop))
                if b < n_blocks:
                    cur, cur_start = labels[b], b * block
    return s


def split_from_file(source: SequenceSource, path) -> Splits:
    """Splits from a YAML/JSON file: ``{split_by: contig|genome, val: [...], test: [...]}``
    (names or full-match regexes), or ``{train: [[contig, start, stop], ...], val: ..., test: ...}``."""
    doc = yaml.safe_load(read_text(path))  # JSON is YAML
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping")
    by = doc.get("split_by")
    if by not in (None, "contig", "genome"):
        raise ValueError(f"{path}: split_by must be 'contig' or 'genome', got {by!r}")
    try:
        if by is None:
            s = Splits.from_dict(doc)
        else:
            split = split_by_contig if by == "contig" else split_by_genome
            s = split(source, val=doc.get("val") or (), test=doc.get("test") or ())
    except (KeyError, ValueError) as e:  # the same kind of error, naming the file
        raise type(e)(f"{path}: {e.args[0] if e.args else e}") from None
    s.check()
    return s


def assert_no_overlap(train_windows, eval_regions: Iterable) -> None:
    """Prove that no evaluation base lies inside any training window.

    Args:
        train_windows: Regions / ``(contig, start, stop)`` tuples of training windows, or a
            ``RandomWindows`` dataset (then its regions: the set every window it can draw lies in).
        eval_regions: Regions / tuples (or an evaluation dataset with ``.windows``/``.regions``).

    Raises:
        DataLeakError: naming the first shared base, the training window and the eval region.
    """
    tw = _as_regions(train_windows)
    ev = _as_regions(eval_regions)
    by_contig: dict[str, list] = defaultdict(list)
    for r in ev:
        if len(r):
            by_contig[r.contig].append((r.start, r.stop))
    index = {}
    for c, iv in by_contig.items():
        iv.sort()
        # Merge, then each lookup is one bisect: O((n + m) log m) overall.
        merged = [list(iv[0])]
        for a, b in iv[1:]:
            if a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        index[c] = ([m[0] for m in merged], [m[1] for m in merged])
    for w in tw:
        if not len(w) or w.contig not in index:
            continue
        starts, stops = index[w.contig]
        k = bisect.bisect_right(starts, w.stop - 1) - 1  # last eval interval starting before w ends
        if k >= 0 and stops[k] > w.start:
            base = max(w.start, starts[k])
            raise DataLeakError(
                f"evaluation base {w.contig}:{base} lies inside training window {w} "
                f"(eval interval {w.contig}:{starts[k]}-{stops[k]})"
            )


def _as_regions(x) -> list[Region]:
    if hasattr(x, "support"):
        return list(x.support())
    if hasattr(x, "windows") and not callable(x.windows):
        return list(x.windows)
    out = []
    for r in x:
        out.append(r if isinstance(r, Region) else Region(str(r[0]), int(r[1]), int(r[2])))
    return out


# --------------------------------------------------------------------------- datasets
def data_rank() -> tuple:
    """(rank, world) of this process among the torch.distributed processes ((0, 1) without them)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def epoch_sample_ids(total: int, batch_size: int, rank: int, world: int, worker: int,
                     n_workers: int) -> Iterator[int]:
    """The indices (in [0, total)) of the epoch's samples that loader worker ``worker`` of rank
    ``rank`` yields, in order. Every rank takes the same ``total // world`` (ranks that stop together
    keep their collectives in step), cut into batches of ``batch_size``; a rank's batches go to its
    workers in turn, the order a DataLoader collects them in. Seeding each sample by its index then
    makes the batches a rank trains on the same for any number of workers."""
    per_rank = total // world if world > 1 else total
    first, size = rank * per_rank, max(1, int(batch_size))
    for j in range(worker, -(-per_rank // size), n_workers):
        yield from range(first + j * size, first + min((j + 1) * size, per_rank))


def loader_worker() -> tuple:
    """(worker id, number of workers) of the DataLoader worker this runs in ((0, 1) in the main process)."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class EvalShard(DistributedSampler):
    """Items ``rank, rank + world, ...`` of a map-style evaluation dataset: each item on exactly one
    shard, none repeated to even them out (a plain ``DistributedSampler`` pads with repeats, which
    counts those windows twice). Ranks that read the same sequences (one context-parallel group)
    share a shard."""

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.indices = list(range(rank, len(dataset), num_replicas))
        self.num_samples = len(self.indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _pad(ids: np.ndarray, soft: Optional[np.ndarray], length: int, pad_id: int):
    n = ids.shape[0]
    out = np.empty(length, dtype=np.int64)
    out[:n] = ids
    out[n:] = pad_id
    mask = np.zeros(length, dtype=np.bool_)
    mask[:n] = True
    sm = None
    if soft is not None:
        sm = np.zeros(length, dtype=np.bool_)
        sm[:n] = soft
    return out, mask, sm


def check_rc_prob(source: SequenceSource, rc_prob: float, arg: str = "rc_prob") -> None:
    """Reverse complement is a DNA operation: refuse ``rc_prob > 0`` on tokens without one."""
    if rc_prob > 0 and not hasattr(source.tokenizer, "reverse_complement"):
        name = getattr(source.tokenizer, "name", type(source.tokenizer).__name__)
        raise ValueError(f"{arg}={rc_prob}: reverse complement applies to DNA only; set it to 0 for {name!r} tokens")


def _resolve_regions(source: SequenceSource, regions) -> list[Region]:
    regs = whole_contigs(source) if regions is None else _as_regions(regions)
    for r in regs:
        n = source.contigs[source.index(r.contig)].length
        if r.stop > n:
            raise ValueError(f"region {r} runs past the end of contig {r.contig!r} (length {n})")
    regs = [r for r in regs if len(r) > 0]
    if not regs:
        raise ValueError("no non-empty regions to draw windows from")
    return regs


class RandomWindows(IterableDataset):
    """Random windows of length L inside ``regions``; yields ``(ids int64 (L,), mask bool (L,))``.

    ``mask`` is True on real bases, False on padding (only a region shorter than L is padded).
    With ``return_softmask=True`` a third item, the soft-mask (lowercase in the FASTA), follows:
    use it as a loss weight, never as an input.

    Sampling: a region with probability proportional to its length, then a start uniform over
    the positions where the window fits. A window whose N fraction exceeds ``max_n_frac`` is
    redrawn (counted from the store's N-run index, without reading the window). With probability
    ``rc_prob`` the window is reverse-complemented (padding stays at the right).

    Determinism: sample k of an epoch is a function of (seed, epoch, k); call ``set_epoch``. With
    ``batch_size`` set to the loader's (the training loaders set it), the batches are the same for any
    number of loader workers.
    """

    def __init__(
        self,
        source: SequenceSource,
        length: int,
        regions=None,
        seed: int = 0,
        rc_prob: float = 0.0,
        max_n_frac: float = 1.0,
        num_samples: int = 1000,
        return_softmask: bool = False,
        max_tries: int = 1000,
    ):
        if length <= 0:
            raise ValueError(f"window length must be positive, got {length}")
        if not 0.0 <= rc_prob <= 1.0:
            raise ValueError(f"rc_prob must be in [0, 1], got {rc_prob}")
        if not 0.0 <= max_n_frac <= 1.0:
            raise ValueError(f"max_n_frac must be in [0, 1], got {max_n_frac}")
        check_rc_prob(source, rc_prob)
        self.source = source
        self.length = int(length)
        self.regions = _resolve_regions(source, regions)
        self.seed = int(seed)
        self.rc_prob = float(rc_prob)
        self.max_n_frac = float(max_n_frac)
        self.num_samples = int(num_samples)
        self.return_softmask = return_softmask
        self.max_tries = int(max_tries)
        self.epoch = 0
        # (data-parallel rank, size) when set: ranks that share it draw the same windows (the ranks of a
        # context-parallel group); None: this process's torch.distributed rank and world.
        self.shard: Optional[tuple] = None
        self.batch_size = 1  # the loader's: each batch comes from one worker (see epoch_sample_ids)
        # Cumulative lengths + searchsorted: O(log n) per draw even with thousands of regions.
        self._cum = np.cumsum(np.array([len(r) for r in self.regions], dtype=np.int64))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def support(self) -> list[Region]:
        """Every window this dataset can yield lies inside one of these regions."""
        return list(self.regions)

    def draw(self, rng: np.random.Generator) -> Region:
        """One window's coordinates (after the max-N filter)."""
        L = self.length
        for _ in range(self.max_tries):
            k = int(np.searchsorted(self._cum, rng.integers(0, self._cum[-1]), side="right"))
            r = self.regions[k]
            if len(r) <= L:
                w = Region(r.contig, r.start, r.stop)
            else:
                s = r.start + int(rng.integers(0, len(r) - L + 1))
                w = Region(r.contig, s, s + L)
            if self.max_n_frac >= 1.0 or self.source.n_count(
                w.contig, w.start, w.stop
            ) <= self.max_n_frac * len(w):
                return w
        raise RuntimeError(
            f"no window with N fraction <= {self.max_n_frac} after {self.max_tries} draws "
            f"(L={L}); the regions are mostly N, lower L or raise max_n_frac"
        )

    def sample_rng(self, k: int) -> np.random.Generator:
        """The generator of the epoch's sample ``k``: its window, its strand."""
        return np.random.default_rng([self.seed, self.epoch, k])

    def load(self, w: Region, rng: np.random.Generator):
        tok = self.source.tokenizer
        ids = self.source.read(w.contig, w.start, w.stop)
        soft = self.source.softmask(w.contig, w.start, w.stop) if self.return_softmask else None
        # The coin is always tossed, so rc_prob changes which windows flip, never which are drawn.
        if rng.random() < self.rc_prob:
            # On the uint8 read, before widening: 8x less memory traffic than on int64.
            if soft is None:
                ids = tok.reverse_complement(ids)
            else:  # the soft-mask moves with its bases
                ids, soft = tok.reverse_complement(ids, soft)
        out, mask, sm = _pad(ids, soft, self.length, tok.pad_id)
        item = (torch.from_numpy(out), torch.from_numpy(mask))
        return item + (torch.from_numpy(sm),) if sm is not None else item

    def __iter__(self) -> Iterator:
        wid, nw = loader_worker()
        rank, world = data_rank() if self.shard is None else self.shard
        for k in epoch_sample_ids(self.num_samples, self.batch_size, rank, world, wid, nw):
            rng = self.sample_rng(k)
            yield self.load(self.draw(rng), rng)


class TiledWindows(Dataset):
    """Deterministic evaluation windows tiling ``regions``; item ``(ids int64 (L,), mask bool (L,))``.

    Tiles start at ``region.start`` every ``stride`` (default L) bases; the last tile of a region
    is shorter and padded (mask False). With stride == L every base lies in exactly one tile; a
    next-base score counts each base once except each tile's first, which has no context in its tile
    (a fraction 1 / L of the bases).
    ``max_windows`` keeps a seeded subset (the same subset every epoch and every run).
    """

    def __init__(
        self,
        source: SequenceSource,
        length: int,
        regions=None,
        stride: Optional[int] = None,
        max_windows: Optional[int] = None,
        seed: int = 0,
        return_softmask: bool = False,
    ):
        if length <= 0:
            raise ValueError(f"window length must be positive, got {length}")
        self.source = source
        self.length = int(length)
        self.stride = int(stride or length)
        if self.stride <= 0:
            raise ValueError("stride must be positive")
        self.regions = _resolve_regions(source, regions)
        self.return_softmask = return_softmask
        wins = []
        for r in self.regions:
            for s in range(r.start, r.stop, self.stride):
                wins.append(Region(r.contig, s, min(s + self.length, r.stop)))
                if s + self.length >= r.stop:
                    break
        if max_windows is not None and len(wins) > max_windows:
            keep = np.sort(np.random.default_rng(seed).choice(len(wins), size=max_windows, replace=False))
            wins = [wins[i] for i in keep]
        self.windows: list[Region] = wins

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        w = self.windows[i]
        ids = self.source.read(w.contig, w.start, w.stop)
        soft = self.source.softmask(w.contig, w.start, w.stop) if self.return_softmask else None
        out, mask, sm = _pad(ids, soft, self.length, self.source.tokenizer.pad_id)
        item = (torch.from_numpy(out), torch.from_numpy(mask))
        return item + (torch.from_numpy(sm),) if sm is not None else item


def regions_total(regions: Sequence[Region]) -> int:
    return int(sum(len(r) for r in regions))
