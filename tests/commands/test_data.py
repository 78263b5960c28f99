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
