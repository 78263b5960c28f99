"""Spoken-digit set: clip shaping on real speech, split plan, and (with espeak-ng on PATH) generation."""

import hashlib
import shutil

import numpy as np
import pytest
import soundfile as sf

from genomamba.adapters import get_adapter
from genomamba.data.digits import (
    FLITE_VOICES,
    WORDS,
    DigitsConfig,
    center_clip,
    make_spoken_digits,
    plan,
    read_manifest,
)

AUDIO = get_adapter("audio")
HAVE_ESPEAK = shutil.which("espeak-ng") is not None
HAVE_FLITE = shutil.which("flite") is not None


def test_center_clip_on_real_speech(digit_clips):
    speech = AUDIO.load(digit_clips[0]["file"])
    padded = np.concatenate([np.zeros(7000, np.float32), speech, np.zeros(3000, np.float32)])
    clip, n, cropped = center_clip(padded)
    assert clip.shape == (16000,) and not cropped and 0.1 * 16000 < n < 16000
    assert abs(np.abs(clip).max() - 0.9) < 1e-6
    active = np.flatnonzero(np.abs(clip) > 0.01)
    assert abs((active[0] + active[-1]) / 2 - 8000) < 800  # centred
    long = np.tile(speech * 0 + np.sin(np.arange(16000) / 5).astype(np.float32), 2)
    clip, n, cropped = center_clip(long)
    assert cropped and n == 32000 and clip.shape == (16000,)
    with pytest.raises(ValueError, match="silent"):
        center_clip(np.zeros(16000, np.float32))


def test_shipped_clips_are_one_second_of_centred_speech(digit_clips):
    assert len(digit_clips) >= 8 and {c["engine"] for c in digit_clips} == {"espeak-ng", "flite"}
    for c in digit_clips:
        info = sf.info(c["file"])
        assert (info.samplerate, info.channels, info.frames, info.format) == (16000, 1, 16000, "FLAC")
        assert hashlib.sha256(c["file"].read_bytes()).hexdigest() == c["sha256"]
        assert c["word"] in WORDS


def test_plan_holds_out_whole_voices_and_the_whole_flite_engine():
    variants = ["m1", "m2", "m3", "f1", "f2", "f3", "klatt", "klatt2", "croak", "whisper"]
    cfg = DigitsConfig(seed=3, val_fraction=0.3, takes=2, flite_takes=3)
    jobs = plan(cfg, variants)
    assert plan(cfg, list(reversed(variants))) == jobs  # a function of the settings and the seed
    assert plan(DigitsConfig(seed=4, val_fraction=0.3, takes=2, flite_takes=3), variants) != jobs
    by_split = {s: [j for j in jobs if j["split"] == s] for s in ("train", "val", "test")}
    train_v = {j["variant"] for j in by_split["train"]}
    val_v = {j["variant"] for j in by_split["val"]}
    assert len(val_v) == 3 and not train_v & val_v and train_v | val_v == set(variants)
    assert {j["engine"] for j in by_split["train"] + by_split["val"]} == {"espeak-ng"}
    assert {j["engine"] for j in by_split["test"]} == {"flite"}
    assert {j["voice"] for j in by_split["test"]} == set(FLITE_VOICES)
    assert len(jobs) == 8 * 10 * 10 * 2 + 5 * 10 * 3
    assert len({j["path"] for j in jobs}) == len(jobs)
    for j in by_split["train"]:
        assert 120 <= j["speed"] <= 220 and 20 <= j["pitch"] <= 80
    with pytest.raises(ValueError, match="words must be a non-empty subset"):
        DigitsConfig(words=("eleven",)).check()
    with pytest.raises(ValueError, match="unknown flite voices"):
        DigitsConfig(flite_voices=("hal",)).check()


@pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng is not on PATH (apt-get install espeak-ng to run this)")
def test_generate_a_few_clips(tmp_path):
    cfg = DigitsConfig(
        seed=1,
        accents=("en-us", "en-gb-scotland"),
        variants=("m3", "f2", "klatt4"),
        words=("one", "seven"),
        val_fraction=0.34,
        flite_voices=("kal", "slt") if HAVE_FLITE else (),
        flite_takes=2,
        workers=2,
    )
    out = make_spoken_digits(tmp_path / "digits", cfg, quiet=True)
    rows = read_manifest(out)
    n_flite = 2 * 2 * 2 if HAVE_FLITE else 0
    assert len(rows) == 2 * 3 * 2 + n_flite
    assert {r["split"] for r in rows} == ({"train", "val", "test"} if HAVE_FLITE else {"train", "val"})
    assert {r["variant"] for r in rows if r["split"] == "val"}.isdisjoint(
        {r["variant"] for r in rows if r["split"] == "train"}
    )
    for r in rows:
        wave = AUDIO.load(r["file"])
        assert len(wave) == 16000 and r["label"] == WORDS.index(r["word"])
        assert 0.1 < float(r["speech_s"]) <= 1.0 and abs(np.abs(wave).max() - 0.9) < 1e-3
        ids = AUDIO.encode(wave)
        snr = 10 * np.log10(np.sum(wave.astype(np.float64) ** 2) / np.sum((wave - AUDIO.decode(ids)) ** 2))
        assert snr > 30
    # deterministic: a second build gives the same bytes
    again = make_spoken_digits(tmp_path / "again", cfg, quiet=True)
    for r in rows:
        assert (again / r["path"]).read_bytes() == r["file"].read_bytes()
    assert (out / "provenance.json").exists()
