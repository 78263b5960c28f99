"""Parse parity with Bio.SeqIO on every real genome ``genomamba.data.fetch`` knows, fetched from Debian."""

import gzip
import importlib.util
import lzma
from pathlib import Path

import pytest
from Bio import SeqIO

from genomamba.data import read_records
from genomamba.data.fasta import sniff_compression
from genomamba.data.fetch import DATASETS

ROOT = Path(__file__).resolve().parents[2]


def _bio_records(path: Path, fmt: str):
    kind = sniff_compression(path)
    opener = {"gzip": gzip.open, "bgzf": gzip.open, "xz": lzma.open}.get(kind, open)
    with opener(path, "rt") as fh:
        return list(SeqIO.parse(fh, fmt))


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_parity_with_biopython(real_data, dataset):
    folder = real_data(dataset)
    n_files = n_records = n_bases = 0
    for f in DATASETS[dataset]:
        path = folder / f.dest
        fmt = "genbank" if ".gbk" in f.dest else "fasta"
        ours = list(read_records(path))
        bio = _bio_records(path, fmt)
        assert len(ours) == len(bio), path
        for a, b in zip(ours, bio):
            assert a.name == b.id, path
            assert a.description == b.description, path
            assert a.sequence == str(b.seq), (path, a.name)
        n_files += 1
        n_records += len(ours)
        n_bases += sum(len(r.sequence) for r in ours)
    print(f"{dataset}: {n_files} files, {n_records} records, {n_bases:,} bases identical to Bio.SeqIO")
    assert n_bases > 0


def test_known_genome_facts(real_data):
    fly = next(iter(read_records(real_data("fly") / "chr2R.fa")))
    lower = sum(c.islower() for c in fly.sequence)
    assert len(fly.sequence) == 21_146_708 and 0.10 < lower / len(fly.sequence) < 0.11  # 10.5 % soft-masked
    um = list(read_records(real_data("umaydis") / "Umaydis.fasta.gz"))
    assert sum(len(r.sequence) for r in um) == 19_702_792 and len(um) == 36
    inaba = list(read_records(real_data("bacteria") / "Vibrio_cholerae/O1_Inaba.fasta.gz"))
    assert sum(r.sequence.upper().count("N") for r in inaba) == 2102


def test_shipped_assets_regenerate_byte_identical(real_data):
    for name in ("bacteria", "umaydis", "fly", "lambda"):
        folder = real_data(name)
    spec = importlib.util.spec_from_file_location("make_assets", ROOT / "data_prep" / "make_assets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = mod.build(folder.parent)
    assets = ROOT / "genomamba" / "assets"
    for rel, data in files.items():
        assert (assets / rel).read_bytes() == data, rel
    assert sum(len(b) for b in files.values()) < 2_000_000
