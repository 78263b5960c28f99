"""The spectral front end of audio classifiers: features against a NumPy float64 twin on real clips,
masks, saving and loading with the head, config errors, and a classifier run that uses it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from genomamba.adapters import get_adapter
from genomamba.adapters.audio import mu_law_decode
from genomamba.config import MambaConfig
from genomamba.models.frontend import SpectralFrontEnd, dct_matrix, mel_filterbank
from genomamba.models.heads import SequenceClassifier
from genomamba.models.io import CheckpointError
from genomamba.models.lm import MambaLM

DIGITS = Path(__file__).resolve().parents[2] / "genomamba" / "assets" / "digits"


def _clips(n=3, rate=16000):
    """Token ids of the first ``n`` shipped test clips (flite), at ``rate``."""
    audio = get_adapter("audio", sample_rate=rate)
    rows = [r for r in csv.DictReader(open(DIGITS / "manifest.csv")) if r["split"] == "test"][:n]
    return [audio.encode_file(DIGITS / r["path"]) for r in rows], audio


def _twin(ids, fe: SpectralFrontEnd) -> np.ndarray:
    """The features in float64 NumPy, written out step by step."""
    w = mu_law_decode(ids, fe.mu).astype(np.float64)
    win = np.hanning(fe.win)  # symmetric Hann, as torch.hann_window(periodic=False)
    n = 1 + (len(w) - fe.win) // fe.hop
    frames = np.stack([w[i * fe.hop:i * fe.hop + fe.win] * win for i in range(n)])
    power = np.abs(np.fft.rfft(frames, n=fe.n_fft, axis=1)) ** 2
    logmel = np.log(power @ mel_filterbank(fe.n_mels, fe.n_fft, fe.sample_rate, fe.fmin, fe.fmax).T + 1e-6)
    if fe.n_ceps is not None:  # DCT-II, orthonormal, written as the sum it is
        m = fe.n_mels
        k = np.arange(fe.n_ceps)[:, None]
        basis = np.cos(np.pi * k * (np.arange(m)[None, :] + 0.5) / m) * np.sqrt(2.0 / m)
        basis[0] /= np.sqrt(2.0)
        logmel = logmel @ basis.T
    z = (logmel - logmel.mean(0)) / (logmel.std(0) + 1e-3)
    t = n // fe.stack * fe.stack
    return z[:t].reshape(t // fe.stack, fe.stack * z.shape[1])


@pytest.mark.parametrize("rate, settings", [(16000, {}), (8000, {"n_mels": 24, "stack": 3, "fmax": 3500.0}),
                                            (4000, {"win_ms": 32.0, "hop_ms": 16.0, "stack": 1}),
                                            (16000, {"n_ceps": 13}), (8000, {"n_mels": 24, "n_ceps": 24, "stack": 3})])
def test_features_match_the_float64_twin_on_real_clips(rate, settings):
    clips, audio = _clips(2, rate)
    fe = SpectralFrontEnd(16, rate, audio.mu, **settings)
    ids = torch.from_numpy(np.stack([c[:rate] for c in clips]))  # 1 s each
    feats, fmask = fe.features(ids)
    assert fmask.all() and feats.dtype == torch.float32
    for i, c in enumerate(clips):
        want = _twin(c[:rate], fe)
        assert feats.shape[1:] == want.shape
        np.testing.assert_allclose(feats[i].numpy(), want, atol=2e-3, rtol=1e-3)
    per_band = feats[0].reshape(-1, fe.stack, fe.n_features)  # normalised over the clip, band by band
    assert per_band.mean((0, 1)).abs().max() < 0.05


def test_padding_is_masked_out_and_does_not_change_the_real_frames():
    (clip,), audio = _clips(1)
    fe = SpectralFrontEnd(16, 16000, audio.mu)
    real = torch.from_numpy(clip[:8000]).unsqueeze(0)
    padded = torch.cat([real, torch.full((1, 8000), audio.pad_id)], 1)
    mask = torch.zeros(1, 16000, dtype=torch.bool)
    mask[:, :8000] = True
    f_real, m_real = fe.features(real)
    f_pad, m_pad = fe.features(padded, mask)
    k = int(m_pad.sum())
    assert k == int(m_real.sum()) and not m_pad[0, k:].any()
    torch.testing.assert_close(f_pad[0, :k], f_real[0, :k], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="shorter than one front-end frame"):
        fe.features(real[:, :100])


@pytest.mark.parametrize("bad, says", [({"n_mels": 0}, "frontend.n_mels"), ({"fmax": 9000.0}, "frontend.fmax"),
                                       ({"hop_ms": 40.0}, "frontend.hop_ms"), ({"stack": 1.5}, "frontend.stack"),
                                       ({"kind": "mfcc"}, "frontend.kind"), ({"n_ceps": 41}, "frontend.n_ceps"),
                                       ({"n_ceps": 0}, "frontend.n_ceps"), ({"n_ceps": 12.0}, "frontend.n_ceps"),
                                       ({"bands": 3}, "unknown settings"),
                                       ({"augment": {"warp": [1.2, 0.9]}}, "frontend.augment.warp"),
                                       ({"augment": {"warp": 1.1}}, "frontend.augment.warp"),
                                       ({"augment": {"freq_masks": 2}}, "frontend.augment.freq_width"),
                                       ({"augment": {"time_masks": -1}}, "frontend.augment.time_masks"),
                                       ({"augment": {"specaug": 1}}, "frontend.augment: unknown settings"),
                                       ({"augment": [0.9, 1.1]}, "frontend.augment: expected a mapping")])
def test_bad_settings_name_the_key(bad, says):
    with pytest.raises(ValueError, match=says):
        SpectralFrontEnd.from_config(16, {"sample_rate": 16000, "mu": 255, **bad})


def test_dct_matrix_is_orthonormal_and_is_the_type_ii_transform():
    full = dct_matrix(40, 40)
    np.testing.assert_allclose(full.T @ full, np.eye(40), atol=1e-12)
    x = np.random.default_rng(0).normal(size=(5, 40))
    want = np.stack([[np.sum(r * np.cos(np.pi * k * (np.arange(40) + 0.5) / 40)) for k in range(13)] for r in x])
    want *= np.sqrt(2 / 40)
    want[:, 0] /= np.sqrt(2)
    np.testing.assert_allclose(x @ dct_matrix(40, 13), want, atol=1e-12)


def test_augment_warps_the_spectrum_like_np_interp():
    """The frequency warp of one clip at a fixed factor equals NumPy's linear interpolation at k / factor."""
    g = torch.Generator().manual_seed(0)
    power = torch.rand(2, 5, 257, generator=g, dtype=torch.float32) ** 2
    for factor in (0.85, 1.0, 1.15):
        got = SpectralFrontEnd._warp(power, (factor, factor)).numpy()
        bins = np.arange(257)
        for c in range(2):
            for f in range(5):
                want = np.interp(np.minimum(bins / float(np.float32(factor)), 256), bins, power[c, f].double().numpy())
                np.testing.assert_allclose(got[c, f], want, rtol=1e-5, atol=2e-5)  # fp32 bin positions


def test_augment_applies_in_training_only_and_masks_what_it_says():
    clips, audio = _clips(3)
    ids = torch.from_numpy(np.stack([c[:16000] for c in clips]))
    plain = SpectralFrontEnd(16, 16000, audio.mu, stack=1)
    aug = SpectralFrontEnd(16, 16000, audio.mu, stack=1,
                           augment={"warp": [0.9, 1.1], "freq_masks": 2, "freq_width": 5, "time_masks": 2,
                                    "time_width": 7})
    want, _ = plain.features(ids)
    got, _ = aug.eval().features(ids)  # eval: no augmentation at all
    torch.testing.assert_close(got, want)
    torch.manual_seed(3)
    masks_only = SpectralFrontEnd(16, 16000, audio.mu, stack=1,
                                  augment={"freq_masks": 2, "freq_width": 5, "time_masks": 2, "time_width": 7})
    got, fmask = masks_only.train().features(ids)
    zero = got == 0
    bands = zero.all(1)  # (b, n_mels): a masked band is zero in every frame
    frames = zero.all(2)  # (b, T): a masked span is zero in every band
    assert bands.sum(1).max() <= 2 * 5 and frames.sum(1).max() <= 2 * 7
    assert bands.any() and frames.any()
    untouched = ~bands.unsqueeze(1) & ~frames.unsqueeze(2)
    torch.testing.assert_close(got[untouched], want[untouched])  # everything else is the plain feature
    torch.manual_seed(4)
    warped, _ = aug.train().features(ids)
    assert not torch.allclose(warped, want) and torch.isfinite(warped).all()
    fixed = SpectralFrontEnd(16, 16000, audio.mu, stack=1, augment={"warp": [1.1, 1.1]}).train()
    assert not torch.allclose(fixed.features(ids)[0], want)  # one fixed factor is still a warp
    same = SpectralFrontEnd(16, 16000, audio.mu, stack=1, augment={"warp": [1.0, 1.0]}).train()
    torch.testing.assert_close(same.features(ids)[0], want)
    ceps = SpectralFrontEnd(16, 16000, audio.mu, stack=1, n_ceps=13,
                            augment={"freq_masks": 2, "freq_width": 5, "time_masks": 2, "time_width": 7})
    torch.testing.assert_close(ceps.eval().features(ids)[0],
                               SpectralFrontEnd(16, 16000, audio.mu, stack=1, n_ceps=13).features(ids)[0])
    torch.manual_seed(5)
    got, _ = ceps.train().features(ids)
    assert got.shape[-1] == 13 and torch.isfinite(got).all()
    assert SpectralFrontEnd.from_config(16, ceps.config()).n_ceps == 13
    assert aug.config()["augment"]["warp"] == [0.9, 1.1]
    again = SpectralFrontEnd.from_config(16, aug.config())
    assert again.augment == aug.augment


def test_classifier_with_frontend_saves_loads_and_classifies_files(tmp_path):
    import genomamba

    clips, audio = _clips(3)
    lm = MambaLM(MambaConfig(d_model=16, n_layer=2, d_state=8, vocab_size=audio.vocab_size))
    clf = SequenceClassifier(lm, [str(i) for i in range(10)], frontend=SpectralFrontEnd(16, 16000, audio.mu))
    ids = torch.from_numpy(np.stack([c[:16000] for c in clips]))
    before = clf.eval()(ids)
    out = clf.save_pretrained(tmp_path / "clf")
    audio.save(out)
    again = SequenceClassifier.from_pretrained(out)
    torch.testing.assert_close(again(ids), before)
    assert again.frontend.config() == clf.frontend.config()
    model = genomamba.load(out)
    rows = [r for r in csv.DictReader(open(DIGITS / "manifest.csv")) if r["split"] == "test"][:3]
    pred = model.classify([DIGITS / r["path"] for r in rows])
    assert pred.probabilities.shape == (3, 10) and np.allclose(pred.probabilities.sum(1), 1, atol=1e-5)
    whole = torch.softmax(clf(torch.from_numpy(clips[0]).unsqueeze(0)), -1)[0].detach().numpy()
    np.testing.assert_allclose(pred.probabilities[0], whole, atol=1e-5)  # the whole file, one clip
    emb = model.embed([DIGITS / rows[0]["path"]])  # what the backbone reads: the frames
    frames = model.embed(DIGITS / rows[0]["path"], pooling=None)[0]
    assert emb.shape == (1, 16) and frames.shape[1] == 16 and frames.shape[0] > 10
    np.testing.assert_allclose(emb[0], frames.mean(0), atol=1e-5)
    # a head file whose front-end projection is missing is refused, naming the file
    from safetensors.torch import load_file, save_file

    state = load_file(str(out / "head.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("frontend.")}, str(out / "head.safetensors"))
    with pytest.raises(CheckpointError, match="front-end projection"):
        SequenceClassifier.from_pretrained(out)


def test_frontend_width_must_match_the_backbone():
    lm = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=256))
    with pytest.raises(ValueError, match="d_model is 16"):
        SequenceClassifier(lm, ["a", "b"], frontend=SpectralFrontEnd(32, 16000))
