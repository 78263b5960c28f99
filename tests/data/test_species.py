from collections import Counter

import numpy as np
import pytest
import torch

from genomamba.data.species import ManifestError, SpeciesEvalWindows, SpeciesManifest, SpeciesWindows
from genomamba.data.windows import assert_no_overlap

HELD_OUT = {"DH1", "Puno120", "RF122", "O395", "MGH78578"}


def test_shipped_manifest(assets_manifest):
    m = SpeciesManifest.from_file(assets_manifest)
    assert m.num_labels == 5 and m.labels[0] == "Escherichia_coli"
    assert {g.id for g in m.entries("test")} == HELD_OUT
    assert len(m.entries("train")) == 15
    assert all(p.exists() for p in m.files())
    assert m.files("Escherichia_coli", "test")[0].name == "bacteria_DH1.fasta.gz"


def test_class_uniform_sampling_and_labels_match_content(assets_manifest):
    m = SpeciesManifest.from_file(assets_manifest)
    ds = SpeciesWindows(m, "train", 1000, seed=0, num_samples=2000, rc_prob=0.0)
    src = ds.sampler.source
    counts = Counter()
    rng = np.random.default_rng(0)
    for _ in range(4000):
        lab, ci, a, b = ds.sampler.draw(rng, 1000)
        counts[lab] += 1
        assert m.label_of_genome(src.genome_of(ci)) == lab  # window comes from a genome of its class
    # class uniform even though H. pylori has 4 train strains and E. coli one: 800 +- 5 sigma
    for lab in range(5):
        assert abs(counts[lab] - 800) < 5 * np.sqrt(4000 * 0.2 * 0.8), counts
    ids, lab = next(iter(ds))
    assert ids.shape == (1000,) and ids.dtype == torch.int64 and isinstance(lab, int)


def test_contig_weighted_by_length_on_real_plasmids(real_data, tmp_path):
    # K. pneumoniae MGH78578: a 5.3 Mb chromosome and five plasmids (4 kb..175 kb).
    bac = real_data("bacteria")
    p = tmp_path / "k.tsv"
    p.write_text(
        "id\tlabel\tpath\tsplit\nMGH78578\tKp\t"
        + str(bac / "Klebsiella_pneumoniae/MGH78578.fna.xz")
        + "\ttest\n"
    )
    m = SpeciesManifest.from_file(p)
    ds = SpeciesWindows(m, "test", 1000, seed=0)
    src = ds.sampler.source
    lengths = src.lengths
    rng = np.random.default_rng(1)
    hits = Counter(ds.sampler.draw(rng, 1000)[1] for _ in range(20000))
    expected = lengths / lengths.sum()
    for ci, frac in enumerate(expected):
        assert abs(hits[ci] / 20000 - frac) < 5 * np.sqrt(frac * (1 - frac) / 20000) + 1e-3


def test_contig_shorter_than_L_is_padded(tmp_path):
    from genomamba.data.fetch import asset_files

    p = tmp_path / "lam.tsv"
    p.write_text(f"label\tpath\tsplit\nphage\t{asset_files()['lambda']['path']}\ttrain\n")
    m = SpeciesManifest.from_file(p)
    ds = SpeciesWindows(m, "train", 60_000, return_mask=True, num_samples=2, rc_prob=1.0)
    for ids, mask, lab in ds:
        assert lab == 0 and int(mask.sum()) == 48_502
        assert bool((ids[48_502:] == 0).all()) and bool((ids[:48_502] >= 6).all())


def test_eval_windows_deterministic_and_leak_free(assets_manifest):
    m = SpeciesManifest.from_file(assets_manifest)
    a = SpeciesEvalWindows(m, "test", 2000, per_label=10, seed=5)
    b = SpeciesEvalWindows(m, "test", 2000, per_label=10, seed=5)
    assert len(a) == 50 and a.items == b.items
    assert all(torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] for i in range(len(a)))
    assert Counter(a[i][1] for i in range(len(a))) == {k: 10 for k in range(5)}
    # held-out strains: the test windows live in genomes that no training window can touch
    tr = SpeciesWindows(m, "train", 2000)
    train_support = [(c.name, 0, c.length) for c in tr.sampler.source.contigs]
    assert_no_overlap(train_support, a.windows)
    assert not {w.contig.split(":")[0] for w in a.windows} & {g.id for g in m.entries("train")}


def test_yaml_and_tsv_errors(tmp_path):
    y = tmp_path / "m.yaml"
    y.write_text("genomes:\n  - {label: A, path: a.fa, split: training}\n")
    with pytest.raises(ManifestError, match="split must be one of"):
        SpeciesManifest.from_file(y)
    y.write_text("genomes:\n  - {label: A, split: train}\n")
    with pytest.raises(ManifestError, match=r"genomes\[0\]: missing 'path'"):
        SpeciesManifest.from_file(y)
    y.write_text(
        "genomes:\n  - {id: x, label: A, path: a.fa, split: train}\n"
        "  - {id: x, label: B, path: b.fa, split: test}\n"
    )
    with pytest.raises(ManifestError, match="duplicate genome ids"):
        SpeciesManifest.from_file(y)
    y.write_text("labels: [A]\ngenomes:\n  - {label: B, path: b.fa, split: test}\n")
    with pytest.raises(ManifestError, match="not declared"):
        SpeciesManifest.from_file(y)
    y.write_text("genomes: [\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        SpeciesManifest.from_file(y)
    t = tmp_path / "m.tsv"
    t.write_text("label\tpath\nA\ta.fa\n")
    with pytest.raises(ManifestError, match="TSV header"):
        SpeciesManifest.from_file(t)
    t.write_text("# comment\nlabel\tpath\tsplit\nA\tmissing.fa\ttrain\n")
    m = SpeciesManifest.from_file(t)
    with pytest.raises(FileNotFoundError, match="missing.fa"):
        SpeciesWindows(m, "train", 100)
    with pytest.raises(ManifestError, match="no genomes in split 'test'"):
        SpeciesWindows(m, "test", 100)


def test_span_gives_leak_free_validation_on_training_strains(assets_manifest):
    m = SpeciesManifest.from_file(assets_manifest)
    fit = SpeciesWindows(m, "train", 1000, span=(0.0, 0.8))
    val = SpeciesEvalWindows(m, "train", 1000, per_label=40, span=(0.8, 1.0), seed=2)
    assert_no_overlap(fit, val.windows)
    rng = np.random.default_rng(0)
    drawn = []
    for _ in range(3000):
        lab, ci, a, b = fit.sampler.draw(rng, 1000)
        drawn.append((fit.sampler.source.names[ci], a, b))
    assert_no_overlap(drawn, val.windows)
    with pytest.raises(ValueError, match="span"):
        SpeciesWindows(m, "train", 1000, span=(0.5, 0.5))


def test_token_store_source_gives_same_windows(assets_manifest, tmp_path):
    m = SpeciesManifest.from_file(assets_manifest)
    store = m.build_store(tmp_path / "assets.h5")
    a = SpeciesEvalWindows(m, "test", 3000, per_label=5, seed=9)
    b = SpeciesEvalWindows(m, "test", 3000, per_label=5, seed=9, source=store)
    assert len(a) == len(b) == 25
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]


def test_loaded_split_follows_the_tokenizer_settings(tmp_path):
    """The cached split is per tokenizer setting: iupac 'n' and 'unk' share a vocabulary but encode
    an ambiguity code differently."""
    from genomamba.tokenizers.dna import DNATokenizer

    (tmp_path / "m.fa").write_text(">c\nACGTRYACGT\n")
    (tmp_path / "m.tsv").write_text(f"label\tpath\tsplit\nx\t{tmp_path / 'm.fa'}\ttrain\n")
    m = SpeciesManifest.from_file(tmp_path / "m.tsv")
    as_n = DNATokenizer(iupac="n")
    as_unk = DNATokenizer(iupac="unk")
    n_ids = m.load("train", as_n).read(0, 4, 6)
    unk_ids = m.load("train", as_unk).read(0, 4, 6)
    assert list(n_ids) == [as_n.n_id] * 2 and list(unk_ids) == [as_unk.unk_id] * 2
    assert m.load("train", DNATokenizer(iupac="n")) is m.load("train", as_n)  # equal settings: cached


def _assets_doc():
    import yaml

    from genomamba.data.fetch import default_assets

    doc = yaml.safe_load(default_assets().read_text())
    for g in doc["genomes"]:
        g["path"] = str(default_assets().parent / g["path"])
    return doc


def test_numeric_labels_in_a_yaml_manifest(tmp_path):
    """YAML reads labels 0..9 as numbers: they are labels like any other (0 included); a label
    declared twice is named."""
    import yaml

    doc = _assets_doc()
    names = doc["labels"]
    doc["labels"] = list(range(len(names)))
    for g in doc["genomes"]:
        g["label"] = names.index(g["label"])
    p = tmp_path / "numbers.yaml"
    p.write_text(yaml.safe_dump(doc))
    m = SpeciesManifest.from_file(p)
    assert m.labels == ["0", "1", "2", "3", "4"] and m.entries("train", "0")
    doc["labels"] = [0, 1, 1, 2, 3, 4]
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError, match=r"numbers\.yaml: labels: \['1'\] declared more than once"):
        SpeciesManifest.from_file(p)


def test_a_label_without_training_genomes_and_a_copied_test_strain_are_refused(tmp_path):
    import shutil

    import yaml

    from genomamba.data.corpus import CorpusError
    from genomamba.lit.datamodules import SpeciesDataModule

    doc = _assets_doc()
    kept = dict(doc, genomes=[g for g in doc["genomes"]
                              if not (g["label"] == "Vibrio_cholerae" and g["split"] == "train")])
    (tmp_path / "no_train.yaml").write_text(yaml.safe_dump(kept))
    with pytest.raises(CorpusError, match=r"label\(s\) \['Vibrio_cholerae'\] have no training genome"):
        SpeciesDataModule(str(tmp_path / "no_train.yaml"), 256).setup("fit")
    # the held-out E. coli strain replaced by a copy, then a hard link, of the training strain
    train = next(g for g in doc["genomes"] if g["id"] == "MG1655-K12")
    for how, make in (("copy", shutil.copy), ("link", __import__("os").link)):
        twin = tmp_path / f"{how}_MG1655.fasta.gz"
        make(train["path"], twin)
        leaky = dict(doc, genomes=[dict(g, path=str(twin)) if g["id"] == "DH1" else g for g in doc["genomes"]])
        (tmp_path / f"{how}.yaml").write_text(yaml.safe_dump(leaky))
        with pytest.raises(CorpusError, match=r"\['DH1'\] are also listed for training"):
            SpeciesDataModule(str(tmp_path / f"{how}.yaml"), 256, test_per_label=2).setup("fit")
