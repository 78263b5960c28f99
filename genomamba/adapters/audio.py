"""Raw-waveform audio adapter: mono, fixed sample rate, mu-law companded to ``mu + 1`` tokens.

Defaults: 16 kHz, ``mu = 255`` (8-bit mu-law, 256 tokens, ids are uint8), one token per sample,
so one second of audio is 16,000 tokens. ``pad_id`` is the code of silence (0.0 -> 128).

- ``load(path)``: any file libsndfile reads (WAV, FLAC, OGG/Vorbis, ...), any sample rate and
  channel count -> float32 mono in [-1, 1] at ``sample_rate``. Integer PCM is scaled by its full
  range (int16 / 32768), channels are averaged, other rates are resampled with soxr.
- ``encode(wave)`` / ``decode(ids)``: mu-law companding and 8-bit quantisation, and back.
- ``encode_file(path)`` is exactly ``encode(load(path))``.
- ``write_wav(ids_or_wave, path)``: 16-bit PCM WAV at ``sample_rate`` (integer input is decoded
  first, floating input is written as a waveform).

File reading, resampling and writing are ``genomamba.data.audio``'s (soundfile + soxr, imported on
first use so that ``import genomamba`` works without them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from genomamba.adapters.base import Adapter, PathLike, to_numpy
from genomamba.data.audio import QUALITIES, check_wave, read_audio, require_audio_libs, write_wav

__all__ = ["MuLawAudioAdapter", "mu_law_decode", "mu_law_encode", "require_audio_libs"]

_QUALITIES = QUALITIES


def mu_law_encode(wave: np.ndarray, mu: int = 255) -> np.ndarray:
    """Float samples in [-1, 1] (clipped) to integer codes ``0..mu`` (int64)."""
    x = np.clip(np.asarray(wave, dtype=np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu)
    return np.floor((y + 1.0) * (mu / 2.0) + 0.5).astype(np.int64)


def mu_law_decode(codes: np.ndarray, mu: int = 255) -> np.ndarray:
    """Integer codes ``0..mu`` back to float32 samples in [-1, 1]."""
    y = np.asarray(codes, dtype=np.float64) * (2.0 / mu) - 1.0
    return (np.sign(y) * np.expm1(np.abs(y) * math.log1p(mu)) / mu).astype(np.float32)


class MuLawAudioAdapter(Adapter):
    """Mono waveform at ``sample_rate`` Hz, mu-law quantised to ``mu + 1`` tokens.

    Args:
        sample_rate: rate every input is resampled to (Hz).
        mu: mu-law parameter; ``mu + 1`` tokens (255 -> 8-bit, uint8 ids; up to 65535).
        quality: soxr resampling quality, ``"HQ"`` (default) or ``"VHQ"``, ``"MQ"``, ``"LQ"``, ``"QQ"``.
    """

    name = "audio"
    unit = "sample"

    def __init__(self, sample_rate: int = 16000, mu: int = 255, quality: str = "HQ"):
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise ValueError(f"audio adapter: sample_rate must be a positive integer, got {sample_rate!r}")
        if isinstance(mu, bool) or not isinstance(mu, (int, np.integer)) or not 1 <= mu <= 65535:
            raise ValueError(f"audio adapter: mu must be an integer in [1, 65535], got {mu!r}")
        if quality not in _QUALITIES:
            raise ValueError(f"audio adapter: quality must be one of {list(_QUALITIES)}, got {quality!r}")
        self.sample_rate = int(sample_rate)
        self.mu = int(mu)
        self.quality = quality
        self.dtype = np.uint8 if self.mu <= 255 else np.int32
        self._pad = int(mu_law_encode(np.zeros(1), self.mu)[0])

    @property
    def vocab_size(self) -> int:
        return self.mu + 1

    @property
    def pad_id(self) -> int:
        """The code of silence (0.0)."""
        return self._pad

    def settings(self) -> dict:
        return {"sample_rate": self.sample_rate, "mu": self.mu, "quality": self.quality}

    # ------------------------------------------------------------------ waveform <-> ids
    def check_wave(self, wave: Any, arg: str = "wave") -> np.ndarray:
        """``wave`` as a finite 1-D float32 array; ValueError naming ``arg`` otherwise."""
        return check_wave(wave, arg)

    def encode(self, wave: Any) -> np.ndarray:
        """Float waveform (already at ``sample_rate``; values beyond [-1, 1] are clipped) to ids."""
        return mu_law_encode(self.check_wave(wave), self.mu).astype(self.dtype)

    def decode(self, ids: Any) -> np.ndarray:
        """Ids to a float32 waveform in [-1, 1] at ``sample_rate``."""
        return mu_law_decode(self.check_ids(ids), self.mu)

    # ------------------------------------------------------------------ files
    def load(self, path: PathLike) -> np.ndarray:
        """Read an audio file as float32 mono in [-1, 1] at ``sample_rate`` Hz (``genomamba.data.audio``)."""
        return read_audio(path, self.sample_rate, self.quality)

    def encode_file(self, path: PathLike) -> np.ndarray:
        """``encode(load(path))``."""
        return self.encode(self.load(path))

    def write_wav(self, ids_or_wave: Any, path: PathLike) -> Path:
        """Write 16-bit PCM WAV at ``sample_rate``: integer input is decoded, float input written as is."""
        arr = to_numpy(ids_or_wave)
        wave = self.decode(arr) if arr.size and arr.dtype.kind in "iu" else arr
        return write_wav(wave, path, self.sample_rate, arg="ids_or_wave")

    def seconds(self, ids_or_wave: Any) -> float:
        """Duration of an id array or waveform at ``sample_rate``."""
        return len(to_numpy(ids_or_wave)) / self.sample_rate
