"""Stand-ins for espeak-ng and flite, so the spoken-digit builders run here without the real programs
or the network: each writes a 16 kHz WAV of a short tone (its pitch drawn from the arguments) where
the real program would write the spoken word, and answers ``--version`` and ``-lv`` as they do."""

import json
import os
import shutil
import sys
from pathlib import Path

from genomamba.data.debian import _DONE
from genomamba.data.digits import ESPEAK_PACKAGES, FLITE_PACKAGES

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "genomamba" / "assets" / "digits"
VARIANTS = ("f2", "f4", "klatt", "m1", "m3")

_PROGRAM = r'''#!@PYTHON@ -S
import math, os, struct, sys, zlib
prog = os.path.basename(sys.argv[0])
args = [a for a in sys.argv[1:] if not a.startswith("--path=")]
if args == ["--version"]:
    if prog == "espeak-ng":
        print("eSpeak NG text-to-speech: @VERSION@ Data at: @DATA@")
        sys.exit(0)
    print("flite-@VERSION@")
    sys.exit(1)
if args == ["-lv"]:
    print("Voices available: kal kal16 awb rms slt")
    sys.exit(0)
out = args[args.index("-w" if prog == "espeak-ng" else "-o") + 1]
rate, freq = 16000, 150 + zlib.crc32(" ".join(args).encode()) % 300
wave = [0] * 1600 + [int(12000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(6400)] + [0] * 1600
data = struct.pack(f"<{len(wave)}h", *wave)
with open(out, "wb") as f:
    f.write(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16) + b"data" + struct.pack("<I", len(data)) + data)
'''


def install_programs(bin_dir: Path, data: Path, version: str = "1.51-fake") -> Path:
    """espeak-ng and flite stand-ins in ``bin_dir``, with an espeak-ng data folder ``data`` holding ``VARIANTS``."""
    (data / "voices" / "!v").mkdir(parents=True)
    (data / "phontab").write_bytes(b"\0")
    for v in VARIANTS:
        (data / "voices" / "!v" / v).write_text(f"name {v}\n")
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("espeak-ng", "flite"):
        exe = bin_dir / name
        text = _PROGRAM.replace("@PYTHON@", sys.executable).replace("@DATA@", str(data))
        exe.write_text(text.replace("@VERSION@", version))
        exe.chmod(0o755)
    return bin_dir


def unpacked_tools(root: Path, version: str) -> Path:
    """A tools folder as ``genomamba data fetch digits`` leaves it after unpacking espeak-ng and flite
    from their Debian packages (``root/fs/usr/bin``, the espeak-ng data, the record of the unpack)."""
    fs = root / "fs"
    install_programs(fs / "usr" / "bin", fs / "usr" / "lib" / "x86_64-linux-gnu" / "espeak-ng-data", version)
    packages = sorted(ESPEAK_PACKAGES + FLITE_PACKAGES)
    (root / _DONE).write_text(json.dumps({"requested": packages, "versions": {p: version for p in packages}}))
    return root


def environment(tmp: Path, path: Path) -> dict:
    """The environment of a script run: ``PATH`` only ``path`` (no apt-get, dpkg or synthesizer unless
    put there), ``$GENOMAMBA_DATA`` under ``tmp``."""
    path.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PATH": str(path), "GENOMAMBA_DATA": str(tmp / "cache")}


def earlier_set(dest: Path) -> Path:
    """A copy of the shipped spoken-digit set: an earlier set a build may replace."""
    shutil.copytree(DIGITS, dest)
    return dest


def files_under(folder: Path) -> set:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
