"""Waveform augmentation of training clips (data.augment) on the real spoken-digit clips shipped in the package:
every effect measured on speech, determinism, the training stream only, and the config's errors."""

import time
from pathlib import Path

import numpy as np
import pytest

from genomamba.adapters import get_adapter
from genomamba.data.augment import AudioAugment
from genomamba.data.species import SpeciesManifest, SpeciesWindows
from genomamba.lit.config import ConfigError, configs_dir, load_config
from genomamba.lit.datamodules import SpeciesDataModule

ASSETS = Path(__file__).resolve().parents[2] / "genomamba" / "assets"
CLIPS = sorted(ASSETS.glob("digit_*.flac"))  # 1 s, 16 kHz, five espeak-ng and five flite voices
AUDIO = get_adapter("audio")
AUDIO4K = get_adapter("audio", sample_rate=4000)
SR = 16000
EVERYTHING = dict(speed=[0.8, 1.25], shift=0.15, eq_db=10.0, lowpass_hz=[3000, 7500], highpass_hz=[50, 400],
                  gain_db=[-10, 0], noise_snr_db=[10, 40], noise_color=[0, 2])
TINY = configs_dir() / "adapters" / "digits_classifier_tiny_cpu.yaml"


@pytest.fixture(scope="module")
def waves():
    assert len(CLIPS) == 10
    return {p.name: AUDIO.load(p) for p in CLIPS}


def _apply(aug, x, seed=0, sr=SR):
    return aug.apply(x, np.random.default_rng(seed), sr)


def _active_span(x, rel=0.02):
    loud = np.flatnonzero(np.abs(x) > rel * np.abs(x).max())
    return loud[0], loud[-1]


def _frequency_scale(x, y, sr=SR):
    """The factor s that best maps the log spectrum of ``x`` onto that of ``y`` (y(f) ~ x(f / s)), 100..3000 Hz:
    the pitch harmonics and formants move together under a speed change."""
    f = np.fft.rfftfreq(len(x), 1 / sr)
    px, py = (np.log(np.abs(np.fft.rfft(v.astype(np.float64))) ** 2 + 1e-12) for v in (x, y))
    band = (f >= 100) & (f <= 3000)
    grid = np.arange(0.6, 1.6, 0.002)
    fit = [np.corrcoef(py[band], np.interp(f[band] / s, f, px))[0, 1] for s in grid]
    return float(grid[int(np.argmax(fit))])


def _band_power(x, lo_hz, hi_hz, sr=SR):
    f = np.fft.rfftfreq(len(x), 1 / sr)
    p = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    return float(p[(f >= lo_hz) & (f < hi_hz)].sum())


def _snr_db(clean, noisy):
    clean, noisy = clean.astype(np.float64), noisy.astype(np.float64)
    return float(10 * np.log10(np.mean(clean ** 2) / np.mean((noisy - clean) ** 2)))


# ----------------------------------------------------------------------------- the effects on speech
@pytest.mark.parametrize("n", [16000, 12345, 3])
def test_length_dtype_and_range_are_kept(waves, n):
    aug = AudioAugment(**EVERYTHING).check(SR)
    for name, x in waves.items():
        for seed in range(4):
            y = _apply(aug, x[:n], seed)
            assert y.shape == (n,) and y.dtype == np.float32, name
            assert np.all(np.isfinite(y)) and np.abs(y).max() <= 1.0, name


def test_nothing_applied_is_the_identity(waves):
    x = waves["digit_seven_espeak-ng_en-us+m3.flac"]
    off = {**EVERYTHING, **{k: 0.0 for k in ("speed_prob", "shift_prob", "eq_prob", "lowpass_prob",
                                             "highpass_prob", "gain_prob", "noise_prob")}}
    assert not AudioAugment(**off).active and not AudioAugment().active
    assert np.array_equal(_apply(AudioAugment(**off), x, 3), x)
    assert np.array_equal(_apply(AudioAugment(), x, 3), x)
    assert AudioAugment(**EVERYTHING).active


def test_deterministic_for_a_seed_and_different_across_seeds(waves):
    aug = AudioAugment(**EVERYTHING)
    x = waves["digit_three_espeak-ng_en-gb-scotland+f2.flac"]
    assert np.array_equal(_apply(aug, x, 7), _apply(aug, x, 7))
    outs = [_apply(aug, x, s) for s in range(6)]
    assert all(not np.allclose(outs[i], outs[j], atol=1e-3) for i in range(6) for j in range(i))


@pytest.mark.parametrize("speed", [0.8, 1.25])
def test_speed_changes_duration_and_pitch_by_the_factor(waves, speed):
    aug = AudioAugment(speed=[speed, speed])
    for name, x in waves.items():
        y = _apply(aug, x)
        a, b = _active_span(x)
        c, d = _active_span(y)
        assert (b - a) / (d - c) == pytest.approx(speed, rel=0.02), name  # s times as fast: 1/s the duration
        assert _frequency_scale(x, y) == pytest.approx(speed, abs=0.01), name  # and s times the pitch
        assert _frequency_scale(x, x) == pytest.approx(1.0)
        # centred again: the word's middle stays at the middle of the window
        assert abs((c + d) / 2 - (a + b) / 2) < 0.02 * SR, name


def test_speed_is_uniform_in_its_range(waves):
    x = waves["digit_four_flite_awb.flac"]
    aug = AudioAugment(speed=[0.8, 1.25])
    a, b = _active_span(x)
    factors = []
    for s in range(40):
        c, d = _active_span(_apply(aug, x, s))
        factors.append((b - a) / (d - c))
    assert 0.78 < min(factors) < 0.9 and 1.15 < max(factors) < 1.28


def test_shift_moves_the_clip_and_pads_with_silence(waves):
    x = waves["digit_two_flite_kal16.flac"]  # a short word: room to move
    aug = AudioAugment(shift=0.2)
    shifts = set()
    for s in range(20):
        y = _apply(aug, x, s)
        k = int(_active_span(y)[0] - _active_span(x)[0])
        assert abs(k) <= 0.2 * SR + 1
        moved = np.zeros_like(x)
        if k >= 0:
            moved[k:] = x[:len(x) - k]
        else:
            moved[:k] = x[-k:]
        assert np.array_equal(y, moved)  # the same samples, silence where the clip left
        shifts.add(k)
    assert len(shifts) == 20 and min(shifts) < -0.05 * SR and max(shifts) > 0.05 * SR


def test_lowpass_and_highpass_limit_the_band(waves):
    x = waves["digit_six_flite_rms.flac"]  # a fricative: energy up to 8 kHz
    def gain_db(y, lo, hi):
        return 10 * np.log10(_band_power(y, lo, hi) / _band_power(x, lo, hi))

    for y in (_apply(AudioAugment(lowpass_hz=[2000, 2000]), x), _apply(AudioAugment(highpass_hz=[1000, 1000]), x)):
        assert np.abs(y).max() == pytest.approx(np.abs(x).max(), rel=1e-6)  # scaled back to the clip's peak
    y = _apply(AudioAugment(lowpass_hz=[2000, 2000]), x)
    passband = gain_db(y, 100, 1000)
    assert gain_db(y, 1000, 1500) == pytest.approx(passband, abs=0.5)  # flat below the cutoff
    assert gain_db(y, 4000, 8000) < passband - 40  # 8th order: -48 dB an octave above the cutoff
    y = _apply(AudioAugment(highpass_hz=[1000, 1000]), x)
    passband = gain_db(y, 4000, 8000)
    assert gain_db(y, 2500, 4000) == pytest.approx(passband, abs=0.5)
    assert gain_db(y, 0, 250) < passband - 40


def test_eq_reshapes_the_spectrum_within_its_bound(waves):
    x = waves["digit_nine_espeak-ng_en-029+klatt4.flac"]
    aug = AudioAugment(eq_db=12.0)
    bands = np.geomspace(100, 7000, 12)
    peaks = []
    for s in range(8):
        y = _apply(aug, x, s)
        ratio_db = np.array([10 * np.log10(_band_power(y, lo, hi) / _band_power(x, lo, hi))
                             for lo, hi in zip(bands[:-1], bands[1:])])
        spread = ratio_db.max() - ratio_db.min()  # the envelope, up to the scale that restores the peak
        assert spread <= 2 * 12 + 0.5  # never beyond +-eq_db
        peaks.append(spread)
        assert np.abs(y).max() == pytest.approx(np.abs(x).max(), rel=1e-6)
    assert max(peaks) > 8 and np.std(peaks) > 1  # a random envelope, of random strength


def test_gain_in_db(waves):
    x = waves["digit_one_flite_kal.flac"]
    y = _apply(AudioAugment(gain_db=[-6.0, -6.0]), x)
    assert np.allclose(y, x * 10 ** (-6 / 20), atol=1e-6)
    y = _apply(AudioAugment(gain_db=[12.0, 12.0]), x)  # loud: clipped at full scale
    assert np.abs(y).max() == 1.0


@pytest.mark.parametrize("snr, color", [(10.0, 0.0), (20.0, 1.0), (35.0, 2.0)])
def test_noise_at_the_requested_snr(waves, snr, color):
    for name, x in waves.items():
        aug = AudioAugment(noise_snr_db=[snr, snr], noise_color=[color, color])
        clean = _apply(AudioAugment(noise_snr_db=[snr, snr], noise_prob=0.0), x, 5)  # the same draws, no noise
        assert np.array_equal(clean, x)
        y = _apply(aug, x, 5)
        assert _snr_db(x, y) == pytest.approx(snr, abs=0.3), name
        if name.startswith("digit_one"):
            noise = (y - x).astype(np.float64)
            low = _band_power(noise, 0, 1000) / _band_power(noise, 0, SR / 2)
            # white noise puts 1/8 of its power below 1 kHz; pink and brown far more
            assert low == pytest.approx(0.125, abs=0.03) if color == 0 else low > 0.4


def test_noise_snr_survives_mu_law(waves):
    x = waves["digit_eight_flite_slt.flac"]
    y = AUDIO.decode(AUDIO.encode(_apply(AudioAugment(noise_snr_db=[15, 15]), x, 2)))
    assert _snr_db(x, y) == pytest.approx(15, abs=0.5)


def test_one_second_clip_augments_in_a_few_milliseconds(waves):
    aug = AudioAugment(**EVERYTHING)
    x = waves["digit_zero_espeak-ng_en-gb-x-rp+m1.flac"]
    _apply(aug, x)
    times = []
    for s in range(20):
        t = time.perf_counter()
        _apply(aug, x, s)
        times.append(time.perf_counter() - t)
    assert np.median(times) < 0.02, times  # about 2 ms with every effect on; a loose bound for busy machines


# ----------------------------------------------------------------------------- the training stream
def _digits():
    return SpeciesManifest.from_file(ASSETS / "digits")


def _windows(augment, seed=0, n=12, manifest=None):
    ds = SpeciesWindows(manifest or _digits(), "train", 4000, seed=seed, num_samples=n, return_mask=True,
                        tokenizer=AUDIO4K, augment=augment)
    return [(ids.numpy(), mask.numpy(), lab) for ids, mask, lab in ds]


def test_training_windows_are_augmented_deterministically(tmp_path):
    aug = {**EVERYTHING, "lowpass_hz": [1200, 1900]}
    plain, a, b = _windows(None), _windows(aug), _windows(aug)
    assert [w[2] for w in a] == [w[2] for w in plain]  # the same clips drawn: augmenting changes no draw
    for (ids, mask, _), (ids_b, _, _), (ids_p, _, _) in zip(a, b, plain):
        assert ids.shape == (4000,) and ids.dtype == np.int64 and mask.all()
        assert np.array_equal(ids, ids_b)  # the same seed: the same augmentation
        assert not np.array_equal(ids, ids_p)  # and an augmentation
    assert not np.array_equal(_windows(aug, seed=1)[0][0], a[0][0])  # another run seed: another stream
    # one training clip drawn again and again: every window of the stream is augmented differently
    clip = sorted((ASSETS / "digits" / "train" / "seven").glob("*.flac"))[0]
    (tmp_path / "one.csv").write_text(f"path,label,split\n{clip},7,train\n")
    one = _windows(aug, n=8, manifest=SpeciesManifest.from_file(tmp_path / "one.csv"))
    assert len({w[0].tobytes() for w in one}) == 8
    # with every probability 0 the windows are exactly the plain ones (decode + encode is exact)
    off = {**aug, **{k: 0.0 for k in AudioAugment().__dict__ if k.endswith("_prob")}}
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(_windows(off), plain))


def test_validation_and_test_windows_are_never_augmented():
    kw = dict(manifest=str(ASSETS / "digits"), length=4000, batch_size=4, train_samples=8, val_per_label=None,
              test_per_label=None, rc_prob=0.0, tokenizer=AUDIO4K)
    plain = SpeciesDataModule(**kw)
    augmented = SpeciesDataModule(**kw, augment={**EVERYTHING, "lowpass_hz": [1200, 1900]})
    for dm in (plain, augmented):
        dm.setup("fit")
        dm.setup("test")
    assert augmented.train_ds.augment is not None and plain.train_ds.augment is None
    for split in ("val_ds", "test_ds"):
        a, p = getattr(augmented, split), getattr(plain, split)
        assert len(a) == len(p) > 0
        for i in range(len(a)):
            assert all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a[i], p[i]))
    train_a = [ids.numpy() for ids, _, _ in augmented.train_ds]
    train_p = [ids.numpy() for ids, _, _ in plain.train_ds]
    assert all(not np.array_equal(x, y) for x, y in zip(train_a, train_p))


def test_augmenting_other_tokens_is_refused():
    with pytest.raises(ValueError, match="waveform augmentation applies to audio only"):
        SpeciesWindows(SpeciesManifest.from_file(ASSETS / "manifest.yaml"), "train", 100,
                       augment={"gain_db": [-3, 0]})
    with pytest.raises(ValueError, match=r"augment: unknown key\(s\) \['pitch'\]"):
        SpeciesWindows(_digits(), "train", 4000, tokenizer=AUDIO4K, augment={"pitch": [0.9, 1.1]})
    with pytest.raises(ValueError, match="augment.lowpass_hz: expected .* < 2000"):
        SpeciesWindows(_digits(), "train", 4000, tokenizer=AUDIO4K, augment={"lowpass_hz": [1000, 3000]})


# ----------------------------------------------------------------------------- config
def test_on_in_the_digits_configs_only():
    for path in sorted(configs_dir().rglob("*.yaml")):
        cfg = load_config(path)
        augment = getattr(cfg.data, "augment", None)
        if path.stem.startswith(("digits_classifier", "digits_spectral")):  # the digit classifiers
            assert augment is not None and augment.active, path
        else:
            assert augment is None, path
    tiny = load_config(TINY).data.augment
    assert tiny.lowpass_hz == [1200, 1900] and tiny.speed == [0.8, 1.25]  # inherited from the GPU config
    assert load_config(TINY, ["data.augment=null"]).data.augment is None


@pytest.mark.parametrize("override, pattern", [
    ("data.augment.speed=[1.2, 0.9]", r"data.augment.speed: expected \[lo, hi\] with 0 < lo <= hi, got \[1.2, 0.9\]"),
    ("data.augment.speed=[0, 1.1]", r"data.augment.speed: expected \[lo, hi\] with 0 < lo <= hi"),
    ("data.augment.speed=[0.9, 1.0, 1.1]", r"data.augment.speed: expected \[lo, hi\]"),
    ("data.augment.speed=1.1", r"data.augment.speed: expected a list, got 1.1"),
    ("data.augment.gain_db=[6, -6]", r"data.augment.gain_db: expected \[lo, hi\] with lo <= hi"),
    ("data.augment.noise_snr_db=[40, 10]", r"data.augment.noise_snr_db: expected \[lo, hi\] with lo <= hi"),
    ("data.augment.noise_color=[0, 3]", r"data.augment.noise_color: expected \[lo, hi\] with 0 <= lo <= hi <= 2"),
    ("data.augment.lowpass_hz=[1000, 3000]", r"data.augment.lowpass_hz: .* < 2000 \(the Nyquist frequency at the "
                                             r"adapter's sample_rate 4000\)"),
    ("data.augment.highpass_hz=[-5, 100]", r"data.augment.highpass_hz: expected \[lo, hi\] with 0 < lo"),
    ("data.augment.shift=1.5", r"data.augment.shift: expected 0 <= shift < 1"),
    ("data.augment.eq_db=-3", r"data.augment.eq_db: expected eq_db >= 0"),
    ("data.augment.noise_prob=1.5", r"data.augment.noise_prob: expected a probability in \[0, 1\], got 1.5"),
    ("data.augment.speed_prob=yes", r"data.augment.speed_prob: expected float"),
    ("data.augment.pitch=[0.9, 1.1]", r"data.augment: unknown key\(s\) \['pitch'\]"),
    ("data.augment=[speed]", r"data.augment: expected a mapping"),
])
def test_config_errors_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(TINY, [override])
    assert "\n" not in str(e.value)


def test_config_refuses_augment_off_audio():
    for name, adapter in (("classify/species_tiny_cpu.yaml", "dna"),
                          ("adapters/digits_classifier_tiny_cpu.yaml", "text")):
        overrides = ["data.augment={gain_db: [-3, 0]}"] + ([f"adapter={adapter}"] if adapter == "text" else [])
        with pytest.raises(ConfigError, match=f"data.augment: waveform augmentation is audio-only; .* the "
                                              f"'{adapter}' adapter"):
            load_config(configs_dir() / name, overrides)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['augment'\]"):  # pretraining has no augment
        load_config(configs_dir() / "adapters" / "audio_lm_tiny_cpu.yaml", ["data.augment={gain_db: [-3, 0]}"])
