"""Inputs of text and audio models: bytes that are not UTF-8 given as str, streamed WAV headers, clips
too short to write, ensembles of audio members read at different rates, and how errors name files."""

from pathlib import Path

import numpy as np
import pytest
import torch

import genomamba
from genomamba import MambaConfig, MambaLM
from genomamba.__main__ import main as cli
from genomamba.adapters import get_adapter
from genomamba.data.audio import read_audio, write_wav
from genomamba.models.heads import SequenceClassifier


def _saved(tmp_path, name, **adapter):
    a = get_adapter(name, **adapter)
    torch.manual_seed(0)
    d = tmp_path / name
    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=a.vocab_size)).save_pretrained(d)
    a.save(d)
    return d


def test_a_str_holding_bytes_that_are_not_utf8_reads_those_bytes(tmp_path):
    """Python gives an argument with byte 0xE9 (Latin-1 é) as the str 'caf\\udce9': the model reads the
    4 bytes, not 6; a generated text that includes such a prompt is still valid UTF-8."""
    model = genomamba.load(_saved(tmp_path, "text"))
    as_str, as_bytes = model.score("caf\udce9"), model.score(b"caf\xe9")
    assert int(as_str.n_scored[0]) == int(as_bytes.n_scored[0]) == 3
    assert float(as_str.log_likelihood[0]) == pytest.approx(float(as_bytes.log_likelihood[0]))
    text = get_adapter("text")
    assert list(text.encode("\udcff\ud800")) == [255, 0xED, 0xA0, 0x80]  # each character on its own
    out = model.generate("\udcff\udcfebad", 4, temperature=0, include_prompt=True)
    assert out.startswith("\udcff\udcfebad")  # the prompt exactly as given
    # the command line writes such a prompt back as the bytes it came as
    d = tmp_path / "text"
    assert cli(["generate", str(d), "--prompt", "\udcff\udcfebad", "-n", "4", "--temperature", "0",
                "--include-prompt", "-o", str(tmp_path / "g.txt")]) == 0
    assert (tmp_path / "g.txt").read_bytes().startswith(b"\xff\xfebad")


def test_an_empty_text_file_is_named_once(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError) as e:
        genomamba.load(_saved(tmp_path, "text")).score(empty)
    assert str(e.value).count("empty.txt") == 1 and "empty file" in str(e.value)


def test_a_wav_streamed_to_a_pipe_reads_whole(tmp_path):
    """A writer streaming to a pipe cannot seek back to fill in the sizes: it leaves 0xFFFFFFFF."""
    wave = np.sin(np.linspace(0, 200, 16000)).astype(np.float32) * 0.5
    p = write_wav(wave, tmp_path / "streamed.wav", 16000)
    raw = bytearray(p.read_bytes())
    raw[4:8] = b"\xff\xff\xff\xff"
    data = raw.index(b"data")
    raw[data + 4:data + 8] = b"\xff\xff\xff\xff"
    p.write_bytes(bytes(raw))
    assert len(read_audio(p, 16000)) == 16000
    raw[data + 4:data + 8] = (64000).to_bytes(4, "little")  # a real size past the end: truncated
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="truncated WAV"):
        read_audio(p, 16000)


def test_an_audio_clip_shorter_than_one_spectrogram_window_is_refused(tmp_path, capsys):
    d = _saved(tmp_path, "audio", sample_rate=8000)
    for argv in (["-n", "0"], ["--seconds", "0.0001"]):
        assert cli(["generate", str(d), *argv, "-o", str(tmp_path / "c.wav")]) == 1
        assert "an audio model writes at least one spectrogram window, 200 samples" in capsys.readouterr().err
    assert not (tmp_path / "c.wav").exists()


def test_an_ensemble_of_audio_members_at_two_rates_refuses_bare_arrays(tmp_path):
    dirs = []
    for rate in (8000, 16000):
        a = get_adapter("audio", sample_rate=rate)
        torch.manual_seed(0)
        d = tmp_path / f"clf{rate}"
        SequenceClassifier(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=a.vocab_size)), ["a", "b"]
                           ).save_pretrained(d)
        a.save(d)
        dirs.append(d)
    ens = genomamba.load_ensemble(dirs)
    wave = (np.sin(np.linspace(0, 300, 4000)) * 0.3).astype(np.float32)
    with pytest.raises(ValueError, match=r"a waveform array carries no sample rate .* \[8000, 16000\] Hz"):
        ens.classify([wave])
    clip = write_wav(wave, tmp_path / "clip.wav", 8000)
    assert ens.classify([Path(clip)]).probabilities.shape == (1, 2)  # files: each member resamples
