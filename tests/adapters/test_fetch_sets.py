"""`genomamba data fetch text` on the real Debian packages; `fetch digits` failure reporting."""

import json
import os

import pytest

from genomamba.adapters import get_adapter
from genomamba.data.fetch import FetchError, fetch
from genomamba.data.textcorpus import OUTPUTS

TEXT = get_adapter("text")


@pytest.fixture(scope="module")
def text_set(tmp_path_factory):
    if os.environ.get("GENOMAMBA_OFFLINE", "") not in ("", "0"):
        pytest.skip("GENOMAMBA_OFFLINE=1: fetching from Debian's archive skipped")
    return fetch("text", tmp_path_factory.mktemp("sets"), quiet=True)


def test_fetch_text_writes_verified_corpora_with_provenance(text_set):
    prov = json.loads((text_set / "provenance.json").read_text())
    assert set(prov["packages"]) == {"bible-kjv", "bible-kjv-text", "jargon-text"}
    for name, sha in OUTPUTS.items():
        assert prov["outputs"][name]["sha256"] == sha
        assert prov["outputs"][name]["bytes"] == (text_set / name).stat().st_size
    assert prov["outputs"]["kjv.txt"]["source"]["verses"] == 31102
    kjv = (text_set / "kjv.txt").read_text("ascii")
    assert "In the beginning God created the heaven and the earth." in kjv.splitlines()[3]
    assert kjv.rstrip().endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    jargon = (text_set / "jargon.txt").read_bytes()
    assert b"The Jargon File" in jargon[:200] and max(jargon) > 127  # real UTF-8 beyond ASCII
    assert TEXT.decode(TEXT.read_file(text_set / "jargon.txt")) == jargon.decode("utf-8")
    mtime = (text_set / "kjv.txt").stat().st_mtime
    assert fetch("text", text_set.parent, quiet=True) == text_set  # a verified copy is reused
    assert (text_set / "kjv.txt").stat().st_mtime == mtime


def test_fetch_digits_without_apt_is_a_fetch_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng, flite, apt-get or dpkg
    with pytest.raises(FetchError, match="not found") as e:
        fetch("digits", tmp_path, quiet=True)
    assert "\n" not in str(e.value)


def test_unknown_dataset_lists_the_generated_sets():
    with pytest.raises(FetchError, match="'digits'.*'text'"):
        fetch("speech")
