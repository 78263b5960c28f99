"""The data pipeline on bytes and mu-law samples: readers, typed file sources, tail splits, labelled-file
manifests, the leak check, and the order-2 Markov / log-spectral baselines, all on the shipped assets."""

import shutil

import numpy as np
import pytest
import soundfile as sf

from genomamba.adapters import get_adapter
from genomamba.baselines import MarkovLM, audio_clip_baselines, markov_baseline
from genomamba.data.audio import read_audio
from genomamba.data.corpus import CorpusError, build_corpus, tail_split
from genomamba.data.fetch import assets_dir
from genomamba.data.species import ManifestError, SpeciesEvalWindows, SpeciesManifest, SpeciesWindows
from genomamba.data.text import read_bytes
from genomamba.data.windows import RandomWindows, Region, TiledWindows, assert_no_overlap

TEXT = get_adapter("text")
AUDIO8K = get_adapter("audio", sample_rate=8000)
DIGITS = assets_dir() / "digits"


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- readers: bad input
def test_truncated_wav_is_named(tmp_path, digit_clips):
    wave = read_audio(digit_clips[0]["file"])
    full = tmp_path / "full.wav"
    sf.write(full, wave, 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[: 44 + 4000])  # header intact, most of the samples gone
    with pytest.raises(ValueError, match=r"cut.wav: truncated WAV: its data chunk declares 32000 bytes") as e:
        read_audio(cut)
    _one_line(e)
    assert len(read_audio(full)) == 16000  # the whole file still reads


def test_empty_silent_and_non_audio_files_are_named(tmp_path, kjv_asset):
    silent = tmp_path / "silent.flac"
    sf.write(silent, np.zeros(8000, np.float32), 8000, subtype="PCM_16", format="FLAC")
    with pytest.raises(ValueError, match="silent.flac: silent clip") as e:
        AUDIO8K.encode_file(silent)
    _one_line(e)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 8000, subtype="PCM_16")
    with pytest.raises(ValueError, match="empty.wav: no audio samples") as e:
        AUDIO8K.encode_file(empty)
    with pytest.raises(ValueError, match="text_kjv_genesis.txt: cannot read audio: not an audio file") as e:
        AUDIO8K.load(kjv_asset)
    _one_line(e)
    with pytest.raises(ValueError, match="not a regular file"):
        read_bytes(tmp_path)


# ----------------------------------------------------------------------------- corpus: text files
def test_text_asset_tail_split_is_leak_free(kjv_asset):
    store, splits = build_corpus([{"assets": "text"}], TEXT)
    (c,) = store.contigs
    assert c.length == 65455 and store.read(0, 0, 100).tolist() == list(kjv_asset.read_bytes()[:100])
    assert splits.test == [Region(c.name, 65455 - 6545, 65455)]
    assert splits.val == [Region(c.name, 65455 - 6545 - 3272, 65455 - 6545)]
    assert splits.train == [Region(c.name, 0, 65455 - 6545 - 3272)]
    train = RandomWindows(store, 256, splits.train, num_samples=8)
    test = TiledWindows(store, 256, splits.test)
    assert_no_overlap(train, test.windows)
    ids, mask = test[len(test) - 1]
    assert ids.max() <= TEXT.pad_id and not mask.all()  # the last tile is padded with <pad>
    with pytest.raises(ValueError, match="reverse complement applies to DNA only"):
        RandomWindows(store, 256, splits.train, rc_prob=0.5)


def test_file_sources_globs_and_their_errors(tmp_path, kjv_asset):
    for name in ("a.txt", "b.txt"):
        shutil.copy(kjv_asset, tmp_path / name)
    store, splits = build_corpus([{"files": str(tmp_path / "*.txt"), "split": {"by": "tail", "test_frac": 0.1}}], TEXT)
    assert [c.name for c in store.contigs] == ["a:a.txt", "b:b.txt"] and len(splits.test) == 2 and not splits.val
    store, splits = build_corpus([{"files": [str(tmp_path / "a.txt")]}, {"files": str(tmp_path / "b.txt"),
                                                                         "split": "test"}], TEXT)
    assert [r.contig for r in splits.test] == ["b:b.txt"]
    with pytest.raises(FileNotFoundError, match=r"data.sources\[0\].files: '.*\*.md' matches no file"):
        build_corpus([{"files": str(tmp_path / "*.md")}], TEXT)
    with pytest.raises(CorpusError, match="is a directory, not a file"):
        build_corpus([{"files": str(tmp_path)}], TEXT)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt: no tokens"):
        build_corpus([{"files": str(tmp_path / "empty.txt")}], TEXT)
    with pytest.raises(CorpusError, match="split.by: must be one of"):
        build_corpus([{"files": str(tmp_path / "a.txt"), "split": {"by": "middle"}}], TEXT)
    assert tail_split("x", 100, 0.05, 0.1) == (Region("x", 0, 85), Region("x", 85, 90), Region("x", 90, 100))


# ----------------------------------------------------------------------------- labelled-file manifests: audio
def test_digit_manifest_csv_and_split_by_engine():
    man = SpeciesManifest.from_file(DIGITS)  # the folder's manifest.csv
    assert man.labels == [str(i) for i in range(10)]
    assert {g.split for g in man.genomes} == {"train", "val", "test"}
    assert all("flite" in g.id for g in man.entries("test")) and not any("flite" in g.id for g in man.entries("train"))
    src = man.load("train", AUDIO8K)
    assert len(src.contigs) == 40 and set(src.lengths.tolist()) == {8000}
    ds = SpeciesWindows(man, "train", 8000, num_samples=4, return_mask=True, tokenizer=AUDIO8K)
    ids, mask, lab = next(iter(ds))
    assert ids.shape == (8000,) and mask.all() and 0 <= lab < 10
    ev = SpeciesEvalWindows(man, "test", 8000, per_label=None, return_mask=True, tokenizer=AUDIO8K)
    assert len(ev) == 20 and len({w.contig for w in ev.windows}) == 20  # every held-out clip exactly once
    with pytest.raises(ValueError, match="reverse complement applies to DNA only"):
        SpeciesWindows(man, "train", 8000, rc_prob=0.5, tokenizer=AUDIO8K)
    store, splits = build_corpus([{"assets": "digits"}], AUDIO8K)
    assert len(splits.train) == 40 and len(splits.val) == 10 and len(splits.test) == 20
    splits.check()


def test_labelled_folders_and_a_folder_without_labelled_files(tmp_path):
    for split, word in (("train", "seven"), ("train", "three"), ("test", "seven")):
        (tmp_path / "clips" / split / word).mkdir(parents=True)
    clips = sorted(DIGITS.glob("train/seven/*.flac"))
    shutil.copy(clips[0], tmp_path / "clips/train/seven/a.flac")
    shutil.copy(clips[1], tmp_path / "clips/test/seven/a.flac")
    shutil.copy(sorted(DIGITS.glob("train/three/*.flac"))[0], tmp_path / "clips/train/three/b.flac")
    man = SpeciesManifest.from_file(tmp_path / "clips")
    assert man.labels == ["seven", "three"] and [g.id for g in man.entries("test")] == ["test/seven/a.flac"]
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("x")
    with pytest.raises(ManifestError, match="nothing: a directory without labelled files") as e:
        SpeciesManifest.from_file(tmp_path / "nothing")
    _one_line(e)


# ----------------------------------------------------------------------------- baselines
def test_markov_model_is_a_distribution_and_learns_a_cycle():
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 4, 5000)
    lm = MarkovLM(2, 4).fit([seq])
    # a proper distribution after every context: the probabilities of the 4 next tokens sum to 1
    for ctx in ([0, 1], [3, 3], [2, 0]):
        probs = [2 ** lm.log2_probs([np.array(ctx + [x])])[0] for x in range(4)]
        assert abs(sum(probs) - 1) < 1e-9
    assert abs(lm.bits([rng.integers(0, 4, 2000)]) - 2.0) < 0.05  # iid uniform: 2 bits, nothing to learn
    cyc = np.tile([0, 1, 2, 3, 2, 1], 500)
    assert MarkovLM(2, 4).fit([cyc]).bits([cyc[:600]]) < 0.05


def test_mfcc_features_are_the_cepstra_of_the_front_end_averaged_over_time():
    import torch

    from genomamba.baselines import mfcc_features
    from genomamba.models.frontend import SpectralFrontEnd

    audio = get_adapter("audio", sample_rate=16000)
    rows = [r for r in SpeciesManifest.from_file(DIGITS).entries("test")][:1]
    ids = audio.encode_file(rows[0].path)[:16000]
    f = mfcc_features(audio.decode(ids), 16000, n_segments=1)
    assert f.shape == (13,) and np.abs(f).max() < 1e-9  # one segment: the clip mean, removed
    f8 = mfcc_features(audio.decode(ids), 16000).reshape(8, 13)
    fe = SpectralFrontEnd(16, 16000, audio.mu, n_ceps=13, stack=1, fmax=4000.0)
    table, window = fe.table.double(), fe.window.double()
    frames = table[torch.from_numpy(ids).long()].unfold(0, fe.win, fe.hop) * window
    ceps = torch.log(torch.fft.rfft(frames, n=fe.n_fft).abs().square() @ fe.filters.double() + 1e-8) @ fe.dct.double()
    ceps = (ceps - ceps.mean(0)).numpy()
    want = np.stack([ceps[s].mean(0) for s in np.array_split(np.arange(len(ceps)), 8)])
    np.testing.assert_allclose(f8, want, atol=1e-3)


def test_baselines_on_the_shipped_assets():
    store, splits = build_corpus([{"assets": "text"}], TEXT)
    m = markov_baseline(store, splits)
    assert m["eval_tokens"] == 6545 - 2 and 2.0 < m["witten_bell"] < 3.2 and m["additive"] > m["witten_bell"]
    res = audio_clip_baselines(SpeciesManifest.from_file(DIGITS), get_adapter("audio", sample_rate=4000))
    assert res["n_train"] == 40 and res["n_eval"] == 20 and 0.0 <= res["logspec"] <= 1.0 and 0.0 <= res["mfcc"] <= 1.0
    assert res["mfcc_train"] > 0.5  # 40 clips of 10 words: the cepstra separate the training clips


# ----------------------------------------------------------------------------- the on-disk token store
def test_token_store_holds_bytes_and_samples(tmp_path, kjv_asset, digit_clips):
    from genomamba.__main__ import main as cli
    from genomamba.data.store import TokenStore

    store = TokenStore.build([kjv_asset], tmp_path / "text.h5", TEXT)
    assert store.tokenizer.name == "text" and store.tokenizer.pad_id == TEXT.pad_id
    assert store.read(0, 0, 64).tobytes() == np.frombuffer(kjv_asset.read_bytes()[:64], np.uint8).astype(
        np.int16).tobytes()
    ids, mask = TiledWindows(store, 4096, [Region(store.names[0], 61440, 65455)])[0]
    assert mask.sum() == 65455 - 61440 and int(ids[-1]) == TEXT.pad_id
    with pytest.raises(ValueError, match="reverse complement applies to DNA only"):
        RandomWindows(store, 256, rc_prob=0.5)
    files = [str(c["file"]) for c in digit_clips[:3]]
    assert cli(["data", "build", "--adapter", "audio", *files, "--out", str(tmp_path / "clips.h5")]) == 0
    clips = TokenStore(tmp_path / "clips.h5")
    assert clips.names[0] == f"{digit_clips[0]['file'].stem}:{digit_clips[0]['file'].name}"
    assert clips.read(0, 0, 16000).dtype == np.uint8 and set(clips.lengths.tolist()) == {16000}
    assert cli(["data", "build", "--adapter", "audio", str(kjv_asset), "--out", str(tmp_path / "bad.h5")]) == 1
    assert not (tmp_path / "bad.h5").exists()
