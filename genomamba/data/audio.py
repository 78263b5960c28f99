"""Audio files in and out: any file libsndfile reads -> float32 mono at a fixed rate, and 16-bit WAV out.

The reader of the audio modality, as ``genomamba.data.fasta`` is the reader of DNA:

- ``read_audio(path, sample_rate)``: WAV, FLAC, OGG/Vorbis, ... at any sample rate and channel
  count -> float32 mono in [-1, 1] at ``sample_rate``. Integer PCM is scaled by its full range
  (int16 / 32768), channels are averaged, other rates are resampled with soxr.
- ``write_wav(wave, path, sample_rate)``: 16-bit PCM WAV.
- ``check_wave(wave)``: a finite 1-D float32 array, or a one-line ValueError naming the argument.

Bad files raise a one-line ``ValueError`` that names the file: not an audio file, no samples, a
silent clip (every sample below one 16-bit step), a WAV whose data chunk runs past the end of the
file (truncated), non-finite samples. A missing path raises ``FileNotFoundError``.

Needs ``soundfile`` and ``soxr`` (``pip install soundfile soxr``), imported on first use so that
``import genomamba`` works without them.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Union

import numpy as np

PathLike = Union[str, os.PathLike]
QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
# A clip whose loudest sample is below half a 16-bit step holds no signal a 16-bit file can carry.
SILENCE_PEAK = 0.5 / 32768


def require_audio_libs():
    """``(soundfile, soxr)``, or an ImportError that says how to install them."""
    try:
        import soundfile
        import soxr
    except (ImportError, OSError) as e:  # soundfile raises OSError when libsndfile itself is missing
        raise ImportError(f"audio files need soundfile and soxr: pip install soundfile soxr ({e})") from None
    return soundfile, soxr


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _to_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_wave(wave: Any, arg: str = "wave") -> np.ndarray:
    """``wave`` as a finite 1-D float32 array; ValueError naming ``arg`` otherwise."""
    arr = _to_numpy(wave)
    if arr.dtype.kind != "f":
        raise ValueError(
            f"audio: {arg} must be floating-point samples in [-1, 1], got dtype {arr.dtype} "
            "(integer arrays are token ids: use decode)"
        )
    if arr.ndim != 1:
        raise ValueError(f"audio: {arg} must be a mono 1-D waveform, got shape {tuple(arr.shape)} (use load)")
    if arr.size == 0:
        raise ValueError(f"audio: {arg} is empty")
    bad = ~np.isfinite(arr)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise ValueError(f"audio: {arg} has a non-finite sample ({arr[pos]}) at index {pos}")
    return arr.astype(np.float32, copy=False)


def check_wav_chunks(path: PathLike) -> None:
    """Raise ValueError if a RIFF/WAVE file's ``data`` chunk claims more bytes than the file holds.

    libsndfile reads such a file without complaint (it shortens the data chunk to what is there),
    so a WAV cut off by an interrupted copy would otherwise train on half a clip in silence.
    """
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            tag, n = struct.unpack("<4sI", fh.read(8))
            if tag == b"data":
                # 0 and 0xFFFFFFFF: "length unknown", what a writer streaming to a pipe leaves there
                if n not in (0, 0xFFFFFFFF) and pos + 8 + n > size:
                    raise ValueError(f"{p}: truncated WAV: its data chunk declares {n} bytes but the file holds "
                                     f"{size - pos - 8}")
                return
            pos += 8 + n + (n & 1)
    raise ValueError(f"{p}: truncated WAV: no data chunk before the end of the file")


def read_audio(path: PathLike, sample_rate: int = 16000, quality: str = "HQ", allow_silent: bool = False) -> np.ndarray:
    """Read an audio file as float32 mono in [-1, 1] at ``sample_rate`` Hz (see the module docstring)."""
    sf, soxr = require_audio_libs()
    p = Path(path)
    if not p.is_file():
        if p.exists():
            raise ValueError(f"{p}: not a regular file (an audio file was expected)")
        raise FileNotFoundError(f"{p}: no such file")
    if quality not in QUALITIES:
        raise ValueError(f"audio: quality must be one of {list(QUALITIES)}, got {quality!r}")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile's errors come as several types; all mean the same here
        why = one_line(e).replace(f"Error opening {str(p)!r}: ", "")  # libsndfile names the file again
        raise ValueError(f"{p}: cannot read audio: not an audio file libsndfile reads ({why})") from None
    check_wav_chunks(p)
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"{p}: no audio samples (an empty clip)")
    bad = ~np.isfinite(data)
    if bad.any():
        frame = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(f"{p}: non-finite sample at frame {frame}")
    if not allow_silent and float(np.abs(data).max()) < SILENCE_PEAK:
        raise ValueError(f"{p}: silent clip (no sample reaches one 16-bit step)")
    mono = data.mean(axis=1, dtype=np.float64) if data.shape[1] > 1 else data[:, 0].astype(np.float64)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality=quality)
        if mono.size == 0:
            raise ValueError(f"{p}: too short to resample from {rate} Hz to {sample_rate} Hz")
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


def write_wav(wave: Any, path: PathLike, sample_rate: int = 16000, arg: str = "wave") -> Path:
    """Write a float waveform as 16-bit PCM WAV at ``sample_rate``; returns the path."""
    sf, _ = require_audio_libs()
    w = check_wave(wave, arg)
    out = Path(path)
    try:
        sf.write(str(out), np.clip(w, -1.0, 1.0), int(sample_rate), subtype="PCM_16", format="WAV")
    except Exception as e:
        raise ValueError(f"{out}: cannot write WAV ({one_line(e)})") from None
    return out


def write_audio(wave: Any, path: PathLike, sample_rate: int = 16000, audio_format: str = "FLAC") -> Path:
    """Write a float waveform as 16-bit PCM in ``audio_format`` (FLAC, WAV, ...); returns the path."""
    sf, _ = require_audio_libs()
    out = Path(path)
    sf.write(str(out), np.clip(check_wave(wave), -1.0, 1.0), int(sample_rate), subtype="PCM_16",
             format=audio_format.upper())
    return out
