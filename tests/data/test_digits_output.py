"""Where the spoken-digit builder writes: an earlier set (or an empty folder) is replaced, a folder
holding anything else is refused before any synthesis unless ``force``; unknown accents and dataset
names are refused up front. Runs with the espeak-ng / flite stand-ins of ``digits_fakes``."""

import errno

import pytest

from genomamba.data.debian import MARKER
from genomamba.data.digits import (
    ESPEAK_ACCENTS,
    DigitsConfig,
    DigitsError,
    check_replaceable,
    make_spoken_digits,
    read_manifest,
    unexpected_files,
)
from genomamba.data.fetch import FetchError, check_name, dataset_names, fetch
from genomamba.errors import OutputExistsError, UserError
from tests.data.digits_fakes import earlier_set, files_under, install_programs

SMALL = DigitsConfig(seed=3, words=("five",), accents=("en-us",), variants=("m1", "f2"), val_fraction=0.5,
                     flite_voices=("awb",), flite_takes=1, workers=2)


@pytest.fixture()
def no_programs(tmp_path, monkeypatch):
    """PATH without espeak-ng, flite, apt-get or dpkg."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))


def test_what_a_rebuild_would_delete(tmp_path):
    assert unexpected_files(tmp_path / "missing") == []
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert unexpected_files(tmp_path / "empty") == []  # empty folders hold nothing to lose
    digits = earlier_set(tmp_path / "digits")
    assert unexpected_files(digits) == []
    (digits / MARKER).write_text("{}")
    assert unexpected_files(digits) == []
    (digits / "manifest_voices.csv").write_text("path,split\n")
    (digits / "train" / "zero" / "mine.flac").write_bytes(b"fLaC")
    assert unexpected_files(digits) == ["manifest_voices.csv", "train/zero/mine.flac"]
    (digits / "provenance.json").write_text('{"dataset": "my-own"}')  # not a spoken-digit set: all are foreign
    assert len(unexpected_files(digits)) == len(files_under(digits))
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    assert unexpected_files(tmp_path / "file") == unexpected_files(tmp_path / "link") == ["."]
    with pytest.raises(OutputExistsError, match="not part of a spoken-digit set") as e:
        check_replaceable(digits)
    assert e.value.errno == errno.EEXIST and "\n" not in str(e.value) and "and " in str(e.value)
    check_replaceable(digits, force=True)


def test_a_folder_with_other_files_is_refused_before_any_synthesis(tmp_path, no_programs):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("my thesis")
    with pytest.raises(OutputExistsError, match=r"mine: holds 1 file\(s\) .*\(thesis\.tex\).*force=True"):
        make_spoken_digits(out, SMALL)
    assert (out / "thesis.tex").read_text() == "my thesis"
    # with force the folder is no obstacle: the builder goes on to look for the programs
    with pytest.raises(DigitsError, match="not on PATH and no tools folder given"):
        make_spoken_digits(out, SMALL, force=True)
    assert (out / "thesis.tex").read_text() == "my thesis"  # nothing is removed before the set is built
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "mine"]


def test_an_earlier_set_is_replaced_and_forced_replacement_removes_the_rest(tmp_path, monkeypatch):
    bin_dir = install_programs(tmp_path / "bin", tmp_path / "espeak-ng-data")
    monkeypatch.setenv("PATH", str(bin_dir))
    out = earlier_set(tmp_path / "digits")
    make_spoken_digits(out, SMALL, quiet=True)
    rows = read_manifest(out)
    assert len(rows) == 2 + 1 and {r["voice"] for r in rows} == {"en-us+m1", "en-us+f2", "awb"}
    assert files_under(out) == {r["path"] for r in rows} | {"manifest.csv", "provenance.json"}
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        make_spoken_digits(out, SMALL, quiet=True)
    assert (out / "notes.txt").exists()
    make_spoken_digits(out, SMALL, quiet=True, force=True)
    assert files_under(out) == {r["path"] for r in rows} | {"manifest.csv", "provenance.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "digits", "espeak-ng-data"]


def test_fetch_digits_keeps_other_files_in_its_folder(tmp_path, no_programs):
    out = tmp_path / "digits"
    out.mkdir()
    (out / "manifest_voices.csv").write_text("path,split\n")
    with pytest.raises(UserError, match=r"digits: holds 1 file\(s\) .*manifest_voices\.csv.*--dest") as e:
        fetch("digits", tmp_path, quiet=True)
    assert "\n" not in str(e.value)
    assert (out / "manifest_voices.csv").read_text() == "path,split\n"


def test_an_earlier_fetched_set_is_rebuilt(tmp_path, no_programs):
    """A stale fetched set is no obstacle: the rebuild goes on to look for the programs."""
    earlier_set(tmp_path / "digits")
    with pytest.raises(FetchError, match="not on PATH.*unpacking them"):
        fetch("digits", tmp_path, quiet=True)
    assert (tmp_path / "digits" / "manifest.csv").exists()  # kept: no new set was built


def test_unknown_accents_are_refused_listing_the_known_ones(tmp_path, no_programs):
    with pytest.raises(ValueError, match=r"unknown espeak-ng accents \['xx-yy'\]; the English accents are \["):
        DigitsConfig(accents=("en-us", "xx-yy")).check()
    with pytest.raises(ValueError, match="'en-us-nyc'"):
        make_spoken_digits(tmp_path / "out", DigitsConfig(accents=("xx-yy",)))
    assert not (tmp_path / "out").exists()
    for accent in ESPEAK_ACCENTS:
        DigitsConfig(accents=(accent,)).check()


def test_an_unknown_dataset_name_gives_the_url_route():
    with pytest.raises(FetchError) as e:
        check_name("bogus")
    msg = str(e.value)
    assert f"choose from {dataset_names()}" in msg and "'digits'" in msg and "'text'" in msg
    assert "`genomamba data fetch url URL`" in msg and "from genomamba.data.fetch import fetch_url" in msg
    with pytest.raises(FetchError, match="unknown dataset 'bogus'"):
        fetch("bogus")
    for name in dataset_names():
        check_name(name)
