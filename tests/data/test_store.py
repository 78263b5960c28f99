import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from genomamba.data import FastaFormatError, MemoryStore, TokenStore, read_fasta
from genomamba.data.fetch import asset_files
from genomamba.data.store import runs_of
from genomamba.data.windows import RandomWindows
from genomamba.tokenizers.dna import DNATokenizer

TOK = DNATokenizer()


@pytest.fixture(scope="module")
def fly_slice():
    return asset_files()["fly_chr2R_slice"]["path"]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, fly_slice):
    files = [fly_slice, asset_files()["lambda"]["path"]]
    return TokenStore.build(files, tmp_path_factory.mktemp("s") / "small.h5")


def test_store_equals_tokenized_fasta(small_store, fly_slice):
    recs = list(read_fasta(fly_slice)) + list(read_fasta(asset_files()["lambda"]["path"]))
    assert [c.name for c in small_store.contigs] == [r.name for r in recs]
    assert small_store.genomes == ["fly_chr2R_slice", "lambda_virus"]
    for i, r in enumerate(recs):
        ids, soft = TOK.encode(r.sequence, return_mask=True)
        n = len(r.sequence)
        name, length = small_store.contigs[i]  # contigs unpack as (name, length)
        assert length == n
        assert np.array_equal(small_store.read(name, 0, n), ids)
        assert np.array_equal(small_store.softmask(i, 0, n), soft)
        a, b = n // 3, n // 3 + 1234
        assert np.array_equal(small_store.read(i, a, b), ids[a:b])
        assert np.array_equal(small_store.softmask(i, a, b), soft[a:b])
    assert small_store.softmask(0, 0, 100_000).sum() > 1000  # real soft-masked repeats survived


def test_softmask_is_not_in_tokens(small_store):
    soft = small_store.softmask(0, 0, 100_000)
    ids = small_store.read(0, 0, 100_000)
    assert set(np.unique(ids[soft])) <= {TOK.a_id, TOK.c_id, TOK.g_id, TOK.t_id, TOK.n_id}


def test_bounds_and_names(small_store):
    n = small_store.contigs[0].length
    with pytest.raises(ValueError, match="outside contig"):
        small_store.read(0, n - 5, n + 1)
    with pytest.raises(ValueError, match="outside contig"):
        small_store.read(0, 10, 5)
    with pytest.raises(KeyError, match="no contig 'nope'"):
        small_store.read("nope", 0, 1)
    with pytest.raises(IndexError):
        small_store.read(99, 0, 1)
    assert small_store.read(0, 7, 7).shape == (0,)


def test_n_runs_index_on_real_umaydis(umaydis_store):
    st = umaydis_store
    assert len(st.contigs) == 36 and int(st.lengths.sum()) == 19_702_792
    for i in (0, 5, 22):
        n = st.contigs[i].length
        ids = st.read(i, 0, n)
        runs = runs_of(ids == TOK.n_id)
        assert np.array_equal(st.n_runs(i), runs)
        assert st.n_count(i, 0, n) == int((ids == TOK.n_id).sum()) > 0
        rng = np.random.default_rng(i)
        for _ in range(50):
            a = int(rng.integers(0, n))
            b = int(rng.integers(a, n + 1))
            assert st.n_count(i, a, b) == int((ids[a:b] == TOK.n_id).sum())


def test_source_checksums(tmp_path, fly_slice):
    import shutil

    src = tmp_path / "fly.fa.gz"
    shutil.copy(fly_slice, src)
    st = TokenStore.build([src], tmp_path / "s.h5")
    assert st.verify_sources() == []
    src.write_bytes(b">x\nACGT\n")
    assert st.verify_sources() == [str(src)]


def test_sources_are_found_from_any_folder(tmp_path, fly_slice, monkeypatch):
    """A store built from a path relative to the folder of the build checks its sources from anywhere."""
    import shutil

    (tmp_path / "work").mkdir()
    shutil.copy(fly_slice, tmp_path / "work" / "fly.fa.gz")
    monkeypatch.chdir(tmp_path / "work")
    TokenStore.build(["fly.fa.gz"], "s.h5")
    monkeypatch.chdir(tmp_path)
    st = TokenStore(tmp_path / "work" / "s.h5")
    assert st.source_paths == [str(tmp_path / "work" / "fly.fa.gz")]
    assert st.verify_sources() == []


def test_bad_input_leaves_no_store(tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_bytes(b">a\nACGT\n>b\nMKLV\n")
    out = tmp_path / "out.h5"
    with pytest.raises(FastaFormatError, match="bad.fa"):
        TokenStore.build([bad], out)
    assert not out.exists() and not (tmp_path / "out.h5.tmp").exists()


def test_name_collision_across_files(tmp_path):
    a, b = tmp_path / "a.fa", tmp_path / "b.fa"
    a.write_bytes(b">chr1\nACGT\n")
    b.write_bytes(b">chr1\nGGGG\n")
    with pytest.raises(FastaFormatError, match="genome_ids"):
        TokenStore.build([a, b], tmp_path / "x.h5")
    st = TokenStore.build([a, b], tmp_path / "x.h5", genome_ids=["A", "B"])
    assert st.names == ["A:chr1", "B:chr1"] and st.genome_of("B:chr1") == "B"


def test_not_a_store(tmp_path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="cannot open"):
        TokenStore(p)


def test_memory_store_matches_token_store(small_store, fly_slice):
    mem = MemoryStore.from_fasta([fly_slice, asset_files()["lambda"]["path"]])
    assert mem.contigs == small_store.contigs
    for i, (_, n) in enumerate(mem.contigs):
        assert np.array_equal(mem.read(i, 0, n), small_store.read(i, 0, n))
        assert np.array_equal(mem.softmask(i, 0, n), small_store.softmask(i, 0, n))


def test_pickles_and_reads_in_worker_processes(small_store):
    st2 = pickle.loads(pickle.dumps(small_store))
    assert np.array_equal(st2.read(0, 0, 100), small_store.read(0, 0, 100))
    ds = RandomWindows(small_store, 2048, seed=3, num_samples=8)
    single = torch.stack([x for x, _ in ds])
    ds.batch_size = 4
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=False)
    multi = torch.cat([x for x, _ in loader])
    assert torch.equal(multi, single)  # each sample seeded by its index: the same windows in workers
    again = torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=2)])
    assert torch.equal(multi, again)
    assert single.shape == (8, 2048)
