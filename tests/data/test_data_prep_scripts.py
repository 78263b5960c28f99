"""The data_prep scripts on real files: bad names and folders are refused in one line before any
work, outputs that exist are kept unless --force, and the spoken-digit scripts find espeak-ng and
flite the way ``genomamba data fetch digits`` does (PATH, else a tools folder of unpacked packages).

The synthesizers are the stand-ins of ``digits_fakes`` and PATH holds nothing else, so nothing here
reaches the network or needs apt-get. Most runs call the scripts' ``main(argv)``; a few run them as
programs, to see what a user sees on a terminal."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from genomamba.data.store import TokenStore
from tests.data.digits_fakes import (
    DIGITS,
    VARIANTS,
    earlier_set,
    environment,
    files_under,
    install_programs,
    unpacked_tools,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "data_prep"


def _run(script, *args, env=None):
    """The script run as a program."""
    return subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def _script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Result:
    def __init__(self, returncode, out, err):
        self.returncode, self.stdout, self.stderr = returncode, out, err


@pytest.fixture()
def call(tmp_path, monkeypatch, capsys):
    """``call(script, *args)``: the script's ``main`` with PATH holding only tmp_path/bin (no
    synthesizer, apt-get or dpkg unless put there) and $GENOMAMBA_DATA = tmp_path/cache."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("GENOMAMBA_DATA", str(tmp_path / "cache"))

    def run(script, *args):
        capsys.readouterr()
        rc = _script(script.removesuffix(".py")).main([str(a) for a in args])
        cap = capsys.readouterr()
        return _Result(rc, cap.out, cap.err)

    return run


def _one_line_error(res, prog):
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), res.stderr
    return lines[0]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- make_digit_mini.py
def test_make_digit_mini_unpacks_its_tools_where_fetch_digits_does_or_into_tools(call, tmp_path):
    # espeak-ng and flite are not on PATH, but unpacked where `genomamba data fetch digits` puts them
    cached = unpacked_tools(tmp_path / "cache" / ".debian-tools", "1.0-cached")
    out = tmp_path / "digits"
    res = call("make_digit_mini.py", "--out", out)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"70 clips -> {out}"
    rows = _rows(out / "manifest.csv")
    assert len(rows) == 5 * 10 + 2 * 10
    assert files_under(out) == {r["path"] for r in rows} | {"manifest.csv", "provenance.json"}
    for r in rows[::7]:
        info = sf.info(out / r["path"])
        assert (info.samplerate, info.frames, info.format) == (8000, 8000, "FLAC")
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["sample_rate"] == 8000 and prov["counts"] == {"train": 40, "val": 10, "test": 20}
    assert prov["programs"]["espeak-ng"]["path"] == str(cached / "fs" / "usr" / "bin" / "espeak-ng")
    assert set(prov["debian_packages"].values()) == {"1.0-cached"}
    assert sorted(prov["variants"]["train"] + prov["variants"]["val"]) == sorted(VARIANTS)

    # --tools: another tools folder; the earlier set in --out is replaced without --force
    mine = unpacked_tools(tmp_path / "mytools", "2.0-mine")
    res = call("make_digit_mini.py", "--out", out, "--tools", mine)
    assert res.returncode == 0, res.stderr
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["programs"]["flite"]["path"] == str(mine / "fs" / "usr" / "bin" / "flite")
    assert set(prov["debian_packages"].values()) == {"2.0-mine"}
    assert files_under(out) == {r["path"] for r in rows} | {"manifest.csv", "provenance.json"}
    assert not list(tmp_path.glob(".digits.partial-*"))  # the staging folder became --out


def test_make_digit_mini_without_programs_or_apt_says_so_in_one_line(tmp_path):
    env = environment(tmp_path, tmp_path / "bin")  # no synthesizer, apt-get or dpkg on PATH
    out = earlier_set(tmp_path / "digits")
    before = {p: (out / p).read_bytes() for p in files_under(out)}
    res = _run("make_digit_mini.py", "--out", out, "--tools", tmp_path / "tools", env=env)
    line = _one_line_error(res, "make_digit_mini")
    assert "['espeak-ng', 'flite'] not on PATH" in line and str(tmp_path / "tools") in line
    assert "apt-get install espeak-ng flite" in line and "`apt-cache` not found" in line
    assert "Traceback" not in res.stderr and "pass a tools folder" not in line
    assert {p: (out / p).read_bytes() for p in files_under(out)} == before  # the earlier set is kept


def test_make_digit_mini_keeps_a_folder_with_other_files_unless_forced(call, tmp_path):
    out = tmp_path / "mine"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "todo.txt").write_text("my notes\n")
    (out / "provenance.json").write_text('{"dataset": "something else"}')
    # refused before anything is looked for: no synthesizer and no tools are needed to say so
    line = _one_line_error(call("make_digit_mini.py", "--out", out), "make_digit_mini")
    assert str(out) in line and "2 file(s) that are not part of a spoken-digit set" in line
    assert "notes/todo.txt" in line and "--force" in line
    assert (out / "notes" / "todo.txt").read_text() == "my notes\n"

    unpacked_tools(tmp_path / "cache" / ".debian-tools", "1.0")
    res = call("make_digit_mini.py", "--out", out, "--force")
    assert res.returncode == 0, res.stderr
    assert not (out / "notes").exists() and len(_rows(out / "manifest.csv")) == 70


# ----------------------------------------------------------------------------- make_spoken_digits.py
SMALL = ["--words", "one", "two", "--accents", "en-us", "--variants", "m1", "f2", "--val-fraction", "0.5",
         "--flite-voices", "kal", "--flite-takes", "1", "--festival-voices", "--workers", "2"]


def test_make_spoken_digits_refuses_an_unknown_accent_before_anything_else(tmp_path):
    env = environment(tmp_path, tmp_path / "bin")
    out = tmp_path / "digits"
    res = _run("make_spoken_digits.py", "--out", out, "--accents", "en-us", "xx-yy", env=env)  # as a program
    line = _one_line_error(res, "make_spoken_digits")
    assert "unknown espeak-ng accents ['xx-yy']" in line
    assert "'en-us'" in line and "'en-gb-scotland'" in line  # the valid ones are listed
    assert not out.exists() and not (tmp_path / ".debian-tools").exists()


def test_make_spoken_digits_replaces_an_earlier_set_and_keeps_other_files(call, tmp_path):
    bin_dir = install_programs(tmp_path / "bin", tmp_path / "espeak-ng-data")  # on PATH this time
    out = earlier_set(tmp_path / "digits")
    (out / ".genomamba-fetch.json").write_text("{}")  # the record a fetched set also holds
    res = call("make_spoken_digits.py", "--out", out, *SMALL)
    assert res.returncode == 0, res.stderr
    rows = _rows(out / "manifest.csv")
    assert len(rows) == 2 * 2 + 2 and {r["engine"] for r in rows} == {"espeak-ng", "flite"}
    assert files_under(out) == {r["path"] for r in rows} | {"manifest.csv", "provenance.json"}
    assert json.loads((out / "provenance.json").read_text())["programs"]["espeak-ng"]["path"] == str(
        bin_dir / "espeak-ng"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "digits", "espeak-ng-data"]  # no staging left

    (out / "train" / "keep.wav").write_bytes(b"RIFF mine")
    line = _one_line_error(call("make_spoken_digits.py", "--out", out, *SMALL), "make_spoken_digits")
    assert str(out) in line and "train/keep.wav" in line and "--force" in line
    assert (out / "train" / "keep.wav").read_bytes() == b"RIFF mine"
    assert len(_rows(out / "manifest.csv")) == 6  # the set is left as it was

    res = call("make_spoken_digits.py", "--out", out, *SMALL, "--force")
    assert res.returncode == 0, res.stderr
    assert not (out / "train" / "keep.wav").exists()


def test_make_spoken_digits_refuses_a_file_as_out(call, tmp_path):
    out = tmp_path / "digits"
    out.write_text("not a folder")
    line = _one_line_error(call("make_spoken_digits.py", "--out", out, *SMALL), "make_spoken_digits")
    assert str(out) in line and "not a folder" in line
    assert out.read_text() == "not a folder"


# ----------------------------------------------------------------------------- digits_voice_split.py
def test_voice_split_keeps_an_existing_out_unless_forced_and_never_writes_the_input(tmp_path):
    digits = earlier_set(tmp_path / "digits")
    manifest = digits / "manifest.csv"
    original = manifest.read_bytes()
    res = _run("digits_voice_split.py", manifest, "--train-voices", "kal16")
    assert res.returncode == 0, res.stderr
    written = (digits / "manifest_voices.csv").read_bytes()

    res = _run("digits_voice_split.py", manifest, "--train-voices", "slt")
    assert res.returncode == 2
    assert f"--out {digits / 'manifest_voices.csv'}: exists; use --force to replace it" in res.stderr
    assert (digits / "manifest_voices.csv").read_bytes() == written

    res = _run("digits_voice_split.py", manifest, "--train-voices", "slt", "--force")
    assert res.returncode == 0, res.stderr
    rows = _rows(digits / "manifest_voices.csv")
    assert {r["split"] for r in rows if r["voice"] == "slt"} == {"train"}
    assert {r["split"] for r in rows if r["voice"] == "kal16"} == {"test"}

    for out in ("manifest.csv", "./manifest.csv", str(manifest), "../digits/manifest.csv"):
        res = _run("digits_voice_split.py", manifest, "--train-voices", "slt", "--out", out, "--force")
        assert res.returncode == 2
        assert "is the input manifest" in res.stderr
    assert manifest.read_bytes() == original


# ----------------------------------------------------------------------------- fetch_genomes.py
def test_fetch_genomes_names_every_set_and_refuses_a_bad_name_in_one_line(call, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        call("fetch_genomes.py", "--help")
    assert e.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert "any of bacteria digits fly genbank lambda sibelia text umaydis" in usage
    env = environment(tmp_path, tmp_path / "bin")  # no apt-get: nothing can be fetched
    res = _run("fetch_genomes.py", "lambda", "bogus", "--dest", tmp_path / "dest", env=env)
    line = _one_line_error(res, "fetch_genomes")
    assert "unknown dataset 'bogus'" in line and "'digits'" in line and "'text'" in line
    assert "`genomamba data fetch url URL`" in line and "from genomamba.data.fetch import fetch_url" in line
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "dest").exists()  # lambda was not fetched before bogus was found


def test_fetch_genomes_reports_a_failed_fetch_in_one_line(call, tmp_path):
    res = call("fetch_genomes.py", "lambda", "--dest", tmp_path / "dest")
    line = _one_line_error(res, "fetch_genomes")
    assert "`apt-get` not found" in line and "Traceback" not in res.stderr


def test_data_fetch_of_an_unknown_name_gives_the_command_line_spelling(capsys):
    from genomamba.commands.data import main

    assert main(["fetch", "bogus"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("genomamba data fetch: error: unknown dataset 'bogus'") and "\n" not in err
    assert "`genomamba data fetch url URL`" in err and "fetch_url for" not in err


# ----------------------------------------------------------------------------- build_stores.py
FLY = "ACGTTGCA" * 50


@pytest.fixture()
def build_stores(tmp_path, monkeypatch):
    """build_stores.py's module with ``fetch`` serving a small real FASTA as the fetched fly set (the
    calls are recorded in ``.fetched``)."""
    mod = _script("build_stores")
    fly = tmp_path / "cache" / "fly"
    fly.mkdir(parents=True)
    (fly / "chr2R.fa").write_text(f">chr2R\n{FLY}\n")
    mod.fetched = []

    def fetch(name, cache):
        mod.fetched.append(name)
        assert name == "fly"
        return fly

    monkeypatch.setattr(mod, "fetch", fetch)
    return mod


def test_build_stores_keeps_an_existing_store_unless_forced(build_stores, tmp_path, capsys):
    out = tmp_path / "stores"
    assert build_stores.main(["fly", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    st = TokenStore(out / "fly.h5")
    assert [c.name for c in st.contigs] == ["chr2R"] and int(st.lengths.sum()) == len(FLY)
    st.close()
    built = (out / "fly.h5").read_bytes()
    capsys.readouterr()

    assert build_stores.main(["fly", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"build_stores: error: fly output {out / 'fly.h5'}: exists; use --force to replace it"
    assert (out / "fly.h5").read_bytes() == built and build_stores.fetched == ["fly"]  # nothing fetched again

    (out / "fly.h5").write_bytes(b"an older store")
    assert build_stores.main(["fly", "--cache", str(tmp_path / "cache"), "--out", str(out), "--force"]) == 0
    assert int(TokenStore(out / "fly.h5").lengths.sum()) == len(FLY)


def test_build_stores_checks_every_name_and_output_before_building(build_stores, tmp_path, capsys):
    out = tmp_path / "stores"
    out.mkdir()
    (out / "umaydis.splits.json").write_text('{"mine": 1}')
    assert build_stores.main(["fly", "umaydis", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"build_stores: error: umaydis output {out / 'umaydis.splits.json'}: exists; "
                   "use --force to replace it")
    assert build_stores.main(["fly", "mouse", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "build_stores: error: unknown store 'mouse'; choose from ['umaydis', 'fly', 'bacteria']"
    assert build_stores.fetched == [] and sorted(p.name for p in out.iterdir()) == ["umaydis.splits.json"]
    assert (out / "umaydis.splits.json").read_text() == '{"mine": 1}'


def test_shipped_digits_are_an_earlier_set():
    """The default --out of make_digit_mini.py is replaced without --force."""
    from genomamba.data.digits import unexpected_files

    assert unexpected_files(DIGITS) == []
