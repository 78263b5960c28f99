"""A spectral front end for audio classifiers: mu-law token ids -> normalised log-mel frames -> d_model.

A classifier that reads raw samples must learn its own filter bank, and one trained on some speech
synthesizers learns theirs: their timbre, not the words. ``SpectralFrontEnd`` gives the backbone what
tells the words apart instead: the energy of ``n_mels`` mel bands (``fmin`` .. ``fmax``) in ``win_ms``
Hann frames every ``hop_ms``, on a log scale, with each band's mean and spread over the clip removed
(so a voice's fixed colouring, a channel's tilt and the loudness drop out), ``stack`` consecutive
frames side by side, projected to ``d_model`` by one linear layer. The backbone then reads ~50
vectors per second instead of thousands of samples.

``n_ceps`` (off by default) keeps only the first ``n_ceps`` cosine coefficients of each frame's log-mel
energies (mel-frequency cepstra), each normalised over the clip in the same way. The low coefficients
describe the spectral envelope (the formants, which carry the word); the higher ones, dropped, carry
the fine ripple of the voice's harmonics, i.e. its pitch, which is a property of the speaker.

It runs inside the model on the same token ids as everything else (the audio adapter's mu-law ids at
its sample rate), so data loading, augmentation, saved models and ``genomamba.load(...).classify``
need nothing new; the only weights are the projection's (saved with the head).

``augment`` (training only; a module in eval mode never applies it) perturbs the features of each
training clip, drawn with torch's random generator:

- ``warp: [lo, hi]``: stretch the clip's spectrum along frequency by a factor uniform in ``[lo, hi]``
  (formants and pitch move together, as between a short and a long vocal tract), by linear
  interpolation between FFT bins;
- ``freq_masks`` bands of up to ``freq_width`` mel channels and ``time_masks`` spans of up to
  ``time_width`` frames set to the clip's mean (0 after normalisation).

Synthesizers differ from each other mostly in exactly these directions (formant placement, a missing
or smeared band, a shorter or longer segment), which is what a classifier trained on some of them
must ignore to hear the words of another.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from genomamba.adapters.audio import mu_law_decode

FRONTEND_KINDS = ("spectral",)
AUGMENT_KEYS = ("warp", "freq_masks", "freq_width", "time_masks", "time_width")


def check_augment(augment) -> Optional[dict]:
    """``head.frontend.augment`` -> a normalised dict (or None); a bad value is a ``ValueError`` naming it."""
    if augment is None:
        return None
    if not isinstance(augment, dict):
        raise ValueError(f"frontend.augment: expected a mapping with keys among {list(AUGMENT_KEYS)}, got {augment!r}")
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise ValueError(f"frontend.augment: unknown settings {unknown} (known: {list(AUGMENT_KEYS)})")
    out = {}
    warp = augment.get("warp")
    if warp is not None:
        ok = (isinstance(warp, (list, tuple)) and len(warp) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in warp)
              and 0.5 <= warp[0] <= warp[1] <= 2.0)
        if not ok:
            raise ValueError(f"frontend.augment.warp: expected [lo, hi] with 0.5 <= lo <= hi <= 2, got {warp!r}")
        out["warp"] = [float(warp[0]), float(warp[1])]
    for key in ("freq_masks", "freq_width", "time_masks", "time_width"):
        v = augment.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1000:
            raise ValueError(f"frontend.augment.{key}: expected an int in 0..1000, got {v!r}")
        out[key] = v
    for count, width in (("freq_masks", "freq_width"), ("time_masks", "time_width")):
        if out[count] and not out[width]:
            raise ValueError(f"frontend.augment.{width}: {count} = {out[count]} needs a width >= 1")
    return out


def with_adapter(settings: dict, sample_rate: int, mu: int) -> dict:
    """Front-end settings (``head.frontend``) completed with the audio adapter's sample rate and mu,
    which a config leaves out; a value that contradicts the adapter is a ``ValueError`` naming it."""
    fixed = {"sample_rate": sample_rate, "mu": mu}
    clash = sorted(k for k in fixed if k in settings and settings[k] != fixed[k])
    if clash:
        raise ValueError(f"frontend: {clash} come from the adapter ({fixed}); leave them out")
    return {**dict(settings), **fixed}


def _draw_masks(n_masks: int, width: int, size: int, b: int, device) -> torch.Tensor:
    """(b, size) bool: per row, ``n_masks`` spans of 0..width positions at uniform starts."""
    pos = torch.arange(size, device=device)
    widths = torch.randint(0, width + 1, (b, n_masks, 1), device=device)
    starts = (torch.rand(b, n_masks, 1, device=device) * (size - widths + 1).clamp(min=1)).long()
    return ((pos >= starts) & (pos < starts + widths)).any(1)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_in, n_out) orthonormal DCT-II: ``x @ dct_matrix(n, k)`` keeps the first k cosine coefficients."""
    i = np.arange(n_in, dtype=np.float64)[:, None] + 0.5
    k = np.arange(n_out, dtype=np.float64)[None, :]
    m = np.cos(np.pi * i * k / n_in) * math.sqrt(2.0 / n_in)
    m[:, 0] /= math.sqrt(2.0)
    return m


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced on the mel scale (HTK formula)."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)

    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        fb[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)
    return fb


class SpectralFrontEnd(nn.Module):
    """Token ids (b, l) of the audio adapter -> (embeddings (b, T, d_model), frame mask (b, T)).

    ``sample_rate`` and ``mu`` are the adapter's; ``fmax`` None is the Nyquist frequency. A frame
    counts only if every sample under it is real (``mask``); a clip needs at least one frame of
    ``win_ms`` x ``stack``. Every bad setting is a ``ValueError`` naming it."""

    def __init__(self, d_model: int, sample_rate: int, mu: int = 255, n_mels: int = 40, win_ms: float = 25.0,
                 hop_ms: float = 10.0, stack: int = 2, fmin: float = 60.0, fmax: Optional[float] = None,
                 n_ceps: Optional[int] = None, augment: Optional[dict] = None):
        super().__init__()
        self.augment = check_augment(augment)
        nyquist = sample_rate / 2 if isinstance(sample_rate, (int, float)) else None
        fmax = nyquist if fmax is None else fmax
        checks = [
            ("sample_rate", sample_rate, isinstance(sample_rate, int) and sample_rate >= 1000, "an int >= 1000 (Hz)"),
            ("mu", mu, isinstance(mu, int) and mu >= 1, "a positive int"),
            ("n_mels", n_mels, isinstance(n_mels, int) and 1 <= n_mels <= 256, "an int in 1..256"),
            ("win_ms", win_ms, isinstance(win_ms, (int, float)) and 1.0 <= win_ms <= 200.0, "1 .. 200 (ms)"),
            ("hop_ms", hop_ms, isinstance(hop_ms, (int, float)) and 0.5 <= hop_ms <= win_ms, "0.5 .. win_ms (ms)"),
            ("stack", stack, isinstance(stack, int) and 1 <= stack <= 16, "an int in 1..16"),
            ("n_ceps", n_ceps, n_ceps is None or (isinstance(n_ceps, int) and isinstance(n_mels, int)
                                                  and 1 <= n_ceps <= n_mels), "null or an int in 1..n_mels"),
            ("fmin", fmin, isinstance(fmin, (int, float)) and 0.0 <= fmin, "a frequency >= 0 (Hz)"),
            ("fmax", fmax, isinstance(fmax, (int, float)) and nyquist is not None and fmin < fmax <= nyquist,
             f"a frequency above fmin and at most half the sample rate ({nyquist} Hz)"),
        ]
        for name, value, ok, want in checks:
            if isinstance(value, bool) or not ok:
                raise ValueError(f"frontend.{name}: expected {want}, got {value!r}")
        self.sample_rate, self.mu, self.n_mels, self.stack = int(sample_rate), int(mu), int(n_mels), int(stack)
        self.n_ceps = None if n_ceps is None else int(n_ceps)
        self.win_ms, self.hop_ms, self.fmin, self.fmax = float(win_ms), float(hop_ms), float(fmin), float(fmax)
        self.win = max(2, round(self.win_ms * sample_rate / 1000))
        self.hop = max(1, round(self.hop_ms * sample_rate / 1000))
        self.n_fft = 1 << math.ceil(math.log2(self.win))
        table = mu_law_decode(np.arange(mu + 1), mu)  # the adapter's decoding, as a lookup table
        self.register_buffer("table", torch.tensor(table, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(self.win, periodic=False, dtype=torch.float32),
                             persistent=False)
        fb = mel_filterbank(n_mels, self.n_fft, sample_rate, self.fmin, self.fmax)
        self.register_buffer("filters", torch.tensor(fb.T, dtype=torch.float32), persistent=False)
        if self.n_ceps is not None:
            self.register_buffer("dct", torch.tensor(dct_matrix(self.n_mels, self.n_ceps), dtype=torch.float32),
                                 persistent=False)
        self.proj = nn.Linear(self.n_features * stack, d_model)

    @property
    def n_features(self) -> int:
        """Values per frame: the mel bands, or the cepstral coefficients when ``n_ceps`` is set."""
        return self.n_mels if self.n_ceps is None else self.n_ceps

    def config(self) -> dict:
        """What rebuilds this front end (saved in head.json)."""
        return {"kind": "spectral", "sample_rate": self.sample_rate, "mu": self.mu, "n_mels": self.n_mels,
                "win_ms": self.win_ms, "hop_ms": self.hop_ms, "stack": self.stack, "fmin": self.fmin,
                "fmax": self.fmax, **({"n_ceps": self.n_ceps} if self.n_ceps is not None else {}),
                **({"augment": dict(self.augment)} if self.augment else {})}

    @classmethod
    def from_config(cls, d_model: int, cfg: dict) -> "SpectralFrontEnd":
        cfg = dict(cfg)
        kind = cfg.pop("kind", "spectral")
        if kind not in FRONTEND_KINDS:
            raise ValueError(f"frontend.kind: expected one of {FRONTEND_KINDS}, got {kind!r}")
        unknown = sorted(set(cfg) - {"sample_rate", "mu", "n_mels", "win_ms", "hop_ms", "stack", "fmin", "fmax",
                                     "n_ceps", "augment"})
        if unknown:
            raise ValueError(f"frontend: unknown settings {unknown}")
        return cls(d_model, **cfg)

    def min_samples(self) -> int:
        """The shortest clip (samples) that gives one stacked frame."""
        return self.win + (self.stack - 1) * self.hop

    def features(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, l) ids -> (normalised frames (b, T, n_features * stack) float32, frame mask (b, T))."""
        b, l = ids.shape
        if l < self.min_samples():
            raise ValueError(f"ids: {l} samples is shorter than one front-end frame ({self.min_samples()} samples "
                             f"= {self.win_ms:g} ms + {self.stack - 1} x {self.hop_ms:g} ms at {self.sample_rate} Hz)")
        # float32 whatever the model's dtype: the buffers may have been cast with the weights
        table, window, filters = self.table.float(), self.window.float(), self.filters.float()
        wave = table[ids.long().clamp(0, self.mu)]
        if mask is not None:
            wave = wave * mask.to(wave.dtype)
        frames = wave.unfold(1, self.win, self.hop) * window  # (b, F, win)
        power = torch.fft.rfft(frames, n=self.n_fft).abs().square()
        aug = self.augment if self.training else None
        if aug and aug.get("warp") and aug["warp"] != [1.0, 1.0]:
            power = self._warp(power, aug["warp"])
        logmel = torch.log(power @ filters + 1e-6)  # (b, F, n_mels)
        if mask is None:
            fmask = torch.ones(logmel.shape[:2], dtype=torch.bool, device=ids.device)
        else:
            fmask = mask.to(torch.bool).unfold(1, self.win, self.hop).all(-1)
        w = fmask.unsqueeze(-1).to(logmel.dtype)
        count = w.sum(1, keepdim=True)
        if bool((count == 0).any()):
            raise ValueError("mask: a clip has no frame of real samples")
        bands = None  # (b, 1, n_mels): the masked mel bands of each clip
        if aug and aug["freq_masks"]:
            bands = _draw_masks(aug["freq_masks"], aug["freq_width"], self.n_mels, b, ids.device).unsqueeze(1)
        x = logmel
        if self.n_ceps is not None:  # cepstra: a masked band reads its own mean over the clip
            if bands is not None:
                x = torch.where(bands, (x * w).sum(1, keepdim=True) / count, x)
            x = x @ self.dct.float()  # (b, F, n_ceps)
        mean = (x * w).sum(1, keepdim=True) / count
        var = (((x - mean) * w) ** 2).sum(1, keepdim=True) / count
        feats = (x - mean) / (var.sqrt() + 1e-3) * w
        if bands is not None and self.n_ceps is None:
            feats = feats.masked_fill(bands, 0.0)
        if aug and aug["time_masks"]:
            feats = feats.masked_fill(
                _draw_masks(aug["time_masks"], aug["time_width"], feats.shape[1], b, ids.device).unsqueeze(2), 0.0)
        t = feats.shape[1] // self.stack * self.stack
        feats = feats[:, :t].reshape(b, t // self.stack, self.stack * self.n_features)
        fmask = fmask[:, :t].reshape(b, t // self.stack, self.stack).all(-1)
        return feats, fmask

    @staticmethod
    def _warp(power: torch.Tensor, lo_hi) -> torch.Tensor:
        """Each clip's spectrum (b, F, bins) stretched along frequency by its own factor in ``lo_hi``:
        bin k takes the (interpolated) power of bin k / factor."""
        b, _, bins = power.shape
        factor = torch.empty(b, 1, 1, device=power.device).uniform_(*lo_hi)
        src = (torch.arange(bins, device=power.device, dtype=torch.float32) / factor).clamp(max=bins - 1)
        lo = src.floor().long().clamp(max=bins - 2)
        frac = src - lo
        lo, frac = lo.expand(b, power.shape[1], bins), frac.expand(b, power.shape[1], bins)
        return power.gather(2, lo) * (1 - frac) + power.gather(2, lo + 1) * frac

    def forward(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(ids.device.type, enabled=False):
            feats, fmask = self.features(ids, mask)
        return self.proj(feats.to(self.proj.weight.dtype)), fmask


__all__ = ["AUGMENT_KEYS", "FRONTEND_KINDS", "SpectralFrontEnd", "check_augment", "dct_matrix", "mel_filterbank",
           "with_adapter"]
