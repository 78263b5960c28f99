"""Split rules of ``data.sources`` on shipped genome slices: held-out records are matched exactly or
refused, and a region split of one file does not depend on the other files of the corpus."""

from pathlib import Path

import pytest

from genomamba.data.corpus import CorpusError, build_corpus

ASSETS = Path(__file__).resolve().parents[2] / "genomamba" / "assets"
VIBRIO = ASSETS / "bacteria_O1_Inaba.fasta.gz"  # records named gi|448767448|gb|CM001785.1|:START-STOP
KLEBSIELLA = ASSETS / "bacteria_MGH78578.fasta.gz"
HELD_OUT = "gi|448767448|gb|CM001785.1|:1099368-1109368"


def contigs(regions):
    return sorted({r.contig for r in regions})


def test_a_record_name_that_looks_like_a_regex_is_matched_exactly():
    store, splits = build_corpus([{"path": str(VIBRIO), "split": {"by": "contig", "test": [HELD_OUT]}}])
    assert [c.split(":", 1)[1] for c in contigs(splits.test)] == [HELD_OUT]
    assert len(contigs(splits.train)) == 3 and HELD_OUT not in {c.split(":", 1)[1] for c in contigs(splits.train)}
    # a regular expression still works
    _, by_regex = build_corpus([{"path": str(VIBRIO), "split": {"by": "contig", "test": [r"gi\|.*:1099368-.*"]}}])
    assert contigs(by_regex.test) == contigs(splits.test)


@pytest.mark.parametrize("pattern", ["gi|448767448|gb|CM001785.1|:1-2", "chrTypo", "chr[1"])
def test_a_held_out_pattern_that_matches_nothing_is_an_error(pattern):
    with pytest.raises(CorpusError) as e:
        build_corpus([{"path": str(VIBRIO), "split": {"by": "contig", "val": [HELD_OUT], "test": [pattern]}}])
    msg = str(e.value)
    assert str(VIBRIO) in msg and f"split test: {pattern!r} matches no record" in msg and HELD_OUT in msg


def test_a_region_split_does_not_depend_on_the_other_sources():
    rule = {"by": "region", "block": 1000, "val_frac": 0.1, "test_frac": 0.2, "seed": 3}
    _, alone = build_corpus([{"path": str(KLEBSIELLA), "split": rule}])
    _, beside = build_corpus([{"path": str(VIBRIO), "split": "train"}, {"path": str(KLEBSIELLA), "split": rule}])
    for name in ("train", "val", "test"):
        mine = [r for r in getattr(beside, name) if r.contig.startswith("bacteria_MGH78578:")]
        assert mine == getattr(alone, name), name
    assert alone.test and alone.val  # the draw did hold blocks out


@pytest.mark.parametrize("length, val_frac, test_frac, want", [
    (100, 0.1, 0.29, (61, 71)),  # 100 * 0.29 is 28.999... in floating point
    (340, 0.15, 0.35, (170, 221)),
    (65455, 0.05, 0.1, (55638, 58910)),  # the shipped KJV slice: 6545.5 test bytes floor to 6545
])
def test_the_tail_split_takes_the_fraction_of_the_length(length, val_frac, test_frac, want):
    from genomamba.data.corpus import tail_split

    train, val, test = tail_split("c", length, val_frac, test_frac)
    assert (train.stop, val.stop) == want and (val.start, test.start, test.stop) == (want[0], want[1], length)


def test_files_with_one_name_in_several_folders_get_distinct_ids(tmp_path):
    """Per-sample folders (s1/genome.fa, s2/genome.fa) in one glob: the folder joins the id."""
    import shutil

    for sample, src in (("s1", VIBRIO), ("s2", KLEBSIELLA)):
        (tmp_path / sample).mkdir()
        shutil.copy(src, tmp_path / sample / "genome.fa.gz")
    store, splits = build_corpus([{"files": str(tmp_path / "s*" / "genome.fa.gz")}])
    assert sorted(set(store.genomes)) == ["s1_genome", "s2_genome"]
    assert {c.split(":", 1)[0] for c in contigs(splits.train)} == {"s1_genome", "s2_genome"}
    # one name twice in one folder (genome.fa and genome.fa.gz): refused, naming both files
    shutil.copy(VIBRIO, tmp_path / "s1" / "genome.fa")
    with pytest.raises(CorpusError, match=r"appears twice: \['s1_genome'\].*genome\.fa'.*genome\.fa\.gz'.*rename one"):
        build_corpus([{"files": str(tmp_path / "s*" / "genome.fa*")}])
