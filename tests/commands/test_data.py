"""`genomamba data build | info | check | assets` on the shipped real genome slices."""

import json

from genomamba.commands.data import main
from genomamba.data.fetch import asset_files, default_assets
from genomamba.data.store import TokenStore


def test_build_info_check(tmp_path, capsys):
    fa = asset_files()["umaydis_test"]["path"]
    out = tmp_path / "s.h5"
    assert main(["build", str(fa), "--out", str(out)]) == 0
    assert "built" in capsys.readouterr().out
    assert TokenStore(out).contigs[0].length == 100_000
    assert main(["info", str(out)]) == 0
    assert "chr21" in capsys.readouterr().out
    assert main(["check", str(fa)]) == 0
    assert "1 records, 100,000 bases" in capsys.readouterr().out
    short = tmp_path / "short.h5"  # -o, as embed, score and generate take it
    assert main(["build", str(fa), "-o", str(short)]) == 0
    assert TokenStore(short).contigs[0].length == 100_000


def test_build_from_manifest(tmp_path, capsys):
    out = tmp_path / "m.h5"
    assert main(["build", "--manifest", str(default_assets()), "--out", str(out)]) == 0
    st = TokenStore(out)
    assert len(st.genomes) == 20 and st.names[0].startswith("MG1655-K12:")
    assert json.loads(json.dumps(st.tokenizer.to_dict()))["vocab"][0] == "<pad>"


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    bad = tmp_path / "bad.fa"
    bad.write_bytes(b">a\nACGT\n>a\nAC\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "duplicate record name 'a'" in err and "bad.fa" in err
    assert main(["build", str(bad), "--out", str(tmp_path / "x.h5")]) == 1
    assert main(["assets"]) == 0
    assert capsys.readouterr().out.strip().endswith("manifest.yaml")


def test_two_inputs_never_share_a_contig_name(tmp_path, capsys):
    """Text files of one name in two folders, or DNA records of one name under one genome id, would be
    one contig name in the store (and a read of it the wrong data): refused, naming both inputs."""
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    first, second = tmp_path / "d1" / "x.txt", tmp_path / "d2" / "x.txt"
    first.write_text("hello world one\n")
    second.write_text("second file, other words\n")
    out = tmp_path / "t.h5"
    assert main(["build", "--adapter", "text", str(first), str(second), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "would be stored as 'x:x.txt'" in err and str(first) in err and "--genome-ids" in err
    assert not out.exists()
    assert main(["build", "--adapter", "text", str(first), str(second), "--genome-ids", "a", "b",
                 "--out", str(out)]) == 0
    store = TokenStore(out)
    assert store.names == ["a:x.txt", "b:x.txt"]
    assert store.lengths.tolist() == [len(first.read_bytes()), len(second.read_bytes())]
    assert (store.read("a:x.txt", 0, 6) != store.read("b:x.txt", 0, 6)).any()  # each file's own tokens
    fa1, fa2 = tmp_path / "one.fa", tmp_path / "two.fa"
    fa1.write_text(">chr1\nACGT\n")
    fa2.write_text(">chr1\nGGCC\n")
    capsys.readouterr()
    assert main(["build", str(fa1), str(fa2), "--out", str(tmp_path / "d.h5")]) == 1
    assert "(--genome-ids, or genome_ids= in Python)" in capsys.readouterr().err
    assert main(["build", str(fa1), str(fa2), "--genome-ids", "g", "g", "--out", str(tmp_path / "d.h5")]) == 1
    assert "give each file its own genome id" in capsys.readouterr().err


def test_genome_ids_before_the_files_is_explained(tmp_path, capsys):
    fa = tmp_path / "a.fa"
    fa.write_text(">c\nACGT\n")
    assert main(["build", "--genome-ids", "A", str(fa), "--out", str(tmp_path / "s.h5")]) == 1
    err = capsys.readouterr().err
    assert "--genome-ids took every word after it" in err and "put the files first" in err


def test_build_without_inputs_is_an_error_line(tmp_path, capsys):
    assert main(["build", "--out", str(tmp_path / "s.h5")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("genomamba data build: error: give input files") and "--manifest" in err
    assert not (tmp_path / "s.h5").exists()
