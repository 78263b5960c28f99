"""Spoken digits ("zero" ... "nine"): 1-second 16 kHz mono clips from two or three speech synthesizers.

An SC09-like set for the audio adapter, built from programs that Debian ships:

- **espeak-ng**: English accents x voice variants (``+m3``, ``+f2``, ``+klatt4``, ...) x random
  speed (words per minute) and pitch;
- **flite**: its voices (kal at 8 kHz, kal16, awb, rms, slt at 16 kHz) x random duration stretch
  and mean f0. flite is a different synthesis engine.
- **festival** (``festival_voices``): its voices x random duration stretch and mean f0, for
  training only. ``genomamba data fetch digits`` uses ``ked`` (a US male diphone voice; see
  :func:`default_config`). ``kal`` and ``slt`` can be asked for but are not used by default:
  festival's ``kal`` diphone voice is built from the same speaker's recordings as flite's
  ``kal`` / ``kal16``, and its ``slt`` HTS voice from the same speaker as flite's ``slt``, so
  training on them puts test speakers into training and makes the held-out-engine test easier.

Splits test generalisation, not memorisation: ``test`` is the whole flite engine (never seen in
training), ``val`` is a set of whole espeak-ng voice variants (every accent, speed and pitch of
those variants), ``train`` is the remaining espeak-ng variants plus any festival clips. Held-out
variants of the training engine make an easy test; a held-out engine makes a hard one.

Every clip: synthesized WAV -> 16 kHz mono (soxr) -> silence trimmed (10 ms frames 40 dB below the
loudest) -> centred in exactly 1 s (a longer utterance keeps its central second, flagged
``cropped``) -> peak-normalised -> 16-bit FLAC (or WAV). ``manifest.csv`` lists path, label, word,
engine, voice, accent, variant, the synthesis parameters, split and speech duration;
``provenance.json`` records the programs, their package versions, the settings and the counts.
The output is a function of the settings and the seed (the programs are deterministic). The set is
built beside its folder and then replaces it; a folder that holds anything but an earlier set is
refused unless ``force`` is given (:func:`check_replaceable`).

If ``espeak-ng`` / ``flite`` / ``festival`` (the last only when festival voices are asked for) are
not on PATH they are fetched with ``apt-get download`` + ``dpkg -x`` (with the libraries they need
that this machine lacks, and festival's lexicons and the requested voices) into a tools folder and
run from there.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
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
from genomamba.data.debian import MARKER, DebianError, dataset_complete, unpacked_programs, write_marker
from genomamba.data.fasta import file_sha256
from genomamba.errors import OutputExistsError

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
# festival voice -> (festival's name for it, the Debian package that ships it). kal and slt are the
# speakers of flite's kal/kal16 and slt voices (the test split), hence not in the default set.
FESTIVAL_VOICES = {
    "ked": ("ked_diphone", "festvox-kdlpc16k"),  # US male, diphone, 16 kHz
    "kal": ("kal_diphone", "festvox-kallpc16k"),  # US male, diphone, 16 kHz
    "slt": ("cmu_us_slt_arctic_hts", "festvox-us-slt-hts"),  # US female, HTS, 32 kHz
}
DEFAULT_FESTIVAL_VOICES = ("ked",)  # the voices whose speakers are not in the test split
DEFAULT_FESTIVAL_TAKES = 60  # per voice and word in the fetched set (600 ked clips)
FESTIVAL_HTS = ("slt",)  # statistical (HTS) voices: speed set through the HTS engine, f0 left to the voice
FESTIVAL_F0 = {"slt": (150.0, 210.0)}  # mean f0 (Hz) drawn per festival voice; others FLITE_F0_DEFAULT
FESTIVAL_PACKAGES = ["festival", "festlex-cmu", "festlex-poslex"]
FESTIVAL_CHUNK = 50  # clips per festival process

SAMPLE_RATE = 16000
MANIFEST = "manifest.csv"
PROVENANCE = "provenance.json"
FIELDS = (
    "path", "label", "word", "engine", "voice", "accent", "variant",
    "speed", "pitch", "stretch", "f0", "split", "speech_s", "cropped",
)  # fmt: skip


class DigitsError(DebianError):
    """A synthesizer is missing or failed; the message says which and how to fix it."""


def check_festival_voices(voices) -> None:
    """ValueError naming any voice that is not in ``FESTIVAL_VOICES``."""
    bad = [v for v in voices if v not in FESTIVAL_VOICES]
    if bad:
        raise ValueError(f"unknown festival voices {bad}; the known ones are {list(FESTIVAL_VOICES)}")


@dataclass
class DigitsConfig:
    """What to synthesize: every espeak accent x variant x word ``takes`` times, every flite voice x
    word ``flite_takes`` times, every festival voice x word ``festival_takes`` times (train only),
    each with its own random synthesis parameters.

    ``festival_voices`` is empty here; :func:`default_config` (the fetched set) uses
    ``DEFAULT_FESTIVAL_VOICES`` (``("ked",)``) with ``DEFAULT_FESTIVAL_TAKES`` (60) takes.
    ``"kal"`` and ``"slt"`` are accepted but are the same speakers as flite's kal/kal16 and slt
    voices, which make up the test split."""

    seed: int = 0
    takes: int = 1  # random (speed, pitch) draws per espeak accent x variant x word
    flite_takes: int = 20  # random (stretch, f0) draws per flite voice x word
    festival_takes: int = 20  # random (stretch, f0) draws per festival voice x word
    val_fraction: float = 0.15  # share of espeak variants held out whole for val
    words: tuple = WORDS
    accents: tuple = ESPEAK_ACCENTS
    variants: Optional[tuple] = None  # None: every variant the espeak-ng data ships
    flite_voices: tuple = FLITE_VOICES
    festival_voices: tuple = ()  # a subset of FESTIVAL_VOICES; clips go to train
    speed: tuple = (120, 220)  # espeak words per minute, inclusive
    pitch: tuple = (20, 80)  # espeak pitch 0-99, inclusive
    stretch: tuple = (0.8, 1.25)  # flite / festival duration stretch
    peak: float = 0.9
    seconds: float = 1.0
    audio_format: str = "flac"
    workers: int = field(default_factory=lambda: max(1, min(8, os.cpu_count() or 1)))

    def check(self) -> None:
        if self.takes < 1 or self.flite_takes < 0 or self.festival_takes < 0:
            raise ValueError(
                "takes must be >= 1 and flite_takes, festival_takes >= 0, "
                f"got {self.takes}, {self.flite_takes}, {self.festival_takes}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        unknown = [w for w in self.words if w not in WORDS]
        if unknown or not self.words:
            raise ValueError(f"words must be a non-empty subset of {list(WORDS)}, got {list(self.words)}")
        bad = [a for a in self.accents if a not in ESPEAK_ACCENTS]
        if bad:
            raise ValueError(f"unknown espeak-ng accents {bad}; the English accents are {list(ESPEAK_ACCENTS)}")
        bad = [v for v in self.flite_voices if v not in FLITE_VOICES]
        if bad:
            raise ValueError(f"unknown flite voices {bad}; flite has {list(FLITE_VOICES)}")
        check_festival_voices(self.festival_voices)
        if self.audio_format not in ("flac", "wav"):
            raise ValueError(f"audio_format must be 'flac' or 'wav', got {self.audio_format!r}")


# --------------------------------------------------------------------------- the synthesizers
class Synthesizers:
    """Locates espeak-ng, flite and (when festival voices are asked for) festival: PATH first, else
    unpacked Debian packages in ``tools_dir``. A festival on PATH that lacks a requested voice is
    replaced by an unpacked one when ``tools_dir`` is given."""

    def __init__(
        self,
        tools_dir: Optional[PathLike] = None,
        need_flite: bool = True,
        quiet: bool = False,
        festival_voices: tuple = (),
    ):
        self.env = dict(os.environ)
        self.sources: dict = {}
        self.packages: dict = {}
        self.festival_voices = tuple(festival_voices)
        check_festival_voices(self.festival_voices)
        voice_packages = sorted({FESTIVAL_VOICES[v][1] for v in self.festival_voices})
        want = [("espeak-ng", ESPEAK_PACKAGES)]
        if need_flite:
            want.append(("flite", FLITE_PACKAGES))
        if self.festival_voices:
            want.append(("festival", FESTIVAL_PACKAGES + voice_packages))
        found = {name: shutil.which(name) for name, _ in want}
        self.festival_args: list = []
        if found.get("festival") and tools_dir is not None and self._festival_lacks(found["festival"]):
            found["festival"] = None  # installed without a requested voice: use an unpacked copy
        names = [n for n, _ in want if not found[n]]
        toolbox = None
        if names:
            apt = ["espeak-ng", "flite"] + (["festival", *voice_packages] if self.festival_voices else [])
            if tools_dir is None:
                raise DigitsError(
                    f"{names} not on PATH and no tools folder given: "
                    f"`apt-get install {' '.join(apt)}`, or pass a tools folder to unpack them into"
                )
            packages = sorted({p for n, pkgs in want if n in names for p in pkgs})
            try:
                toolbox, paths, self.packages = unpacked_programs(names, packages, Path(tools_dir), quiet=quiet)
            except DebianError as e:
                raise DigitsError(
                    f"{names} not on PATH (`apt-get install {' '.join(apt)}` installs them) and unpacking them "
                    f"from Debian packages into {tools_dir} failed: {e}"
                ) from None
            found.update({n: str(p) for n, p in paths.items()})
            self.env = toolbox.env
        self.espeak = found["espeak-ng"]
        self.flite = found.get("flite")
        self.festival = found.get("festival")
        self.espeak_args: list = []
        if toolbox is not None and "espeak-ng" in names:
            data = sorted(toolbox.fs.glob("**/espeak-ng-data/phontab"))
            if not data:
                raise DigitsError(f"no espeak-ng-data under {toolbox.fs}")
            self.espeak_data = data[0].parent
            self.espeak_args = [f"--path={self.espeak_data.parent}"]
        else:
            self.espeak_data = self._installed_espeak_data()
        if toolbox is not None and "festival" in names:
            # An unpacked festival looks for its Scheme library, lexicons and voices under
            # /usr/share/festival unless both folders are given.
            lib = toolbox.fs / "usr" / "share" / "festival"
            if not (lib / "init.scm").exists():
                raise DigitsError(f"no festival library (init.scm) under {lib}")
            self.festival_args = ["--libdir", str(lib), "--datadir", str(lib)]
        for name, path in (("espeak-ng", self.espeak), ("flite", self.flite), ("festival", self.festival)):
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
        if self.festival:
            lacking = self._festival_lacks(self.festival)
            if lacking:
                raise DigitsError(
                    f"{self.festival} lacks the voices {lacking}: "
                    f"`apt-get install {' '.join(FESTIVAL_VOICES[v][1] for v in lacking)}`"
                )
            banner = self._version([self.festival, "--version"])
            m = re.search(r"Festival Speech Synthesis System.*", banner)
            self.versions["festival"] = m.group(0) if m else banner

    def _festival_lacks(self, festival: str) -> list:
        """The requested festival voices that ``festival`` (with the current arguments) cannot load."""
        listed = self._version([festival, *self.festival_args, "-b", "(print (voice.list))"], limit=100_000)
        have = set(listed.strip("()").split())
        return [v for v in self.festival_voices if FESTIVAL_VOICES[v][0] not in have]

    def _installed_espeak_data(self) -> Path:
        out = self._version([self.espeak, "--version"])
        m = re.search(r"Data at:\s*(\S+)", out)
        if not m or not (Path(m.group(1)) / "phontab").exists():
            raise DigitsError(f"cannot find espeak-ng's data folder (espeak-ng --version says {out!r})")
        return Path(m.group(1))

    def _version(self, cmd: list, ok: tuple = (0,), limit: int = 300) -> str:
        try:
            res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise DigitsError(f"{cmd[0]} does not run: {e}") from None
        text = " ".join((res.stdout + res.stderr).split())
        if res.returncode not in ok:
            raise DigitsError(f"{cmd[0]} does not run (exit {res.returncode}): {text[-500:]}")
        return text[:limit]

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

    def festival_script(self, jobs: list, wavs: list) -> str:
        """A festival Scheme script that synthesizes ``jobs`` (all of one voice) into ``wavs``.

        Diphone voices: the mean f0 of the intonation model is set per clip (std 12% of the mean)
        and ``Duration_Stretch`` stretches the predicted durations. The HTS voice takes its
        durations from its own model, so the stretch goes to the HTS engine as a speed rate
        (1 / stretch), and its f0 is left as the model predicts it.
        """
        voice = jobs[0]["voice"]
        if any(j["voice"] != voice for j in jobs):
            raise ValueError("one festival script synthesizes one voice")
        hts = voice in FESTIVAL_HTS
        lines = [f"(voice_{FESTIVAL_VOICES[voice][0]})"]
        if hts:
            lines.append("(set! digits_hts_params hts_engine_params)")
        for job, wav in zip(jobs, wavs):
            if hts:
                rate = round(1.0 / float(job["stretch"]), 4)
                lines.append(f'(set! hts_engine_params (append digits_hts_params (list (list "-r" {rate}))))')
            else:
                f0 = float(job["f0"])
                lines.append(
                    f"(set! int_lr_params '((target_f0_mean {f0}) (target_f0_std {round(0.12 * f0, 2)}) "
                    "(model_f0_mean 170) (model_f0_std 34)))"
                )
                lines.append(f"(Parameter.set 'Duration_Stretch {float(job['stretch'])})")
            lines.append(
                f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(job['word'])})) "
                f"{_scheme_string(str(wav))} 'riff)"
            )
        return "\n".join(lines) + "\n"


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
    def voice_takes(engine, voices, takes, f0_ranges, split, no_f0=()):
        """``takes`` random (stretch, mean f0) draws per voice and word of a stretch/f0 engine."""
        for voice in voices:
            lo, hi = f0_ranges.get(voice, FLITE_F0_DEFAULT)
            for word in cfg.words:
                for take in range(takes):
                    stretch = round(float(rng.uniform(*cfg.stretch)), 3)
                    f0 = round(float(rng.uniform(lo, hi)), 1)  # drawn either way: the same stream
                    jobs.append(
                        dict(
                            engine=engine, accent="", variant="", voice=voice, word=word, take=take,
                            speed="", pitch="", stretch=stretch, f0="" if voice in no_f0 else f0, split=split,
                        )
                    )  # fmt: skip

    voice_takes("flite", cfg.flite_voices, cfg.flite_takes, FLITE_F0, "test")
    # festival is drawn after flite, so adding festival voices leaves the other clips unchanged.
    voice_takes("festival", cfg.festival_voices, cfg.festival_takes, FESTIVAL_F0, "train", no_f0=FESTIVAL_HTS)
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
    wav = _wav_name(job, tmp)
    cmd = synth.command(job, wav)
    res = subprocess.run(cmd, env=synth.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0 or not wav.exists():
        wav.unlink(missing_ok=True)
        return None, f"{job['path']}: {job['engine']} exit {res.returncode}: {' '.join(res.stderr.split())[-200:]}"
    return _finish_clip(job, wav, cfg, out)


def _wav_name(job: dict, tmp: Path) -> Path:
    return tmp / f"{hashlib.sha1(job['path'].encode()).hexdigest()}.wav"


def _finish_clip(job: dict, wav: Path, cfg: DigitsConfig, out: Path):
    """A synthesized WAV (removed afterwards) -> the dataset clip: ``(manifest row, None)`` or
    ``(None, why it was skipped)``."""
    if not wav.exists():
        return None, f"{job['path']}: {job['engine']} wrote no audio"
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


def _make_one_listed(job: dict, synth: Synthesizers, cfg: DigitsConfig, out: Path, tmp: Path) -> list:
    return [_make_one(job, synth, cfg, out, tmp)]


def _make_festival(jobs: list, synth: Synthesizers, cfg: DigitsConfig, out: Path, tmp: Path) -> list:
    """One festival process for ``jobs`` (one voice): a generated script writes every WAV, then each
    becomes a clip as in ``_make_one``. Returns ``[(row, error), ...]`` in the order of ``jobs``;
    DigitsError (naming the voice and the end of festival's messages) when festival fails."""
    wavs = [_wav_name(j, tmp) for j in jobs]
    script = tmp / f"{wavs[0].stem}.scm"
    script.write_text(synth.festival_script(jobs, wavs))
    try:
        cmd = [synth.festival, *synth.festival_args, "-b", str(script)]
        try:
            res = subprocess.run(cmd, env=synth.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise DigitsError(f"festival (voice {jobs[0]['voice']}) does not run: {e}") from None
        if res.returncode != 0:
            for w in wavs:
                with contextlib.suppress(OSError):  # tidying up must not hide festival's message
                    w.unlink(missing_ok=True)
            tail = " ".join((res.stderr + res.stdout).split())[-500:]
            raise DigitsError(f"festival failed on voice {jobs[0]['voice']} (exit {res.returncode}): {tail}")
        return [_finish_clip(j, w, cfg, out) for j, w in zip(jobs, wavs)]
    finally:
        script.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the output folder
def unexpected_files(out: PathLike) -> list:
    """What replacing ``out`` with a new spoken-digit set would delete that a build did not write:
    the paths (relative to ``out``, sorted) of its files other than ``manifest.csv``,
    ``provenance.json``, the fetch record and the clips that manifest lists. An earlier set, an
    empty folder or a missing one gives ``[]``; a folder without a spoken-digit ``provenance.json``
    gives all its files; ``out`` that is a file (or a link) gives ``["."]``."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        return ["."]
    if not out.exists():
        return []
    ours: set = set()
    try:
        is_set = json.loads((out / PROVENANCE).read_text()).get("dataset") == "spoken-digits"
    except (OSError, ValueError, AttributeError):
        is_set = False
    if is_set:
        ours = {MANIFEST, PROVENANCE, MARKER}
        try:
            with open(out / MANIFEST, newline="") as fh:
                ours |= {r.get("path") or "" for r in csv.DictReader(fh)}
        except (OSError, ValueError, csv.Error):
            pass  # no readable manifest: only the files named above are the set's
    found = []
    for root, dirs, files in os.walk(out):
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]  # not walked into, but deleted
        for name in files + links:
            rel = Path(root, name).relative_to(out).as_posix()
            if rel not in ours:
                found.append(rel)
    return sorted(found)


def check_replaceable(out: PathLike, force: bool = False,
                      how: str = "choose another folder, or pass force=True to replace it") -> None:
    """Refuse (``OutputExistsError``, one line naming ``out``) to replace ``out`` unless it is missing,
    empty or an earlier spoken-digit set (see :func:`unexpected_files`), or ``force`` is given.
    ``how`` ends the message: what the caller can do instead."""
    if force:
        return
    extra = unexpected_files(out)
    if extra == ["."]:
        raise OutputExistsError(errno.EEXIST, f"{out}: is a file or a symbolic link, not a folder; {how}")
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise OutputExistsError(
            errno.EEXIST,
            f"{out}: holds {len(extra)} file(s) that are not part of a spoken-digit set ({shown}); building "
            f"the set there would delete them: move them elsewhere, {how}",
        )


def staging_folder(out: PathLike) -> Path:
    """A new empty folder beside ``out`` (hidden, a name no other build uses) to build the set in
    before it replaces ``out``; its permissions are those of a folder made with ``mkdir``."""
    out = Path(os.path.abspath(out))  # "." or "x/..": beside the folder itself, never inside it
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(work, 0o777 & ~mask)
    return work


def replace_folder(work: PathLike, out: PathLike, force: bool = False,
                   how: str = "choose another folder, or pass force=True to replace it") -> Path:
    """Move the finished folder ``work`` to ``out``, replacing an earlier ``out``; checked again with
    :func:`check_replaceable` first, as files may have been added to ``out`` while the set was built."""
    work, out = Path(work), Path(out)
    check_replaceable(out, force, how)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)
    os.replace(work, out)
    return out


def make_spoken_digits(
    out: PathLike,
    cfg: Optional[DigitsConfig] = None,
    tools_dir: Optional[PathLike] = None,
    quiet: bool = False,
    force: bool = False,
) -> Path:
    """Synthesize the spoken-digit set into ``out``; returns ``out``.

    ``out`` is replaced when it is missing, empty or an earlier spoken-digit set; a folder holding
    other files is refused (``OutputExistsError``, before any synthesis) unless ``force``.
    ``tools_dir``: where espeak-ng / flite / festival (with the requested voices) are unpacked when
    they are not on PATH.
    """
    cfg = cfg or DigitsConfig()
    cfg.check()
    out = Path(out)
    check_replaceable(out, force)
    t0 = time.time()
    synth = Synthesizers(
        tools_dir,
        need_flite=bool(cfg.flite_voices) and cfg.flite_takes > 0,
        quiet=quiet,
        festival_voices=cfg.festival_voices if cfg.festival_takes > 0 else (),
    )
    available = synth.variants()
    variants = list(cfg.variants) if cfg.variants is not None else available
    unknown = sorted(set(variants) - set(available))
    if unknown:
        raise ValueError(f"unknown espeak-ng variants {unknown}; the data has {len(available)}, e.g. {available[:6]}")
    jobs = plan(cfg, variants)
    work = staging_folder(out)
    try:
        prov = _build(jobs, synth, cfg, work, t0, quiet)
        replace_folder(work, out, force)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if not quiet:
        print(
            f"spoken digits: {prov['clips']} clips ({prov['counts']}) into {out} in {time.time() - t0:.1f}s",
            file=sys.stderr,
        )
    return out


def _build(jobs: list, synth: Synthesizers, cfg: DigitsConfig, work: Path, t0: float, quiet: bool) -> dict:
    """Synthesize ``jobs`` into ``work``, write its manifest.csv and provenance.json; returns the provenance."""
    # Pool tasks: one per espeak-ng / flite clip, one per chunk of a festival voice's clips (one
    # festival process each). Results are gathered in plan order.
    festival = {}
    for i, j in enumerate(jobs):
        if j["engine"] == "festival":
            festival.setdefault(j["voice"], []).append(i)
    chunks = [idx[k : k + FESTIVAL_CHUNK] for idx in festival.values() for k in range(0, len(idx), FESTIVAL_CHUNK)]
    results: list = [None] * len(jobs)
    done = 0
    with tempfile.TemporaryDirectory(prefix="genomamba-digits-") as tmp:
        with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
            # festival chunks first: each is a longer task
            tasks = [
                (idx, pool.submit(_make_festival, [jobs[i] for i in idx], synth, cfg, work, Path(tmp)))
                for idx in chunks
            ]
            tasks += [([i], pool.submit(_make_one_listed, j, synth, cfg, work, Path(tmp)))
                      for i, j in enumerate(jobs) if j["engine"] != "festival"]  # fmt: skip
            try:
                for idx, fut in tasks:
                    for i, r in zip(idx, fut.result()):
                        results[i] = r
                    before, done = done, done + len(idx)
                    if not quiet and done // 1000 > before // 1000:
                        print(f"  {done}/{len(jobs)} clips ({time.time() - t0:.0f}s)", file=sys.stderr)
            except BaseException:
                pool.shutdown(cancel_futures=True)  # a failed synthesizer: skip the clips not started
                raise
    rows = [row for row, _ in results if row is not None]
    skipped = [err for row, err in results if row is None]
    if len(skipped) > max(5, 0.02 * len(jobs)):
        raise DigitsError(f"{len(skipped)} of {len(jobs)} clips failed, e.g. {skipped[:3]}")
    with open(work / MANIFEST, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(FIELDS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    by_engine = {s: {e: n for e in ("espeak-ng", "flite", "festival")
                     if (n := sum(r["split"] == s and r["engine"] == e for r in rows))}
                 for s in ("train", "val", "test")}  # fmt: skip
    train = "the other espeak-ng variants"
    if by_engine["train"].get("festival"):
        voices = sorted({r["voice"] for r in rows if r["engine"] == "festival"})
        train += f" and the festival voices {voices}"
    prov = {
        "dataset": "spoken-digits",
        "description": "1 s 16 kHz mono spoken digits; test = the whole flite engine, "
        f"val = whole espeak-ng voice variants, train = {train}",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "variants": {s: sorted({r["variant"] for r in rows if r["split"] == s and r["engine"] == "espeak-ng"})
                     for s in ("train", "val")},
        "programs": {name: {"path": synth.sources[name], "version": synth.versions[name]} for name in synth.sources},
        "debian_packages": synth.packages,
        "counts": counts,
        "counts_by_engine": by_engine,
        "clips": len(rows),
        "cropped": sum(int(r["cropped"]) for r in rows),
        "skipped": skipped,
        "seconds_to_build": round(time.time() - t0, 1),
    }  # fmt: skip
    (work / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
    return prov


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
def default_config() -> DigitsConfig:
    """The settings of ``genomamba data fetch digits``: every espeak-ng variant, every flite voice
    (the test split) and festival's ked voice in training, 60 takes per word (a third engine and a
    speaker that no other voice has; on one GPU, held-out flite accuracy rose with the number of
    its clips: none, 200, 600)."""
    return DigitsConfig(festival_voices=DEFAULT_FESTIVAL_VOICES, festival_takes=DEFAULT_FESTIVAL_TAKES)


def _settings(cfg: DigitsConfig) -> dict:
    """What a built set depends on (everything but the worker count), JSON-shaped."""
    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
    d.pop("workers", None)
    return d


def built_with(out: PathLike, cfg: DigitsConfig) -> bool:
    """True if the set in ``out`` was built with ``cfg``'s settings (its provenance.json says so)."""
    try:
        prov = json.loads((Path(out) / PROVENANCE).read_text())
    except (OSError, ValueError):
        return False
    recorded = dict(prov.get("config") or {})
    recorded.pop("workers", None)
    want = _settings(cfg)
    # a set built before an option existed was built with that option's default
    defaults = _settings(DigitsConfig())
    for k, v in defaults.items():
        recorded.setdefault(k, v)
    return recorded == want


def fetch_digits(out: PathLike, verify: bool = True, quiet: bool = False) -> Path:
    """The default spoken-digit set (:func:`default_config`) in ``out``, reused when complete (every
    file's sha256 checked with ``verify``) and built with today's settings; a set built with other
    settings is rebuilt. The synthesizers are unpacked next to it (``.debian-tools``) if needed."""
    out = Path(out)
    cfg = default_config()
    if dataset_complete(out, verify) and built_with(out, cfg):
        return out
    check_replaceable(out, how="choose another --dest (genomamba data fetch digits rebuilds the set in DEST/digits)")
    if out.exists() and not quiet:
        print(f"spoken digits: {out} was built with other settings or is incomplete; rebuilding", file=sys.stderr)
    make_spoken_digits(out, cfg, tools_dir=out.parent / ".debian-tools", quiet=quiet)
    files = {r["path"]: file_sha256(out / r["path"]) for r in read_manifest(out)}
    write_marker(out, "digits", files)
    return out
