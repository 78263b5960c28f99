"""Spoken digits ("zero" ... "nine"): 1-second 16 kHz mono clips from two speech synthesizers.

An SC09-like set for the audio adapter, built from programs that Debian ships:

- **espeak-ng**: English accents x voice variants (``+m3``, ``+f2``, ``+klatt4``, ...) x random
  speed (words per minute) and pitch;
- **flite**: its voices (kal at 8 kHz, kal16, awb, rms, slt at 16 kHz) x random duration stretch
  and mean f0. flite is a different synthesis engine.

Splits test generalisation, not memorisation: ``test`` is the whole flite engine (never seen in
training), ``val`` is a set of whole espeak-ng voice variants (every accent, speed and pitch of
those variants), ``train`` is the remaining espeak-ng variants. Held-out variants of the training
engine make an easy test; a held-out engine makes a hard one.

Every clip: synthesized WAV -> 16 kHz mono (soxr) -> silence trimmed (10 ms frames 40 dB below the
loudest) -> centred in exactly 1 s (a longer utterance keeps its central second, flagged
``cropped``) -> peak-normalised -> 16-bit FLAC (or WAV). ``manifest.csv`` lists path, label, word,
engine, voice, accent, variant, the synthesis parameters, split and speech duration;
``provenance.json`` records the programs, their package versions, the settings and the counts.
The output is a function of the settings and the seed (both programs are deterministic).

If ``espeak-ng`` / ``flite`` are not on PATH they are fetched with ``apt-get download`` +
``dpkg -x`` (with the libraries they need that this machine lacks) into a tools folder and run
from there.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from genomamba.data.audio import read_audio, write_audio
from genomamba.data.debian import DebianError, dataset_complete, unpacked_programs, write_marker
from genomamba.data.fasta import file_sha256

PathLike = Union[str, os.PathLike]

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng's English accents that need no extra synthesizer (the mbrola voices do).
ESPEAK_ACCENTS = (
    "en-gb",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# Mean f0 (Hz) drawn per flite voice: slt is a female voice, the others male.
FLITE_F0 = {"slt": (150.0, 210.0)}
FLITE_F0_DEFAULT = (85.0, 135.0)
ESPEAK_PACKAGES = ["espeak-ng", "espeak-ng-data", "libespeak-ng1"]
FLITE_PACKAGES = ["flite", "libflite1"]

SAMPLE_RATE = 16000
MANIFEST = "manifest.csv"
PROVENANCE = "provenance.json"
FIELDS = (
    "path", "label", "word", "engine", "voice", "accent", "variant",
    "speed", "pitch", "stretch", "f0", "split", "speech_s", "cropped",
)  # fmt: skip


class DigitsError(DebianError):
    """A synthesizer is missing or failed; the message says which and how to fix it."""


@dataclass
class DigitsConfig:
    """What to synthesize: every espeak accent x variant x word ``takes`` times, every flite voice x
    word ``flite_takes`` times, each with its own random synthesis parameters."""

    seed: int = 0
    takes: int = 1  # random (speed, pitch) draws per espeak accent x variant x word
    flite_takes: int = 20  # random (stretch, f0) draws per flite voice x word
    val_fraction: float = 0.15  # share of espeak variants held out whole for val
    words: tuple = WORDS
    accents: tuple = ESPEAK_ACCENTS
    variants: Optional[tuple] = None  # None: every variant the espeak-ng data ships
    flite_voices: tuple = FLITE_VOICES
    speed: tuple = (120, 220)  # espeak words per minute, inclusive
    pitch: tuple = (20, 80)  # espeak pitch 0-99, inclusive
    stretch: tuple = (0.8, 1.25)  # flite duration_stretch
    peak: float = 0.9
    seconds: float = 1.0
    audio_format: str = "flac"
    workers: int = field(default_factory=lambda: max(1, min(8, os.cpu_count() or 1)))

    def check(self) -> None:
        if self.takes < 1 or self.flite_takes < 0:
            raise ValueError(f"takes must be >= 1 and flite_takes >= 0, got {self.takes}, {self.flite_takes}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        unknown = [w for w in self.words if w not in WORDS]
        if unknown or not self.words:
            raise ValueError(f"words must be a non-empty subset of {list(WORDS)}, got {list(self.words)}")
        bad = [v for v in self.flite_voices if v not in FLITE_VOICES]
        if bad:
            raise ValueError(f"unknown flite voices {bad}; flite has {list(FLITE_VOICES)}")
        if self.audio_format not in ("flac", "wav"):
            raise ValueError(f"audio_format must be 'flac' or 'wav', got {self.audio_format!r}")


# --------------------------------------------------------------------------- the synthesizers
class Synthesizers:
    """Locates espeak-ng and flite (PATH first, else unpacked Debian packages in ``tools_dir``)."""

    def __init__(self, tools_dir: Optional[PathLike] = None, need_flite: bool = True, quiet: bool = False):
        self.env = dict(os.environ)
        self.sources: dict = {}
        self.packages: dict = {}
        want = [("espeak-ng", ESPEAK_PACKAGES)] + ([("flite", FLITE_PACKAGES)] if need_flite else [])
        found = {name: shutil.which(name) for name, _ in want}
        missing = [pkgs for name, pkgs in want if not found[name]]
        toolbox = None
        if missing:
            if tools_dir is None:
                raise DigitsError(
                    f"{[n for n, _ in want if not found[n]]} not on PATH and no tools folder given: "
                    "`apt-get install espeak-ng flite`, or pass a tools folder to unpack them into"
                )
            try:
                names = [n for n, _ in want if not found[n]]
                toolbox, paths, self.packages = unpacked_programs(
                    names, sorted({p for pkgs in missing for p in pkgs}), Path(tools_dir), quiet=quiet)
                found.update({n: str(p) for n, p in paths.items()})
            except DebianError as e:
                raise DigitsError(str(e)) from None
            self.env = toolbox.env
        self.espeak = found["espeak-ng"]
        self.flite = found.get("flite")
        self.espeak_args: list = []
        if toolbox is not None and not shutil.which("espeak-ng"):
            data = sorted(toolbox.fs.glob("**/espeak-ng-data/phontab"))
            if not data:
                raise DigitsError(f"no espeak-ng-data under {toolbox.fs}")
            self.espeak_data = data[0].parent
            self.espeak_args = [f"--path={self.espeak_data.parent}"]
        else:
            self.espeak_data = self._installed_espeak_data()
        for name, path in (("espeak-ng", self.espeak), ("flite", self.flite)):
            if path:
                self.sources[name] = path
        banner = self._version([self.espeak, *self.espeak_args, "--version"])
        self.versions = {"espeak-ng": banner.split(" Data at:")[0]}
        if self.flite:
            voices = self._version([self.flite, "-lv"])
            lacking = [v for v in FLITE_VOICES if v not in voices.split()]
            if lacking:
                raise DigitsError(f"{self.flite} lacks the voices {lacking} ({voices})")
            # flite prints its version and exits 1: only the text matters here.
            self.versions["flite"] = self._version([self.flite, "--version"], ok=(0, 1))

    def _installed_espeak_data(self) -> Path:
        out = self._version([self.espeak, "--version"])
        m = re.search(r"Data at:\s*(\S+)", out)
        if not m or not (Path(m.group(1)) / "phontab").exists():
            raise DigitsError(f"cannot find espeak-ng's data folder (espeak-ng --version says {out!r})")
        return Path(m.group(1))

    def _version(self, cmd: list, ok: tuple = (0,)) -> str:
        try:
            res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise DigitsError(f"{cmd[0]} does not run: {e}") from None
        text = " ".join((res.stdout + res.stderr).split())
        if res.returncode not in ok:
            raise DigitsError(f"{cmd[0]} does not run (exit {res.returncode}): {text[-500:]}")
        return text[:300]

    def variants(self) -> list:
        """Every voice variant in the espeak-ng data (files under ``voices/!v``), sorted."""
        return sorted(p.name for p in (self.espeak_data / "voices" / "!v").iterdir() if p.is_file())

    def command(self, job: dict, out: Path) -> list:
        if job["engine"] == "espeak-ng":
            return [
                self.espeak, *self.espeak_args, "-v", f"{job['accent']}+{job['variant']}",
                "-s", str(job["speed"]), "-p", str(job["pitch"]), "-w", str(out), job["word"],
            ]  # fmt: skip
        return [
            self.flite, "-voice", job["voice"], "--setf", f"duration_stretch={job['stretch']}",
            "--setf", f"int_f0_target_mean={job['f0']}", "-t", job["word"], "-o", str(out),
        ]  # fmt: skip


# --------------------------------------------------------------------------- plan and clips
def plan(cfg: DigitsConfig, variants: list) -> list:
    """Every clip to make, with its parameters and split, in a fixed order drawn from ``cfg.seed``."""
    rng = np.random.default_rng(cfg.seed)
    variants = sorted(variants)
    n_val = int(round(cfg.val_fraction * len(variants)))
    if cfg.val_fraction > 0 and len(variants) > 1:
        n_val = min(max(n_val, 1), len(variants) - 1)
    val = {variants[i] for i in rng.permutation(len(variants))[:n_val]}
    jobs = []
    for accent in cfg.accents:
        for variant in variants:
            for word in cfg.words:
                for take in range(cfg.takes):
                    speed = int(rng.integers(cfg.speed[0], cfg.speed[1] + 1))
                    pitch = int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1))
                    jobs.append(
                        dict(
                            engine="espeak-ng", accent=accent, variant=variant, voice=f"{accent}+{variant}",
                            word=word, take=take, speed=speed, pitch=pitch, stretch="", f0="",
                            split="val" if variant in val else "train",
                        )
                    )  # fmt: skip
    for voice in cfg.flite_voices:
        lo, hi = FLITE_F0.get(voice, FLITE_F0_DEFAULT)
        for word in cfg.words:
            for take in range(cfg.flite_takes):
                stretch = round(float(rng.uniform(*cfg.stretch)), 3)
                f0 = round(float(rng.uniform(lo, hi)), 1)
                jobs.append(
                    dict(
                        engine="flite", accent="", variant="", voice=voice, word=word, take=take,
                        speed="", pitch="", stretch=stretch, f0=f0, split="test",
                    )
                )  # fmt: skip
    for j in jobs:
        tag = _safe(f"{j['voice']}-{j['take']}")
        j["path"] = f"{j['split']}/{j['word']}/{j['engine']}_{tag}.{cfg.audio_format}"
        j["label"] = WORDS.index(j["word"])
    return jobs


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name)


def center_clip(wave: np.ndarray, n: int = SAMPLE_RATE, peak: float = 0.9, floor_db: float = -40.0):
    """Trim silence, centre in ``n`` samples (keeping the central ``n`` if longer), peak-normalise.

    Returns ``(clip float32 (n,), speech samples before padding, cropped)``; ValueError if silent.
    """
    hop = max(1, SAMPLE_RATE // 100)
    frames = len(wave) // hop
    if frames == 0:
        raise ValueError("audio shorter than one 10 ms frame")
    rms = np.sqrt(np.mean(wave[: frames * hop].reshape(frames, hop).astype(np.float64) ** 2, axis=1))
    if rms.max() <= 1e-6:
        raise ValueError("silent audio")
    active = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    speech = wave[active[0] * hop : (active[-1] + 1) * hop]
    length = len(speech)
    cropped = length > n
    if cropped:
        off = (length - n) // 2
        speech = speech[off : off + n]
    clip = np.zeros(n, dtype=np.float32)
    off = (n - len(speech)) // 2
    clip[off : off + len(speech)] = speech
    clip *= peak / float(np.abs(clip).max())
    return clip, length, cropped


def _make_one(job: dict, synth: Synthesizers, cfg: DigitsConfig, out: Path, tmp: Path):
    wav = tmp / f"{hashlib.sha1(job['path'].encode()).hexdigest()}.wav"
    cmd = synth.command(job, wav)
    res = subprocess.run(cmd, env=synth.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0 or not wav.exists():
        return None, f"{job['path']}: {job['engine']} exit {res.returncode}: {' '.join(res.stderr.split())[-200:]}"
    try:
        wave = read_audio(wav, SAMPLE_RATE, quality="VHQ", allow_silent=True)
        clip, length, cropped = center_clip(wave, int(round(cfg.seconds * SAMPLE_RATE)), cfg.peak)
    except ValueError as e:
        return None, f"{job['path']}: {e}"
    finally:
        wav.unlink(missing_ok=True)
    target = out / job["path"]
    target.parent.mkdir(parents=True, exist_ok=True)
    write_audio(clip, target, SAMPLE_RATE, cfg.audio_format)
    row = {k: job[k] for k in FIELDS if k in job}
    row.update(speech_s=round(length / SAMPLE_RATE, 3), cropped=int(cropped))
    return row, None


def make_spoken_digits(
    out: PathLike,
    cfg: Optional[DigitsConfig] = None,
    tools_dir: Optional[PathLike] = None,
    quiet: bool = False,
) -> Path:
    """Synthesize the spoken-digit set into ``out`` (replaced); returns ``out``.

    ``tools_dir``: where espeak-ng / flite are unpacked when they are not on PATH.
    """
    cfg = cfg or DigitsConfig()
    cfg.check()
    t0 = time.time()
    synth = Synthesizers(tools_dir, need_flite=bool(cfg.flite_voices) and cfg.flite_takes > 0, quiet=quiet)
    available = synth.variants()
    variants = list(cfg.variants) if cfg.variants is not None else available
    unknown = sorted(set(variants) - set(available))
    if unknown:
        raise ValueError(f"unknown espeak-ng variants {unknown}; the data has {len(available)}, e.g. {available[:6]}")
    jobs = plan(cfg, variants)
    out = Path(out)
    work = out.with_name(out.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="genomamba-digits-") as tmp:
        with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
            futures = [pool.submit(_make_one, j, synth, cfg, work, Path(tmp)) for j in jobs]
            for i, fut in enumerate(futures):
                row, err = fut.result()
                if row is not None:
                    rows.append(row)
                else:
                    skipped.append(err)
                if not quiet and (i + 1) % 1000 == 0:
                    print(f"  {i + 1}/{len(jobs)} clips ({time.time() - t0:.0f}s)", file=sys.stderr)
    if len(skipped) > max(5, 0.02 * len(jobs)):
        raise DigitsError(f"{len(skipped)} of {len(jobs)} clips failed, e.g. {skipped[:3]}")
    with open(work / MANIFEST, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(FIELDS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    prov = {
        "dataset": "spoken-digits",
        "description": "1 s 16 kHz mono spoken digits; test = the whole flite engine, "
        "val = whole espeak-ng voice variants, train = the other espeak-ng variants",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "variants": {"train": sorted({r["variant"] for r in rows if r["split"] == "train"}),
                     "val": sorted({r["variant"] for r in rows if r["split"] == "val"})},
        "programs": {name: {"path": synth.sources[name], "version": synth.versions[name]} for name in synth.sources},
        "debian_packages": synth.packages,
        "counts": counts,
        "clips": len(rows),
        "cropped": sum(int(r["cropped"]) for r in rows),
        "skipped": skipped,
        "seconds_to_build": round(time.time() - t0, 1),
    }  # fmt: skip
    (work / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)
    if not quiet:
        print(
            f"spoken digits: {len(rows)} clips ({counts}) into {out} in {time.time() - t0:.1f}s",
            file=sys.stderr,
        )
    return out


def read_manifest(path: PathLike) -> list:
    """Rows of a ``manifest.csv`` (a folder is read as its manifest); ``path`` resolved against it."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["label"] = int(r["label"])
        r["file"] = p.parent / r["path"]
    return rows


# --------------------------------------------------------------------------- `genomamba data fetch digits`
def fetch_digits(out: PathLike, verify: bool = True, quiet: bool = False) -> Path:
    """The default spoken-digit set in ``out``, reused when complete (every file's sha256 checked
    with ``verify``). espeak-ng / flite are unpacked next to it (``.debian-tools``) if needed."""
    out = Path(out)
    if dataset_complete(out, verify):
        return out
    make_spoken_digits(out, DigitsConfig(), tools_dir=out.parent / ".debian-tools", quiet=quiet)
    files = {r["path"]: file_sha256(out / r["path"]) for r in read_manifest(out)}
    write_marker(out, "digits", files)
    return out
