"""Audio adapter on real speech: mu-law fidelity, loading at any rate / channel count, WAV round trip."""

import sys

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from genomamba.adapters import get_adapter, mu_law_decode, mu_law_encode
from genomamba.adapters.audio import MuLawAudioAdapter

AUDIO = get_adapter("audio")


def _snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - est.astype(np.float64)) ** 2)))


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def test_settings_and_vocabulary():
    assert isinstance(AUDIO, MuLawAudioAdapter)
    assert (AUDIO.sample_rate, AUDIO.mu, AUDIO.vocab_size) == (16000, 255, 256)
    assert AUDIO.pad_id == 128 == int(AUDIO.encode(np.zeros(1, np.float32))[0])  # silence
    assert AUDIO.specials == {}


def test_mu_law_codes_cover_the_range_monotonically():
    x = np.linspace(-1, 1, 100_001)
    q = mu_law_encode(x)
    assert q.min() == 0 and q.max() == 255 and len(np.unique(q)) == 256
    assert np.all(np.diff(q) >= 0)
    centres = mu_law_decode(np.arange(256))
    assert np.all(np.diff(centres) > 0) and centres[0] == -1.0 and centres[-1] == 1.0
    assert np.array_equal(mu_law_encode(centres), np.arange(256))  # decode then encode is the identity
    # quantisation error: at most half a step of the companded scale
    err = np.abs(mu_law_decode(q) - x)
    step = np.abs(np.gradient(mu_law_decode(np.arange(256).astype(np.float64))))
    assert np.all(err <= step[q] * 0.51 + 1e-7)


def test_mu_law_snr_on_real_speech(digit_clips):
    snrs = {}
    for clip in digit_clips:
        wave = AUDIO.load(clip["file"])
        ids = AUDIO.encode(wave)
        assert ids.dtype == np.uint8 and ids.shape == wave.shape
        snrs[clip["path"]] = _snr_db(wave, AUDIO.decode(ids))
    # 8-bit mu-law quantisation noise stays far below speech: 30 dB is the floor for every clip
    assert min(snrs.values()) > 30, snrs
    assert {c["engine"] for c in digit_clips} == {"espeak-ng", "flite"}


def test_encode_file_equals_encode_of_load(digit_clips):
    for clip in digit_clips:
        ids = AUDIO.encode_file(clip["file"])
        assert np.array_equal(ids, AUDIO.encode(AUDIO.load(clip["file"])))
        assert len(ids) == 16000  # every shipped clip is exactly 1 s at 16 kHz
    assert [len(x) for x in AUDIO.read_files([c["file"] for c in digit_clips[:2]])] == [16000, 16000]


@pytest.mark.parametrize("rate", [22050, 8000, 44100, 16000])
@pytest.mark.parametrize("seconds", [1, 3])
def test_length_is_16000_per_second_at_any_rate(digit_clips, tmp_path, rate, seconds):
    wave = np.tile(AUDIO.load(digit_clips[0]["file"]), seconds)
    at_rate = soxr.resample(wave, 16000, rate) if rate != 16000 else wave
    assert len(at_rate) == rate * seconds
    p = tmp_path / f"clip_{rate}.wav"
    sf.write(p, at_rate, rate, subtype="PCM_16")
    loaded = AUDIO.load(p)
    assert loaded.dtype == np.float32 and len(loaded) == 16000 * seconds
    assert len(AUDIO.encode_file(p)) == 16000 * seconds
    if rate > 16000:  # resampled there and back: the speech survives (8 kHz loses the top band)
        assert _snr_db(wave, loaded) > 20


def test_stereo_is_mixed_down_to_the_mean(digit_clips, tmp_path):
    left = AUDIO.load(digit_clips[0]["file"])
    right = AUDIO.load(digit_clips[-1]["file"]) * 0.5
    p = tmp_path / "stereo.wav"
    sf.write(p, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    assert sf.info(p).channels == 2
    mono = AUDIO.load(p)
    assert mono.shape == (16000,)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-6)
    p24 = tmp_path / "stereo_22k.flac"  # stereo, other rate, 24-bit FLAC: all three at once
    sf.write(p24, soxr.resample(np.stack([left, right], axis=1), 16000, 22050), 22050, subtype="PCM_24")
    assert _snr_db((left + right) / 2, AUDIO.load(p24)) > 25


def test_integer_pcm_is_scaled_by_its_full_range(tmp_path):
    pcm16 = np.array([0, 16384, -16384, 32767, -32768], dtype=np.int16)
    sf.write(tmp_path / "i16.wav", pcm16, 16000, subtype="PCM_16")
    np.testing.assert_allclose(AUDIO.load(tmp_path / "i16.wav"), pcm16 / 32768.0, atol=1e-7)
    sf.write(tmp_path / "u8.wav", np.array([0.0, 0.5, -0.5]), 16000, subtype="PCM_U8")
    np.testing.assert_allclose(AUDIO.load(tmp_path / "u8.wav"), [0.0, 0.5, -0.5], atol=1 / 128)
    sf.write(tmp_path / "i32.wav", np.array([0.25, -0.75]), 16000, subtype="PCM_32")
    np.testing.assert_allclose(AUDIO.load(tmp_path / "i32.wav"), [0.25, -0.75], atol=1e-6)
    sf.write(tmp_path / "loud.wav", np.array([1.5, -2.0, 0.5], dtype=np.float32), 16000, subtype="FLOAT")
    assert AUDIO.load(tmp_path / "loud.wav").tolist() == [1.0, -1.0, 0.5]  # float files are clipped


def test_write_wav_load_round_trip(digit_clips, tmp_path):
    ids = AUDIO.encode_file(digit_clips[0]["file"])
    out = AUDIO.write_wav(ids, tmp_path / "from_ids.wav")
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 16000)
    assert np.array_equal(AUDIO.encode_file(out), ids)  # 16-bit PCM keeps every mu-law code
    assert np.abs(AUDIO.load(out) - AUDIO.decode(ids)).max() <= 1 / 32768
    wave = AUDIO.load(digit_clips[1]["file"])
    AUDIO.write_wav(torch.from_numpy(wave), tmp_path / "from_wave.wav")
    assert np.abs(AUDIO.load(tmp_path / "from_wave.wav") - wave).max() <= 1 / 32768
    assert AUDIO.seconds(ids) == 1.0


def test_decode_accepts_torch_and_lists(digit_clips):
    ids = AUDIO.encode_file(digit_clips[0]["file"])
    ref = AUDIO.decode(ids)
    assert ref.dtype == np.float32 and np.abs(ref).max() <= 1.0
    assert np.array_equal(AUDIO.decode(torch.from_numpy(ids).long()), ref)
    assert np.array_equal(AUDIO.decode(ids.tolist()), ref)


def test_other_settings(digit_clips):
    a = get_adapter("audio", sample_rate=8000, mu=15)
    assert a.vocab_size == 16 and a.pad_id == 8
    w = a.load(digit_clips[0]["file"])
    assert len(w) == 8000 and a.encode(w).max() <= 15
    wide = get_adapter("audio", mu=65535)
    assert wide.encode(w).dtype == np.int32 and _snr_db(w, wide.decode(wide.encode(w))) > 60


# ----------------------------------------------------------------------------- bad input
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path, digit_clips):
    with pytest.raises(FileNotFoundError, match="missing.wav: no such file"):
        AUDIO.load(tmp_path / "missing.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 7)
    with pytest.raises(ValueError, match="corrupt.wav: cannot read audio") as e:
        AUDIO.encode_file(corrupt)
    _one_line(e)
    text = tmp_path / "notes.wav"
    text.write_text("these are not samples\n" * 20)
    with pytest.raises(ValueError, match="notes.wav: cannot read audio") as e:
        AUDIO.load(text)
    _one_line(e)
    assert str(e.value).count("notes.wav") == 1  # libsndfile's own "Error opening '...'" is dropped
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(digit_clips[0]["file"].read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.flac"):
        AUDIO.load(truncated)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(ValueError, match="empty.wav: no audio samples") as e:
        AUDIO.load(empty)
    _one_line(e)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav: non-finite sample at frame 1") as e:
        AUDIO.load(nan)
    _one_line(e)
    with pytest.raises(ValueError, match="not a regular file"):
        AUDIO.load(tmp_path)


@pytest.mark.parametrize(
    "wave, pattern",
    [
        (np.array([0.1, np.nan], np.float32), "non-finite sample \\(nan\\) at index 1"),
        (np.array([0.1, 0.2, np.inf]), "non-finite sample \\(inf\\) at index 2"),
        (np.zeros(0, np.float32), "wave is empty"),
        (np.zeros((2, 100), np.float32), "mono 1-D waveform, got shape \\(2, 100\\)"),
        (np.array([1, 2, 3], np.int16), "floating-point samples in \\[-1, 1\\], got dtype int16"),
        ("clip.wav", "floating-point samples"),
    ],
)
def test_bad_waveforms(wave, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
        AUDIO.encode(wave)
    _one_line(e)


@pytest.mark.parametrize(
    "ids, pattern",
    [
        (np.array([0, 256]), "id 256 at position 1, outside \\[0, 256\\)"),
        (np.array([-3, 5]), "id -3 at position 0"),
        (np.array([0.5, 0.1], np.float32), "must be integer token ids, got dtype float32"),
        (np.zeros((1, 4), np.uint8), "must be 1-D"),
    ],
)
def test_bad_ids(ids, pattern, tmp_path):
    with pytest.raises(ValueError, match=pattern) as e:
        AUDIO.decode(ids)
    _one_line(e)
    if ids.dtype.kind in "iu":  # a float array is a waveform to write_wav, not ids
        with pytest.raises(ValueError):
            AUDIO.write_wav(ids, tmp_path / "never_written.wav")
        assert not (tmp_path / "never_written.wav").exists()


@pytest.mark.parametrize(
    "settings, pattern",
    [
        ({"sample_rate": 0}, "sample_rate must be a positive integer"),
        ({"sample_rate": 16000.0}, "sample_rate must be a positive integer"),
        ({"mu": 0}, "mu must be an integer in \\[1, 65535\\]"),
        ({"quality": "best"}, "quality must be one of"),
    ],
)
def test_bad_settings(settings, pattern):
    with pytest.raises(ValueError, match=pattern):
        get_adapter("audio", **settings)


def test_missing_audio_libraries_name_the_install_command(monkeypatch, digit_clips):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # makes `import soundfile` fail
    with pytest.raises(ImportError, match="pip install soundfile soxr"):
        AUDIO.load(digit_clips[0]["file"])
    # encoding an in-memory waveform needs neither library
    assert len(AUDIO.encode(np.zeros(10, np.float32))) == 10
