"""data_prep/digits_voice_split.py on the shipped spoken-digit manifest: flite voices move between
train and test, nothing else changes, and the manifest it writes loads as a classifier manifest."""

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genomamba.data.species import SpeciesManifest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "data_prep" / "digits_voice_split.py"
DIGITS = ROOT / "genomamba" / "assets" / "digits"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def digits(tmp_path):
    out = tmp_path / "digits"
    shutil.copytree(DIGITS, out)
    return out


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_moves_the_named_flite_voice_into_train_and_keeps_the_rest(digits):
    before = _rows(digits / "manifest.csv")
    assert {r["voice"] for r in before if r["engine"] == "flite"} == {"kal16", "slt"}
    res = _run(digits / "manifest.csv", "--train-voices", "kal16")
    assert res.returncode == 0, res.stderr
    after = _rows(digits / "manifest_voices.csv")
    assert len(after) == len(before)
    for b, a in zip(before, after):
        assert {k: v for k, v in a.items() if k != "split"} == {k: v for k, v in b.items() if k != "split"}
        if b["engine"] == "flite":
            assert a["split"] == ("train" if b["voice"] == "kal16" else "test")
        else:
            assert a["split"] == b["split"]  # espeak-ng train and val unchanged
    manifest = SpeciesManifest.from_file(digits / "manifest_voices.csv")
    test_paths = {Path(g.path).name for g in manifest.genomes if g.split == "test"}
    assert test_paths and all(p.startswith("flite_slt") for p in test_paths)


@pytest.mark.parametrize("voices, message", [
    (["nosuch"], r"no flite clips of voice\(s\) \['nosuch'\]; the manifest has \['kal16', 'slt'\]"),
    (["kal16", "slt"], r"every flite voice \['kal16', 'slt'\] would train"),
])
def test_bad_voices_are_refused_naming_the_manifest(digits, voices, message):
    res = _run(digits / "manifest.csv", "--train-voices", *voices)
    assert res.returncode == 2
    assert str(digits / "manifest.csv") in res.stderr
    assert re.search(message, res.stderr)
    assert not (digits / "manifest_voices.csv").exists()


def test_a_file_that_is_not_a_digit_manifest_is_refused(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("path,label,split\na.flac,0,train\n")
    res = _run(bad)
    assert res.returncode == 2 and "needs the columns ['engine', 'split', 'voice']" in res.stderr
