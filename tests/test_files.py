"""genomamba.files: atomic writes that honour the umask, clean up after a failure and write strict JSON."""

import json
import os
import stat

import pytest

from genomamba.files import atomic_path, write_json, write_text


@pytest.fixture
def umask():
    def set_(mask):
        old.append(os.umask(mask))

    old = []
    yield set_
    if old:
        os.umask(old[0])


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_final_mode_follows_the_umask(tmp_path, umask, mask):
    umask(mask)
    p = write_text(tmp_path / "shared" / "config.json", "{}\n")
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    with atomic_path(tmp_path / "w.bin", mode=0o640) as tmp:
        tmp.write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == 0o640


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    dest = tmp_path / "model.safetensors"
    dest.write_text("old")
    seen = []
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(dest) as tmp:
            seen.append(tmp)
            assert tmp.parent == tmp_path and tmp != dest
            tmp.write_text("half of the new")
            raise RuntimeError("disk on fire")
    assert dest.read_text() == "old"
    assert not seen[0].exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_writer_that_never_creates_the_temp_still_cleans_up(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "out.h5") as tmp:
            tmp.unlink()
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_success_replaces_and_temps_are_unique(tmp_path):
    dest = tmp_path / "r.json"
    with atomic_path(dest) as a, atomic_path(dest) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert dest.read_text() == "a"  # the outer block ends last and wins
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_json_writes_nan_and_infinities_as_null(tmp_path):
    p = write_json(tmp_path / "res.json", {"acc": float("nan"), "rows": [1.5, float("inf"), (float("-inf"), 2)],
                                           "ok": True, "name": "x"})
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    assert json.loads(text) == {"acc": None, "rows": [1.5, None, [None, 2]], "ok": True, "name": "x"}
