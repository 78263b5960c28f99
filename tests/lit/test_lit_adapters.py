"""Real Lightning runs of the text and audio configs (configs/adapters/*_tiny_cpu.yaml) on the shipped assets:
the same pretraining and classification modules as DNA, with bits per byte / per sample and accuracy, next
to their baselines; the saved model directories load through genomamba.load with the modality's inputs."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import genomamba
from genomamba.__main__ import main as cli
from genomamba.api import AdapterModel
from genomamba.commands.classify import run_classify
from genomamba.commands.pretrain import run_pretrain
from genomamba.data.fetch import assets_dir
from genomamba.lit.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "adapters"
FAST = ["trainer.progress=false", "trainer.threads=2", "trainer.max_minutes=null"]


def _cfg(name, run_dir, *overrides):
    return load_config(CONFIGS / name, [f"run_dir={run_dir}", *FAST, *overrides])


@pytest.fixture(scope="module")
def audio_lm(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("audio_lm")
    res = run_pretrain(_cfg("audio_lm_tiny_cpu.yaml", run_dir, "trainer.max_steps=6"), quiet=True)
    return run_dir, res


def test_text_tiny_config_beats_an_order2_byte_markov_model(tmp_path):
    """The shipped tiny text config, as is (its step count; no wall-clock cap), on the KJV slice."""
    res = run_pretrain(_cfg("text_kjv_tiny_cpu.yaml", tmp_path / "run"), quiet=True)
    bpb = res["test"]["test/bits_per_byte"]
    markov = res["baselines"]["markov2"]
    assert res["test"]["test/bytes"] == 6545 - 26  # every held-out byte but the first of each 256-byte tile
    assert markov["split"] == "test" and markov["eval_tokens"] == 6545 - 2
    assert bpb < markov["witten_bell"] < markov["additive"], (bpb, markov)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["baselines"]["markov2"] == markov and saved["adapter"]["name"] == "text"
    # the held-out text read as one stream: every byte but the first scored, from all the text before it
    stream = saved["test_stream"]
    assert stream["tokens"] == 6545 - 1 and stream["chunk_len"] == 128
    assert stream["bits_per_byte"] < bpb + 1e-3, (stream, bpb)
    adaptive = stream["adaptive"]  # learning while reading helps, at the rate validation picked
    assert adaptive["chosen_on"] == "validation" and set(adaptive["val_by_lr"]) == {"0.01", "0.03", "0.1"}
    assert adaptive["val_by_lr"][str(adaptive["lr"])] == min(adaptive["val_by_lr"].values())
    assert adaptive["bits_per_byte"] < stream["bits_per_byte"] - 0.01, stream
    model = genomamba.load(res["model_dir"])
    assert isinstance(model, AdapterModel) and (Path(res["model_dir"]) / "adapter.json").exists()
    out = model.generate("In the beginning", 40, seed=0, temperature=0.7)
    assert isinstance(out, str) and len(out.encode("utf-8", "surrogatepass")) <= 40 * 3
    s = model.score([Path(assets_dir() / "text_kjv_genesis.txt"), "And God said, Let there be light"])
    assert s.unit == "byte" and np.all(s.bits_per_byte < 8) and s.names[0] == "text_kjv_genesis.txt"
    assert s.to_records()[1]["bits_per_byte"] == pytest.approx(s.bits_per_byte[1])
    assert model.embed("naïve 🧬").shape == (1, 64)
    with pytest.raises(ValueError, match="not a regular file"):
        model.score(Path(assets_dir()))
    with pytest.raises(FileNotFoundError, match="missing.txt: no such file"):
        model.embed(tmp_path / "missing.txt")


def test_audio_lm_reports_bits_per_sample_and_generates_a_wav(audio_lm, tmp_path, capsys):
    run_dir, res = audio_lm
    assert res["adapter"]["settings"]["sample_rate"] == 8000
    assert res["test"]["test/samples"] > 150_000 and 0 < res["test"]["test/bits_per_sample"] < 8.5
    assert res["baselines"]["markov2"]["eval_tokens"] == 20 * (8000 - 2)  # every held-out flite clip
    assert (run_dir / "training_curves.png").exists()
    model = genomamba.load(run_dir / "model")
    clip = assets_dir() / "digit_one_flite_kal.flac"  # 8 kHz file: read at the model's rate
    assert model.score(str(clip)).bits_per_sample.shape == (1,)
    wave = model.generate(None, 400, seed=0)
    assert wave.dtype == np.float32 and wave.shape == (400,) and np.abs(wave).max() <= 1
    assert cli(["generate", str(run_dir / "model"), "--seconds", "0.25", "--seed", "1", "-o",
                str(tmp_path / "out.wav")]) == 0
    info = sf.info(str(tmp_path / "out.wav"))
    assert (info.samplerate, info.frames, info.channels) == (8000, 2000, 1)
    assert (tmp_path / "out.png").stat().st_size > 0
    assert cli(["generate", str(run_dir / "model"), "--seconds", "0.1"]) == 1  # a waveform needs -o
    assert "-o out.wav" in capsys.readouterr().err
    # the spectrogram beside it is an output too: an existing PNG of that name is not replaced silently
    (tmp_path / "b.png").write_text("a figure of the user's")
    assert cli(["generate", str(run_dir / "model"), "--seconds", "0.05", "-o", str(tmp_path / "b.wav")]) == 1
    assert "its spectrogram PNG" in capsys.readouterr().err
    assert (tmp_path / "b.png").read_text() == "a figure of the user's" and not (tmp_path / "b.wav").exists()
    assert cli(["generate", str(run_dir / "model"), "--seconds", "0.05", "-o", str(tmp_path / "b.wav"),
                "--force"]) == 0
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG" and sf.info(str(tmp_path / "b.wav")).frames == 400
    assert cli(["generate", str(run_dir / "model"), "--seconds", "0.05", "-o", str(tmp_path / "c.fa")]) == 1
    assert "name it .wav" in capsys.readouterr().err and not (tmp_path / "c.fa").exists()
    assert cli(["score", str(run_dir / "model"), "--seq", "ACGT"]) == 1
    assert "--seq: an audio model scores recordings" in capsys.readouterr().err
    assert cli(["embed", str(run_dir / "model"), str(clip), "-o", str(tmp_path / "e.h5")]) == 0
    assert "(8,000 samples)" in capsys.readouterr().out  # counted in the model's own unit


def test_digit_classifier_tiny_config(tmp_path, audio_lm):
    res = run_classify(_cfg("digits_classifier_tiny_cpu.yaml", tmp_path / "run", "trainer.max_steps=6"), quiet=True)
    t = res["test"]
    assert t["n_windows"] == 20 and 0 <= t["acc"] <= 1 and t["labels"] == [str(i) for i in range(10)]
    assert res["baselines"]["n_eval"] == 20 and 0 <= res["baselines"]["logspec"] <= 1
    assert (tmp_path / "run" / "confusion_test.png").exists()
    model = genomamba.load(res["model_dir"])
    clips = sorted((assets_dir() / "digits" / "test").glob("*/*.flac"))[:2]
    out = model.classify([clips[0], str(clips[1]), np.zeros(4000, np.float32) + 0.01])
    assert len(out) == 3 and set(out.labels) <= set(model.labels) and out.probabilities.shape == (3, 10)
    with pytest.raises(ValueError, match="reverse complement is DNA-only"):
        model.classify(clips[0], both_strands=True)
    # a backbone trained on another adapter (8 kHz) is refused for a 4 kHz classifier
    lm_dir = audio_lm[0] / "model"
    with pytest.raises(ConfigError, match="was trained with the adapter MuLawAudioAdapter\\(sample_rate=8000"):
        run_classify(_cfg("digits_classifier_tiny_cpu.yaml", tmp_path / "run2", f"init_from={lm_dir}"), quiet=True)


def test_digit_classifier_with_spectral_frontend(tmp_path):
    """The front end rides along the whole path: the run, head.json, genomamba.load and classify."""
    res = run_classify(_cfg("digits_spectral_tiny_cpu.yaml", tmp_path / "run", "trainer.max_steps=6"), quiet=True)
    assert res["test"]["n_windows"] == 20 and 0 <= res["test"]["acc"] <= 1
    meta = json.loads((Path(res["model_dir"]) / "head.json").read_text())
    assert meta["frontend"]["kind"] == "spectral" and meta["frontend"]["sample_rate"] == 16000
    assert meta["frontend"]["n_mels"] == 40 and meta["frontend"]["fmax"] == 4000.0
    model = genomamba.load(res["model_dir"])
    clips = sorted((assets_dir() / "digits" / "test").glob("*/*.flac"))[:2]
    out = model.classify([clips[0], str(clips[1])])
    assert out.probabilities.shape == (2, 10) and np.allclose(out.probabilities.sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="shorter than the classifier's shortest clip"):
        model.classify(np.zeros(100, np.float32))
    # the command line embeds what the backbone reads (the front end's frames), as the API does
    import h5py

    assert cli(["embed", res["model_dir"], str(clips[0]), "-o", str(tmp_path / "e.h5")]) == 0
    with h5py.File(tmp_path / "e.h5") as h5:
        ds = h5[next(iter(h5))]
        got, length = ds[()], ds.attrs["length"]
    np.testing.assert_allclose(got, model.embed([clips[0]])[0], rtol=1e-5, atol=1e-6)
    assert length == len(model.encode(clips[0]))  # the clip's samples as the model reads them
    with pytest.raises(ValueError, match="score: the classifier .* reads spectrogram frames through its front end"):
        model.score([clips[0]])
    with pytest.raises(ConfigError, match="head.frontend: expected dict, got 40"):
        load_config(CONFIGS / "digits_spectral_tiny_cpu.yaml", ["head.frontend=40"])
    with pytest.raises(ConfigError, match="head.frontend: the spectral front end reads audio clips"):
        load_config(CONFIGS / "digits_spectral_tiny_cpu.yaml", ["adapter=text"])


@pytest.mark.parametrize("name, override, pattern", [
    ("digits_spectral_tiny_cpu.yaml", "head.frontend.n_mels=0", r"head.frontend.n_mels: expected an int in 1..256"),
    ("digits_spectral_tiny_cpu.yaml", "head.frontend.fmax=12000", r"head.frontend.fmax: expected a frequency"),
    ("digits_spectral_tiny_cpu.yaml", "head.frontend.sample_rate=8000", r"head.frontend: \['sample_rate'\] come from"),
    ("text_kjv_tiny_cpu.yaml", "data.rc_prob=0.5", r"data.rc_prob: reverse complement is DNA-only"),
    ("digits_classifier_tiny_cpu.yaml", "head.tta_rc=true", r"head.tta_rc: reverse complement is DNA-only"),
    ("digits_classifier_tiny_cpu.yaml", "baselines=[4]", r"baselines: the k-mer baselines are DNA-only"),
    ("audio_lm_tiny_cpu.yaml", "adapter={name: audio, rate: 8000}", r"adapter: unknown setting 'rate'"),
    ("audio_lm_tiny_cpu.yaml", "adapter=speech", r"adapter: unknown adapter 'speech'"),
    ("text_kjv_tiny_cpu.yaml", "model.vocab_size=16", r"model.vocab_size: 16 is smaller than the 'text' adapter"),
    ("text_kjv_tiny_cpu.yaml", "stream_test.chunk_len=0", r"stream_test.chunk_len: expected a positive int"),
    ("text_kjv_tiny_cpu.yaml", "stream_test.adapt_lr=[0.1, -0.01]",
     r"stream_test.adapt_lr: expected learning rates > 0"),
])
def test_configs_refuse_what_does_not_fit_the_modality(name, override, pattern):
    # the value came from the --set, so the message names it (and the file it was set over)
    with pytest.raises(ConfigError, match=rf"^--set {re.escape(override)} \(over .*{re.escape(name)}\): {pattern}"):
        load_config(CONFIGS / name, [override])


def test_gpu_configs_read_fetched_data():
    """The GPU-sized configs read `genomamba data fetch text|digits` output (checked without fetching)."""
    text = load_config(CONFIGS / "text_kjv.yaml")
    assert text.data.sources[0].fetch == "text" and text.data.sources[0].files == "kjv.txt"
    assert text.trainer.max_minutes <= 10 and text.adapter == "text" and text.model.dropout > 0
    digits = load_config(CONFIGS / "digits_classifier.yaml")
    assert digits.data.manifest == "fetch:digits" and digits.adapter["name"] == "audio"
    assert digits.data.length == digits.adapter["sample_rate"] == 4000  # one whole 1 s clip
    assert load_config(CONFIGS / "audio_lm.yaml").data.sources[0].fetch == "digits"


def test_text_and_audio_configs_leave_the_dna_only_keys_off():
    """A text or audio config that does not mention reverse complement or baselines gets them off
    (a DNA default would be refused); one that sets them is still refused (above)."""
    doc = {"kind": "classify", "adapter": "text", "model": {"d_model": 16, "n_layer": 1},
           "data": {"manifest": "texts.yaml"}}
    cfg = load_config(doc=doc)
    assert cfg.baselines == [] and cfg.head.tta_rc is False and cfg.data.rc_prob == 0.0
    pre = load_config(doc={"kind": "pretrain", "adapter": {"name": "audio"}, "model": {"d_model": 16, "n_layer": 1},
                           "data": {"sources": [{"assets": "digits"}]}})
    assert pre.data.rc_prob == 0.0
    dna = load_config(doc={"kind": "classify", "model": {"d_model": 16, "n_layer": 1}})
    assert dna.baselines == [4] and dna.head.tta_rc is True and dna.data.rc_prob == 0.5
