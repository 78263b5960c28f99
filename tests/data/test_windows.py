import numpy as np
import pytest
import torch

from genomamba.data import MemoryStore
from genomamba.data.fetch import asset_files
from genomamba.data.windows import (
    DataLeakError,
    RandomWindows,
    Region,
    Splits,
    TiledWindows,
    assert_no_overlap,
    split_by_contig,
    split_by_genome,
    split_by_region,
)
from genomamba.tokenizers.dna import DNATokenizer

TOK = DNATokenizer()
UM_TEST = r"Umaydis:chr2[123]:.*"


@pytest.fixture(scope="module")
def assets_store():
    a = asset_files()
    return MemoryStore.from_fasta(
        [
            a["umaydis_train"]["path"],
            a["umaydis_test"]["path"],
            a["lambda"]["path"],
            a["fly_chr2R_slice"]["path"],
        ]
    )


def test_random_windows_shape_dtype_inside_regions(umaydis_store):
    L = 1 << 20
    big = [c.name for c in umaydis_store.contigs if c.length > L]
    regions = [Region(n, 0, umaydis_store.contigs[umaydis_store.index(n)].length) for n in big]
    ds = RandomWindows(umaydis_store, L, regions=regions, seed=0, num_samples=3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        w = ds.draw(rng)
        assert len(w) == L and any(
            r.contig == w.contig and r.start <= w.start and w.stop <= r.stop for r in regions
        )
    for ids, mask in ds:
        assert ids.shape == (L,) and ids.dtype == torch.int64
        assert mask.shape == (L,) and mask.dtype == torch.bool and bool(mask.all())


def test_determinism_by_seed_and_epoch(assets_store):
    ds = RandomWindows(assets_store, 1000, seed=7, num_samples=5, rc_prob=0.5)
    a = [x for x, _ in ds]
    b = [x for x, _ in ds]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ds.set_epoch(1)
    c = [x for x, _ in ds]
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    ds2 = RandomWindows(assets_store, 1000, seed=8, num_samples=5, rc_prob=0.5)
    assert not all(torch.equal(x, y) for x, (y, _) in zip(a, ds2))


def test_rc_augmentation(assets_store):
    fwd = RandomWindows(assets_store, 500, seed=1, num_samples=20, rc_prob=0.0, return_softmask=True)
    rc = RandomWindows(assets_store, 500, seed=1, num_samples=20, rc_prob=1.0, return_softmask=True)
    # Same draws (rc only consumes one extra random number per window after drawing).
    rng_f, rng_r = np.random.default_rng([1, 0, 0]), np.random.default_rng([1, 0, 0])
    for _ in range(20):
        wf, wr = fwd.draw(rng_f), rc.draw(rng_r)
        assert wf == wr
        ids_f, _, sm_f = fwd.load(wf, rng_f)
        ids_r, _, sm_r = rc.load(wr, rng_r)
        assert torch.equal(ids_r, torch.from_numpy(TOK.reverse_complement(ids_f.numpy())))
        assert torch.equal(sm_r, sm_f.flip(0))


def test_short_contig_padded_not_dropped(assets_store):
    L = 60_000  # lambda (48,502) is shorter
    ds = RandomWindows(
        assets_store, L, regions=[("gi|9626243|ref|NC_001416.1|", 0, 48502)], num_samples=2, rc_prob=1.0
    )
    for ids, mask in ds:
        assert int(mask.sum()) == 48502 and bool(mask[:48502].all())
        assert bool((ids[48502:] == TOK.pad_id).all())
        assert bool((ids[:48502] >= TOK.first_base_id).all())


def test_max_n_filter(tmp_path):
    # Real lambda with a 20 kb N gap written into its middle: windows over the gap must be refused.
    from genomamba.data import read_fasta

    seq = next(iter(read_fasta(asset_files()["lambda"]["path"]))).sequence
    gapped = seq[:15000] + "N" * 20000 + seq[35000:]
    p = tmp_path / "gap.fa"
    p.write_text(">gap\n" + gapped + "\n")
    st = MemoryStore.from_fasta(p)
    ds = RandomWindows(st, 5000, seed=0, max_n_frac=0.1, num_samples=300)
    rng = np.random.default_rng(0)
    for _ in range(300):
        w = ds.draw(rng)
        assert st.n_count(w.contig, w.start, w.stop) <= 500
    for ids, _ in ds:
        assert int((ids == TOK.n_id).sum()) <= 500
    all_n = RandomWindows(st, 5000, regions=[("gap", 16000, 34000)], max_n_frac=0.1, max_tries=20)
    with pytest.raises(RuntimeError, match="N fraction"):
        next(iter(all_n))


def test_tiled_windows_cover_once_and_are_stable(assets_store):
    regs = [Region(c.name, 0, c.length) for c in assets_store.contigs]
    tw = TiledWindows(assets_store, 7000, regions=regs)
    cover = {r.contig: np.zeros(len(r), np.int32) for r in regs}
    for w in tw.windows:
        cover[w.contig][w.start : w.stop] += 1
    assert all((c == 1).all() for c in cover.values())
    ids, mask = tw[len(tw) - 1]
    assert ids.shape == (7000,) and int(mask.sum()) == len(tw.windows[-1])
    sub1 = TiledWindows(assets_store, 7000, regions=regs, max_windows=5, seed=3).windows
    sub2 = TiledWindows(assets_store, 7000, regions=regs, max_windows=5, seed=3).windows
    assert sub1 == sub2 and len(sub1) == 5


def test_splits_are_disjoint_and_windows_never_leak(umaydis_store):
    s = split_by_contig(umaydis_store, test=[UM_TEST])
    assert sorted(r.contig.split(":")[1] for r in s.test) == ["chr21", "chr22", "chr23"]
    s.check()
    ds = RandomWindows(umaydis_store, 1 << 16, regions=s.train, seed=0)
    assert_no_overlap(ds, s.test)  # by support: every possible window
    rng = np.random.default_rng(0)
    assert_no_overlap([ds.draw(rng) for _ in range(2000)], s.test)  # and on drawn coordinates

    r = split_by_region(umaydis_store, val_frac=0.1, test_frac=0.1, block=50_000, seed=1)
    r.check()
    total = sum(len(x) for x in r.train + r.val + r.test)
    assert total == int(umaydis_store.lengths.sum())
    ds = RandomWindows(umaydis_store, 10_000, regions=r.train, seed=0)
    assert_no_overlap([ds.draw(rng) for _ in range(2000)], r.val + r.test)
    assert Splits.from_dict(r.to_dict()) == r


def test_leaky_split_is_caught(umaydis_store):
    s = split_by_contig(umaydis_store, test=[UM_TEST])
    chr21 = s.test[0]
    leaky_train = s.train + [Region(chr21.contig, 100_000, 200_000)]
    with pytest.raises(DataLeakError, match="lies inside training window"):
        assert_no_overlap(RandomWindows(umaydis_store, 4096, regions=leaky_train), s.test)
    # one shared base is enough
    with pytest.raises(DataLeakError, match=r"chr21.*:999"):
        assert_no_overlap([(chr21.contig, 0, 1000)], [(chr21.contig, 999, 2000)])
    assert_no_overlap([(chr21.contig, 0, 999)], [(chr21.contig, 999, 2000)])  # half-open: touching is fine
    # region split with a window drawn across a block boundary
    r = split_by_region(umaydis_store, test_frac=0.2, block=10_000, seed=0)
    t = r.test[0]
    with pytest.raises(DataLeakError):
        assert_no_overlap([(t.contig, t.start - 5000, t.start + 5000)], r.test)
    bad = Splits(train=s.train + [chr21], test=s.test)
    with pytest.raises(DataLeakError):
        bad.check()


def test_split_by_genome(tmp_path):
    a = asset_files()
    st = MemoryStore.from_fasta(
        [a["umaydis_train"]["path"], a["umaydis_test"]["path"]], genome_ids=["tr", "te"]
    )
    s = split_by_genome(st, test=["te"])
    assert {st.genome_of(r.contig) for r in s.test} == {"te"}
    assert {st.genome_of(r.contig) for r in s.train} == {"tr"}
    s.check()
    with pytest.raises(KeyError, match="unknown genome"):
        split_by_genome(st, test=["nope"])


def test_bad_arguments(assets_store):
    with pytest.raises(ValueError):
        RandomWindows(assets_store, 0)
    with pytest.raises(ValueError):
        RandomWindows(assets_store, 10, rc_prob=2)
    with pytest.raises(ValueError, match="runs past the end"):
        RandomWindows(assets_store, 10, regions=[(assets_store.names[0], 0, 10**9)])
    with pytest.raises(KeyError, match="matches no contig"):
        split_by_contig(assets_store, test=["chrZZ"])
    with pytest.raises(ValueError, match=r"test contig 'chr1\(': neither a contig name nor a valid regular"):
        split_by_contig(assets_store, test=["chr1("])


def test_split_file_errors_name_the_file(assets_store, tmp_path):
    from genomamba.data.windows import split_from_file

    p = tmp_path / "split.yaml"
    p.write_text("split_by: contig\nval: ['chr1(']\n")
    with pytest.raises(ValueError, match=r"split\.yaml: val contig 'chr1\(': neither"):
        split_from_file(assets_store, p)
    p.write_text("split_by: contig\ntest: [chrZZ]\n")
    with pytest.raises(KeyError, match=r"split\.yaml: test contig 'chrZZ' matches no contig"):
        split_from_file(assets_store, p)


def test_split_from_file_umaydis(real_data, umaydis_store, tmp_path):
    from genomamba.data.windows import split_from_file

    s = split_from_file(umaydis_store, real_data("umaydis") / "split.yaml")
    assert len(s.test) == 3 and len(s.train) == 33 and not s.val
    p = tmp_path / "explicit.json"
    import json

    p.write_text(json.dumps(s.to_dict()))
    assert split_from_file(umaydis_store, p) == s
    p.write_text(json.dumps({"train": [[s.test[0].contig, 0, 10]], "test": [[s.test[0].contig, 5, 20]]}))
    with pytest.raises(DataLeakError):
        split_from_file(umaydis_store, p)
