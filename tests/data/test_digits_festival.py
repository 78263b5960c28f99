"""Festival as a third spoken-digit engine (training split only): the plan, the voice names, and a
real build with festival's ked voice (unpacked from Debian packages when not installed)."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from genomamba.data.debian import DebianError, unpack
from genomamba.data.digits import (
    DEFAULT_FESTIVAL_VOICES,
    ESPEAK_PACKAGES,
    FESTIVAL_PACKAGES,
    FESTIVAL_VOICES,
    DigitsConfig,
    DigitsError,
    Synthesizers,
    _make_festival,
    _wav_name,
    make_spoken_digits,
    plan,
    read_manifest,
)

HAVE_APT = all(shutil.which(t) for t in ("apt-get", "apt-cache", "dpkg", "dpkg-deb", "ldd"))
VARIANTS = ["m1", "m3", "f2", "klatt4"]


def test_festival_clips_are_training_clips_drawn_after_the_others():
    base = DigitsConfig(seed=5, words=("one", "seven"), takes=1, flite_takes=2)
    cfg = DigitsConfig(seed=5, words=("one", "seven"), takes=1, flite_takes=2,
                       festival_voices=("ked", "slt"), festival_takes=3)  # fmt: skip
    jobs = plan(cfg, VARIANTS)
    before = plan(base, VARIANTS)
    assert jobs[: len(before)] == before  # adding festival changes none of the other clips
    fest = jobs[len(before) :]
    assert len(fest) == 2 * 2 * 3 and {j["engine"] for j in fest} == {"festival"}
    assert {j["split"] for j in fest} == {"train"}
    assert {j["path"] for j in fest if j["voice"] == "ked" and j["word"] == "seven"} == {
        f"train/seven/festival_ked-{t}.flac" for t in range(3)
    }
    for j in fest:
        assert 0.8 <= j["stretch"] <= 1.25
        if j["voice"] == "ked":
            assert 85.0 <= j["f0"] <= 135.0
        else:
            assert j["f0"] == ""  # the HTS voice's f0 is not set, so none is recorded
    assert DigitsConfig().festival_voices == ()  # the default set has no festival clips
    assert DEFAULT_FESTIVAL_VOICES == ("ked",)


def test_an_unknown_festival_voice_is_named():
    with pytest.raises(
        ValueError, match=r"unknown festival voices \['hal'\]; the known ones are \['ked', 'kal', 'slt'\]"
    ):
        DigitsConfig(festival_voices=("ked", "hal")).check()
    with pytest.raises(ValueError, match="'hal'"):
        make_spoken_digits("unused", DigitsConfig(festival_voices=("hal",)))
    with pytest.raises(ValueError, match="festival_takes"):
        DigitsConfig(festival_voices=("ked",), festival_takes=-1).check()


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    """A tools folder with espeak-ng and festival + ked unpacked, unless both are installed here."""
    root = tmp_path_factory.mktemp("debian-tools")
    if shutil.which("espeak-ng") and shutil.which("festival"):
        return root
    if not HAVE_APT:
        pytest.skip("espeak-ng / festival are not installed and apt-get, dpkg and ldd are missing")
    try:
        unpack(ESPEAK_PACKAGES + FESTIVAL_PACKAGES + [FESTIVAL_VOICES["ked"][1]], root, quiet=True)
    except DebianError as e:
        pytest.skip(f"the Debian archive cannot be reached: {e}")
    return root


def test_a_build_with_festival_puts_its_clips_in_train(tools, tmp_path):
    cfg = DigitsConfig(
        seed=2, words=("seven", "two"), accents=("en-us",), variants=("m3", "f2"), val_fraction=0.5,
        flite_voices=(), festival_voices=("ked",), festival_takes=2, workers=4,
    )  # fmt: skip
    out = make_spoken_digits(tmp_path / "digits", cfg, tools_dir=tools, quiet=True)
    rows = read_manifest(out)
    fest = [r for r in rows if r["engine"] == "festival"]
    assert len(rows) == 2 * 2 + 2 * 2 and len(fest) == 2 * 2
    assert {r["split"] for r in fest} == {"train"} and {r["voice"] for r in fest} == {"ked"}
    assert {r["split"] for r in rows if r["engine"] == "espeak-ng"} == {"train", "val"}
    for r in fest:
        assert r["path"].startswith(f"train/{r['word']}/festival_ked-") and r["path"].endswith(".flac")
        assert 85.0 <= float(r["f0"]) <= 135.0 and 0.8 <= float(r["stretch"]) <= 1.25
        wave, rate = sf.read(r["file"], dtype="float32")
        assert rate == 16000 and wave.shape == (16000,)
        assert abs(np.abs(wave).max() - 0.9) < 1e-3 and np.sqrt(np.mean(wave**2)) > 0.02  # speech, not silence
        assert 0.1 < float(r["speech_s"]) <= 1.0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["counts"] == {"train": 6, "val": 2, "test": 0}
    assert prov["counts_by_engine"]["train"] == {"espeak-ng": 2, "festival": 4}
    assert "festival voices ['ked']" in prov["description"]
    assert prov["programs"]["festival"]["version"].startswith("Festival Speech Synthesis System")
    assert prov["variants"]["train"] and "" not in prov["variants"]["train"]
    # deterministic: a second build gives the same bytes
    again = make_spoken_digits(tmp_path / "again", cfg, tools_dir=tools, quiet=True)
    for r in fest:
        assert (again / r["path"]).read_bytes() == r["file"].read_bytes()


def test_a_failing_festival_run_names_the_voice(tools, tmp_path):
    cfg = DigitsConfig(words=("seven",), flite_voices=(), festival_voices=("ked",), festival_takes=1)
    synth = Synthesizers(tools, need_flite=False, quiet=True, festival_voices=("ked",))
    jobs = [j for j in plan(cfg, ["m3"]) if j["engine"] == "festival"]
    _wav_name(jobs[0], tmp_path).mkdir()  # festival cannot write its WAV where a folder is
    with pytest.raises(DigitsError, match=r"festival failed on voice ked \(exit \d+\): .*wave"):
        _make_festival(jobs, synth, cfg, tmp_path / "out", tmp_path)


def test_the_fetched_set_is_rebuilt_when_its_settings_change(tmp_path):
    """``genomamba data fetch digits`` reuses a set only if its provenance records today's settings;
    a set from before festival joined training (no festival_voices recorded) is stale."""
    from genomamba.data.digits import DigitsConfig, _settings, built_with, default_config

    cfg = default_config()
    assert cfg.festival_voices == ("ked",) and cfg.festival_takes == 60 and cfg.flite_voices and cfg.takes == 1
    assert not built_with(tmp_path, cfg), "no provenance.json: not built with anything"
    prov = tmp_path / "provenance.json"
    for config, same in [
        (_settings(cfg), True),
        ({**_settings(cfg), "workers": 3}, True),  # the worker count does not change the clips
        ({k: v for k, v in _settings(DigitsConfig()).items() if k not in ("festival_voices", "festival_takes")}, False),
        ({**_settings(cfg), "festival_takes": 5}, False),
        ({**_settings(cfg), "festival_voices": ["ked", "kal"]}, False),
    ]:
        prov.write_text(json.dumps({"config": config}))
        assert built_with(tmp_path, cfg) is same, config
    prov.write_text("{not json")
    assert not built_with(tmp_path, cfg)
