"""kill -9 in the middle of a write leaves the previous good file intact, and the next write of the
same file removes the dead writer's temporary file (real subprocesses, real SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import genomamba
from genomamba.__main__ import main as cli
from genomamba.data.store import TokenStore
from genomamba.files import clean_stale_temps
from genomamba.lit.trainer import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CKPT_WRITER = """
import sys, torch
from genomamba.lit.trainer import AtomicCheckpointIO
io, i = AtomicCheckpointIO(), 0
while True:
    i += 1
    io.save_checkpoint({"global_step": i, "w": torch.full((8_000_000,), float(i))}, sys.argv[1])
    print(i, flush=True)
"""


def _temps(dest: Path) -> list[Path]:
    return sorted(dest.parent.glob(f".{dest.name}.*.tmp"))


def _kill_while_writing(proc: subprocess.Popen, dest: Path, timeout: float = 120, ready=lambda: True) -> None:
    """SIGKILL ``proc`` at a moment its temporary file for ``dest`` exists (a write in progress)."""
    deadline = time.time() + timeout
    try:
        while True:
            assert proc.poll() is None, "the writer ended before it could be killed mid-write"
            assert time.time() < deadline, f"no write of {dest} in progress within {timeout} s"
            if ready() and [t for t in _temps(dest) if f".{proc.pid}." in t.name]:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_kill9_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    dest = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", CKPT_WRITER, str(dest)], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    first = proc.stdout.readline()  # one complete checkpoint is on disk
    assert first.strip() == "1", first
    _kill_while_writing(proc, dest)
    ck = torch.load(dest, map_location="cpu", weights_only=True)
    step = ck["global_step"]
    assert step >= 1 and bool((ck["w"] == float(step)).all())  # a whole checkpoint, not a torn one
    assert _temps(dest), "the killed writer's temporary file should still be there"
    AtomicCheckpointIO().save_checkpoint({"global_step": step + 1}, dest)  # the next save cleans it
    assert _temps(dest) == []
    assert torch.load(dest, weights_only=True)["global_step"] == step + 1


def _big_fasta(path: Path, records: int = 8, bases: int = 5_000_000) -> None:
    rng = np.random.default_rng(0)
    with open(path, "wb") as fh:
        for r in range(records):
            seq = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, bases)].tobytes()
            fh.write(b">r%d\n" % r)
            for i in range(0, bases, 1 << 16):
                fh.write(seq[i:i + (1 << 16)] + b"\n")


def test_kill9_during_data_build_keeps_the_previous_store(tmp_path, capsys):
    store = tmp_path / "store.h5"
    small = genomamba.__path__[0] + "/assets/lambda_virus.fa.gz"
    assert cli(["data", "build", small, "--out", str(store)]) == 0
    before = TokenStore(store)
    ref = before.read(0, 1000, 2000)
    big = tmp_path / "big.fa"
    _big_fasta(big)
    proc = subprocess.Popen([sys.executable, "-m", "genomamba", "data", "build", str(big), "--out", str(store),
                             "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    _kill_while_writing(proc, store)
    after = TokenStore(store)  # the previous store, whole
    assert after.names == before.names and np.array_equal(after.read(0, 1000, 2000), ref)
    assert _temps(store)
    assert cli(["data", "build", small, "--out", str(store), "--force"]) == 0
    assert _temps(store) == []


def test_killed_embed_leaves_a_temp_that_the_next_run_removes(tmp_path, capsys):
    from genomamba import DNATokenizer, MambaConfig, MambaLM

    model = tmp_path / "m"
    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11)).save_pretrained(model)
    DNATokenizer().save_pretrained(model)
    fa = tmp_path / "g.fa"
    _big_fasta(fa, records=4, bases=200_000)
    out = tmp_path / "e.h5"
    proc = subprocess.Popen([sys.executable, "-m", "genomamba", "embed", str(model), str(fa), "-o", str(out),
                             "--pooling", "none"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    _kill_while_writing(proc, out)
    assert not out.exists() and _temps(out)
    # a live writer's temp is never touched; a dead one's goes with the next run
    assert clean_stale_temps(out) and _temps(out) == []
    proc = subprocess.Popen([sys.executable, "-m", "genomamba", "embed", str(model), str(fa), "-o", str(out),
                             "--pooling", "none"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    _kill_while_writing(proc, out)
    assert cli(["embed", str(model), str(fa), "-o", str(out)]) == 0
    assert out.exists() and _temps(out) == []
