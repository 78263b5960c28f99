"""genomamba.files: atomic writes that honour the umask, clean up after a failure and write strict JSON."""

import gzip
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from genomamba.errors import InputFileError, OutputError, OutputExistsError, RunDirBusy, TextEncodingError
from genomamba.files import RunDirLock, atomic_path, atomic_text, check_output, read_text, write_json, write_text


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


def test_a_folder_that_takes_no_files_names_the_file_asked_for(tmp_path):
    """A folder where no file can be created: the error names the output and its folder, not the
    temporary file that was to be written first (it used to name that one only)."""
    unwritable = Path("/proc")
    if not unwritable.is_dir():
        pytest.skip("needs a folder that takes no files (/proc)")
    with pytest.raises(OSError) as err:
        with atomic_path(unwritable / "out.h5") as tmp:
            tmp.write_text("never")
    assert err.value.filename == "/proc/out.h5" and "cannot create a file in /proc" in err.value.strerror


def test_success_replaces_and_temps_are_unique(tmp_path):
    dest = tmp_path / "r.json"
    with atomic_path(dest) as a, atomic_path(dest) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert dest.read_text() == "a"  # the outer block ends last and wins
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_text_named_gz_is_gzip_compressed(tmp_path):
    text = "name\tbits\nchr1\t1.9\n" * 50 + "caf\u00e9\n"
    p = write_text(tmp_path / "s.tsv.gz", text)
    assert p.read_bytes()[:2] == b"\x1f\x8b" and p.stat().st_size < len(text)
    with gzip.open(p, "rt", encoding="utf-8") as fh:
        assert fh.read() == text
    assert write_text(tmp_path / "again" / "s.tsv.gz", text).read_bytes() == p.read_bytes()  # no timestamp inside
    write_json(tmp_path / "r.json.gz", {"acc": float("nan")})
    with gzip.open(tmp_path / "r.json.gz", "rt") as fh:
        assert json.load(fh) == {"acc": None}
    with atomic_text(tmp_path / "g.fa.GZ") as fh:
        for i in range(3):
            fh.write(f">s{i}\nACGT\n")
    with gzip.open(tmp_path / "g.fa.GZ", "rt") as fh:
        assert fh.read() == ">s0\nACGT\n>s1\nACGT\n>s2\nACGT\n"
    assert write_text(tmp_path / "plain.tsv", text).read_text(encoding="utf-8") == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "g.fa.GZ", "plain.tsv", "r.json.gz", "s.tsv.gz"]


def test_failed_gz_stream_leaves_no_file_and_keeps_the_old_one(tmp_path):
    dest = tmp_path / "samples.fa.gz"
    with pytest.raises(KeyboardInterrupt):
        with atomic_text(dest) as fh:
            fh.write(">s1\nACGT\n" * 1000)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    write_text(dest, ">old\nAC\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_text(dest) as fh:
            fh.write(">new\nGGGG\n")
            raise RuntimeError("disk on fire")
    with gzip.open(dest, "rt") as fh:
        assert fh.read() == ">old\nAC\n"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.fa.gz"]
    with pytest.raises(OutputExistsError):
        with atomic_text(dest, replace=False) as fh:
            fh.write(">late\nT\n")
    with gzip.open(dest, "rt") as fh:
        assert fh.read() == ">old\nAC\n"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.fa.gz"]


def test_json_writes_nan_and_infinities_as_null(tmp_path):
    p = write_json(tmp_path / "res.json", {"acc": float("nan"), "rows": [1.5, float("inf"), (float("-inf"), 2)],
                                           "ok": True, "name": "x"})
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    assert json.loads(text) == {"acc": None, "rows": [1.5, None, [None, 2]], "ok": True, "name": "x"}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_exclusive_create_is_decided_at_commit_time(tmp_path):
    dest = tmp_path / "out.h5"
    with pytest.raises(OutputExistsError, match="use --force"):
        with atomic_path(dest, replace=False) as tmp:
            tmp.write_text("late writer")
            dest.write_text("the writer that finished first")  # appears while this one works
    assert dest.read_text() == "the writer that finished first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
    fresh = tmp_path / "new.json"
    write_json(fresh, {"a": 1}, replace=False)
    assert json.loads(fresh.read_text()) == {"a": 1}


def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dest = tmp_path / "e.h5"
    dead = tmp_path / f".e.h5.{_dead_pid()}.abc123.tmp"
    live = tmp_path / f".e.h5.{os.getpid()}.def456.tmp"
    other = tmp_path / ".other.h5.1.x.tmp"
    for p in (dead, live, other):
        p.write_text("partial")
    write_text(dest, "new")
    assert not dead.exists() and live.exists() and other.exists() and dest.read_text() == "new"


def test_check_output_refusals(tmp_path):
    inp = tmp_path / "in.fa"
    inp.write_text(">a\nACGT\n")
    with pytest.raises(OutputError, match="is also an input"):
        check_output(tmp_path / "." / "in.fa", [inp], force=True)
    hard = tmp_path / "hard.fa"
    os.link(inp, hard)
    with pytest.raises(OutputError, match="is also an input"):
        check_output(hard, [inp], force=True)
    with pytest.raises(OutputError, match="is a directory"):
        check_output(tmp_path, [])
    with pytest.raises(OutputExistsError, match="exists; use --force"):
        check_output(inp, [])
    assert check_output(inp, [], force=True) == inp
    with pytest.raises(OutputError, match="in.fa is not a directory"):
        check_output(inp / "sub" / "x.tsv", [])
    assert check_output(tmp_path / "new" / "deeper" / "x.tsv", [inp]) == tmp_path / "new" / "deeper" / "x.tsv"


def test_run_dir_lock_is_exclusive_and_survives_its_holders_death(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
            RunDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunDirLock(tmp_path)
    assert lock.acquire() == holder.pid  # the dead holder's lock, taken over
    assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())
    with pytest.raises(RunDirBusy):
        RunDirLock(tmp_path).acquire()  # one owner, even within a process
    lock.release()
    assert not (tmp_path / "run.lock").exists()
    again = RunDirLock(tmp_path)
    assert again.acquire() is None
    again.release()


HOLD_LOCK = """
import sys, time
from genomamba.files import RunDirLock
RunDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_text_in_another_encoding_names_the_file(tmp_path):
    f = tmp_path / "manifest.yaml"
    f.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(TextEncodingError, match=r"manifest\.yaml: not UTF-8 text \(byte 0xe9 at offset 9\)"):
        read_text(f)
    ok = tmp_path / "ok.yaml"
    ok.write_bytes("\ufeffa: é\n".encode("utf-8"))
    assert read_text(ok) == "a: é\n"
    with pytest.raises(InputFileError, match="is a directory"):
        read_text(tmp_path)
