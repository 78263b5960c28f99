"""Waveform augmentation of training clips (audio classifiers): speed, shift, EQ, band limits, gain, noise.

``AudioAugment`` is the ``data.augment`` section of a classify config with the audio adapter. Every
effect is off until its range is set, and then applied to a clip with its own probability
(``*_prob``, default 1). In the order they run:

- ``speed: [lo, hi]``: play the clip ``s`` times as fast, ``s`` uniform in ``[lo, hi]``, by resampling
  with soxr (tape speed: ``s > 1`` raises the pitch and shortens the word, ``s < 1`` lowers and
  lengthens it); the result is centred in the window again, cut or padded with silence.
- ``shift: f``: move the clip by up to ``f`` of the window either way, padding with silence.
- ``eq_db: g``: a random smooth spectral envelope over log frequency (a tilt and up to three broad
  bumps, flat below 60 Hz), peaking at ``+-g'`` dB with ``g'`` uniform in ``[0, g]``: another vocal
  tract or microphone.
- ``lowpass_hz: [lo, hi]``, ``highpass_hz: [lo, hi]``: band limits, cutoff log-uniform in the range
  (8th-order Butterworth magnitude for the low-pass, 4th-order for the high-pass, zero phase), like a
  voice synthesized at a lower rate or a telephone line. Cutoffs must lie below the Nyquist frequency.
  The filtered clip (EQ and band limits together) is scaled back to its former peak: the filters
  change the timbre, never the level, so a boost does not clip.
- ``gain_db: [lo, hi]``: gain in dB, uniform in the range (samples beyond [-1, 1] are clipped at the end).
- ``noise_snr_db: [lo, hi]``: additive Gaussian noise at an SNR uniform in the range, measured against
  the mean power of the whole window; ``noise_color: [lo, hi]`` draws its spectral slope ``1 / f^b``
  (0 white, 1 pink, 2 brown; default white).

The filters share one FFT of the clip; the output always has the input's length. ``apply(wave, rng,
sample_rate)`` draws every coin and every parameter of a clip up front, in a fixed order, whether or
not its effect is on, so one probability never changes what the others draw; the noise samples
come last. ``SpeciesWindows(augment=...)`` decodes each training window's mu-law ids to a float
waveform, applies this and encodes the result again (decoding then encoding is exact, so a clip that
no effect touched keeps its ids); the evaluation windows are never augmented. Its generator is seeded
by (seed, epoch, worker slot, sample index): a run is reproducible, and augmentation never changes
which windows are drawn.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional

import numpy as np

# The uniform draws of one clip, always all of them, in this order.
_EQ_TERMS = 4  # cosines over log frequency: the first a tilt, the others broad bumps
_SPEED, _SHIFT, _EQ = 0, 2, 4  # coin, value; coin, value; coin, strength, _EQ_TERMS weights
_LOWPASS, _HIGHPASS, _GAIN, _NOISE = 6 + _EQ_TERMS, 8 + _EQ_TERMS, 10 + _EQ_TERMS, 12 + _EQ_TERMS
_N_DRAWS = _NOISE + 3  # noise: coin, SNR, colour
_EQ_FLOOR_HZ = 60.0  # the EQ envelope is flat below this
_LOWPASS_ORDER, _HIGHPASS_ORDER = 8, 4


@lru_cache(maxsize=64)
def _fft_len(n: int) -> int:
    """The smallest length >= n + n/8 with no prime factor above 5 (room for the filters' ringing; a fast FFT)."""
    m = n + n // 8
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


@dataclass
class AudioAugment:
    """Random waveform augmentation of training clips (see the module docstring for each key)."""

    speed: Optional[List[float]] = None
    speed_prob: float = 1.0
    shift: Optional[float] = None
    shift_prob: float = 1.0
    eq_db: Optional[float] = None
    eq_prob: float = 1.0
    lowpass_hz: Optional[List[float]] = None
    lowpass_prob: float = 1.0
    highpass_hz: Optional[List[float]] = None
    highpass_prob: float = 1.0
    gain_db: Optional[List[float]] = None
    gain_prob: float = 1.0
    noise_snr_db: Optional[List[float]] = None
    noise_color: List[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0])
    noise_prob: float = 1.0

    @classmethod
    def from_value(cls, value) -> Optional["AudioAugment"]:
        """``None``, an ``AudioAugment``, or a mapping of its keys (unknown keys refused)."""
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"augment: expected a mapping of augmentation settings, got {value!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"augment: unknown key(s) {unknown}; known: {sorted(names)}")
        return cls(**value)

    # ------------------------------------------------------------------ checks
    def check(self, sample_rate: Optional[int] = None, prefix: str = "augment") -> "AudioAugment":
        """Raise ValueError naming ``prefix.key`` for a bad value; cutoffs against ``sample_rate``'s Nyquist."""

        def pair(key, ok, rule):
            v = getattr(self, key)
            if v is None:
                return None
            try:
                lo, hi = (float(x) for x in v)
            except (TypeError, ValueError):
                lo = hi = math.nan
            if isinstance(v, (str, bytes)) or not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi
                                                     and ok(lo, hi)):
                raise ValueError(f"{prefix}.{key}: expected [lo, hi] with {rule}, got {v!r}")
            return lo, hi

        pair("speed", lambda lo, hi: lo > 0, "0 < lo <= hi")
        pair("gain_db", lambda lo, hi: True, "lo <= hi (dB)")
        pair("noise_snr_db", lambda lo, hi: True, "lo <= hi (dB)")
        pair("noise_color", lambda lo, hi: 0 <= lo and hi <= 2, "0 <= lo <= hi <= 2 (0 white, 1 pink, 2 brown)")
        if self.noise_color is None:
            raise ValueError(f"{prefix}.noise_color: expected [lo, hi] with 0 <= lo <= hi <= 2, got None")
        nyquist = None if sample_rate is None else sample_rate / 2
        for key in ("lowpass_hz", "highpass_hz"):
            rule = "0 < lo <= hi (Hz)" if nyquist is None else \
                f"0 < lo <= hi < {nyquist:g} (the Nyquist frequency at the adapter's sample_rate {sample_rate})"
            pair(key, lambda lo, hi: lo > 0 and (nyquist is None or hi < nyquist), rule)
        for key, rule in (("shift", "0 <= shift < 1 (a fraction of the window)"),
                          ("eq_db", "eq_db >= 0 (dB)")):
            v = getattr(self, key)
            if v is None:
                continue
            bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            if bad or v < 0 or (key == "shift" and v >= 1):
                raise ValueError(f"{prefix}.{key}: expected {rule}, got {v!r}")
        for f in dataclasses.fields(self):
            if f.name.endswith("_prob"):
                p = getattr(self, f.name)
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                    raise ValueError(f"{prefix}.{f.name}: expected a probability in [0, 1], got {p!r}")
        return self

    @property
    def active(self) -> bool:
        """Whether any effect can touch a clip (a range set and a probability above 0)."""
        on = (("speed", "speed_prob"), ("shift", "shift_prob"), ("eq_db", "eq_prob"),
              ("lowpass_hz", "lowpass_prob"), ("highpass_hz", "highpass_prob"), ("gain_db", "gain_prob"),
              ("noise_snr_db", "noise_prob"))
        return any(getattr(self, k) is not None and getattr(self, p) > 0 for k, p in on)

    # ------------------------------------------------------------------ the effects
    def apply(self, wave: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
        """One random augmentation of a float waveform; float32, the same length, in [-1, 1]."""
        x = np.asarray(wave, dtype=np.float64)
        n = x.shape[0]
        u = rng.random(_N_DRAWS)

        def on(key, prob, i):
            return getattr(self, key) is not None and u[i] < getattr(self, prob)

        def between(lo_hi, v):
            lo, hi = (float(t) for t in lo_hi)
            return lo + (hi - lo) * v

        def log_between(lo_hi, v):
            lo, hi = (float(t) for t in lo_hi)
            return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * v)

        if n == 0:
            return x.astype(np.float32)
        if on("speed", "speed_prob", _SPEED):
            x = _centre(_resample(x, between(self.speed, u[_SPEED + 1])), n)
        if on("shift", "shift_prob", _SHIFT):
            k = int(round((2 * u[_SHIFT + 1] - 1) * float(self.shift) * n))
            x = _shift(x, k)
        eq = on("eq_db", "eq_prob", _EQ)
        lowpass = on("lowpass_hz", "lowpass_prob", _LOWPASS)
        highpass = on("highpass_hz", "highpass_prob", _HIGHPASS)
        if eq or lowpass or highpass:
            m = _fft_len(n)
            grid = _grid(m, sample_rate)
            gain_db = np.zeros(len(grid.log_f))
            if eq:
                peak = u[_EQ + 1] * float(self.eq_db)
                gain_db += _eq_curve(grid.eq_basis, peak, 2 * u[_EQ + 2:_EQ + 2 + _EQ_TERMS] - 1)
            power = np.exp(gain_db * (math.log(10) / 10))  # |H|^2
            with np.errstate(over="ignore"):  # far beyond a cutoff the response is 0
                if lowpass:
                    log_fc = math.log(log_between(self.lowpass_hz, u[_LOWPASS + 1]))
                    power /= 1.0 + np.exp((2 * _LOWPASS_ORDER) * (grid.log_f - log_fc))
                if highpass:
                    log_fc = math.log(log_between(self.highpass_hz, u[_HIGHPASS + 1]))
                    power /= 1.0 + np.exp((2 * _HIGHPASS_ORDER) * (log_fc - grid.log_f))
            peak = float(np.abs(x).max())
            x = np.fft.irfft(np.fft.rfft(x, m) * np.sqrt(power), m)[:n]
            top = float(np.abs(x).max())
            if top > 0:
                x *= peak / top  # the filters change the timbre, not the peak level (no clipping)
        if on("gain_db", "gain_prob", _GAIN):
            x = x * 10.0 ** (between(self.gain_db, u[_GAIN + 1]) / 20.0)
        if on("noise_snr_db", "noise_prob", _NOISE):
            x = x + _noise(x, rng, between(self.noise_snr_db, u[_NOISE + 1]), between(self.noise_color, u[_NOISE + 2]))
        return np.clip(x, -1.0, 1.0).astype(np.float32)

    __call__ = apply


def _resample(x: np.ndarray, speed: float) -> np.ndarray:
    """``x`` played ``speed`` times as fast at the same rate (``len(x) / speed`` samples)."""
    if speed == 1.0:
        return x
    import soxr

    return soxr.resample(x, speed, 1.0, quality="HQ")


def _centre(x: np.ndarray, n: int) -> np.ndarray:
    """The middle ``n`` samples of ``x``, or ``x`` in the middle of ``n`` with silence either side."""
    if len(x) >= n:
        a = (len(x) - n) // 2
        return x[a:a + n]
    out = np.zeros(n, dtype=x.dtype)
    a = (n - len(x)) // 2
    out[a:a + len(x)] = x
    return out


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` moved ``k`` samples later (earlier when negative), silence where it left."""
    n = len(x)
    if k == 0:
        return x
    out = np.zeros_like(x)
    if abs(k) < n:
        if k > 0:
            out[k:] = x[:n - k]
        else:
            out[:n + k] = x[-k:]
    return out


class _Grid:
    """Per (FFT length, rate): log frequency of every bin (DC: -inf) and the EQ's cosines over it."""

    def __init__(self, m: int, sample_rate: int):
        f = np.fft.rfftfreq(m, 1.0 / sample_rate)
        with np.errstate(divide="ignore"):
            self.log_f = np.log(f)
        lo, hi = _EQ_FLOOR_HZ, sample_rate / 2
        pos = np.clip(np.log(np.maximum(f, lo) / lo) / math.log(max(hi, lo * 1.01) / lo), 0.0, 1.0)
        k = np.arange(1, _EQ_TERMS + 1)
        self.eq_basis = np.cos(np.pi * pos[:, None] * k) / k  # higher terms weigh less


@lru_cache(maxsize=16)
def _grid(m: int, sample_rate: int) -> _Grid:
    return _Grid(m, sample_rate)


@lru_cache(maxsize=16)
def _log_bins(n: int) -> np.ndarray:
    k = np.arange(n // 2 + 1, dtype=np.float64)
    k[0] = 1.0
    return np.log(k)


def _eq_curve(basis: np.ndarray, peak_db: float, weights: np.ndarray) -> np.ndarray:
    """A smooth gain curve in dB, ``basis @ weights`` scaled to peak at ``+-peak_db``."""
    curve = basis @ weights
    top = float(np.abs(curve).max())
    return curve * (peak_db / top) if top > 0 and peak_db > 0 else np.zeros(len(basis))


def _noise(x: np.ndarray, rng: np.random.Generator, snr_db: float, color: float) -> np.ndarray:
    """Gaussian noise of spectrum ``1 / f^color`` at ``snr_db`` below the mean power of ``x``."""
    n = len(x)
    w = rng.standard_normal(n)
    if color > 0 and n > 2:
        spec = np.fft.rfft(w)
        spec *= np.exp((-color / 2) * _log_bins(n))
        spec[0] = 0.0
        w = np.fft.irfft(spec, n)
    p_signal, p_noise = float(np.mean(x * x)), float(np.mean(w * w))
    if p_signal <= 0 or p_noise <= 0:
        return np.zeros_like(x)
    return w * math.sqrt(p_signal / p_noise * 10.0 ** (-snr_db / 10.0))
