"""Ensembles of saved classifiers: the mean of the members' probabilities on real clips, read once,
and clear errors for members that do not belong together."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import genomamba
from genomamba.adapters import get_adapter
from genomamba.config import MambaConfig
from genomamba.models.frontend import SpectralFrontEnd
from genomamba.models.heads import SequenceClassifier
from genomamba.models.lm import MambaLM

DIGITS = Path(__file__).resolve().parents[1] / "genomamba" / "assets" / "digits"
TEST_CLIPS = [DIGITS / r["path"] for r in csv.DictReader(open(DIGITS / "manifest.csv")) if r["split"] == "test"][:4]


def _digit_classifier(where: Path, seed: int, labels=None, **frontend) -> Path:
    audio = get_adapter("audio", sample_rate=16000)
    torch.manual_seed(seed)
    lm = MambaLM(MambaConfig(d_model=16, n_layer=2, d_state=8, vocab_size=audio.vocab_size))
    clf = SequenceClassifier(lm, labels or [str(i) for i in range(10)],
                             frontend=SpectralFrontEnd(16, 16000, audio.mu, **frontend))
    out = clf.save_pretrained(where)
    audio.save(out)
    return out


def test_ensemble_averages_the_members_probabilities_on_real_clips(tmp_path):
    dirs = [_digit_classifier(tmp_path / "a", 0), _digit_classifier(tmp_path / "b", 1, n_ceps=13),
            _digit_classifier(tmp_path / "c", 2, stack=3)]
    ens = genomamba.load_ensemble(dirs)
    assert len(ens) == 3 and ens.labels == [str(i) for i in range(10)]
    got = ens.classify(iter(TEST_CLIPS))  # an iterator is read once and given to every member
    singles = [genomamba.load(d).classify(TEST_CLIPS) for d in dirs]
    assert not np.allclose(singles[0].probabilities, singles[1].probabilities)  # the members differ
    want = np.mean([s.probabilities for s in singles], 0)
    np.testing.assert_allclose(got.probabilities, want, atol=1e-6)
    assert got.labels == [str(j) for j in want.argmax(1)]
    assert got.names == singles[0].names and len(got.names) == len(TEST_CLIPS)


def test_ensemble_refuses_members_that_do_not_belong_together(tmp_path):
    a = _digit_classifier(tmp_path / "a", 0)
    other_labels = _digit_classifier(tmp_path / "b", 1, labels=list("abcdefghij"))
    with pytest.raises(ValueError, match=r"members\[1\].*labels"):
        genomamba.load_ensemble([a, other_labels])
    lm_only = tmp_path / "lm"
    MambaLM(MambaConfig(d_model=16, n_layer=1, d_state=8, vocab_size=256)).save_pretrained(lm_only)
    get_adapter("audio", sample_rate=16000).save(lm_only)
    with pytest.raises(ValueError, match=r"members\[1\].*no classifier head"):
        genomamba.load_ensemble([a, lm_only])
    dna = SequenceClassifier(MambaLM(MambaConfig(d_model=16, n_layer=1, d_state=8, vocab_size=16)),
                             [str(i) for i in range(10)]).save_pretrained(tmp_path / "dna")
    with pytest.raises(ValueError, match=r"members\[1\].*reads 'dna' input, members\[0\] reads 'audio'"):
        genomamba.load_ensemble([a, dna])
    with pytest.raises(ValueError, match="list of model directories"):
        genomamba.load_ensemble(a)
    with pytest.raises(ValueError, match="at least one"):
        genomamba.load_ensemble([])


def test_classify_evaluate_scores_one_audio_model_and_the_ensemble_of_several(tmp_path):
    import json
    import subprocess
    import sys

    dirs = [_digit_classifier(tmp_path / "a", 0), _digit_classifier(tmp_path / "b", 1, n_ceps=13)]

    def evaluate(*extra):
        out = subprocess.run([sys.executable, "-m", "genomamba", "classify", "evaluate", *extra],
                             capture_output=True, text=True, timeout=300)
        return out

    one = evaluate("--model", str(dirs[0]), "--manifest", "assets:digits", "--out", str(tmp_path / "a.json"))
    assert one.returncode == 0, one.stderr[-2000:]
    both = evaluate("--model", str(dirs[0]), "--model", str(dirs[1]), "--manifest", "assets:digits",
                    "--baselines", "logspec", "--out", str(tmp_path / "ens.json"))
    assert both.returncode == 0, both.stderr[-2000:]
    assert "ensemble of 2 models" in both.stdout and "windows of 16000 samples" in both.stdout
    single, ens = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "ens.json").read_text())
    rows = [r for r in csv.DictReader(open(DIGITS / "manifest.csv")) if r["split"] == "test"]
    assert ens["n_windows"] == single["n_windows"] == len(rows)
    assert ens["members"][0]["acc"] == pytest.approx(single["acc"])
    assert 0.0 <= ens["baselines"]["logspec"] <= 1.0 and (tmp_path / "ens.png").exists()
    # the ensemble's accuracy is that of the mean probabilities, as genomamba.load_ensemble gives them
    api = genomamba.load_ensemble(dirs).classify([DIGITS / r["path"] for r in rows])
    want = np.mean([a == r["label"] for a, r in zip(api.labels, rows)])
    assert ens["acc"] == pytest.approx(want)
    assert int(np.array(ens["confusion"]).sum()) == len(rows)

    other = _digit_classifier(tmp_path / "c", 2, labels=list("abcdefghij"))
    bad = evaluate("--model", str(dirs[0]), "--model", str(other), "--manifest", "assets:digits")
    assert bad.returncode == 2 and "labels" in bad.stderr and str(other) in bad.stderr
    bad = evaluate("--model", str(dirs[0]))
    assert bad.returncode == 2 and "--manifest: the audio classifier" in bad.stderr and "needs one" in bad.stderr
    bad = evaluate("--model", str(dirs[0]), "--manifest", "assets:digits", "--baselines", "4")
    assert bad.returncode == 2 and "--baselines '4'" in bad.stderr
    dna = SequenceClassifier(MambaLM(MambaConfig(d_model=16, n_layer=1, d_state=8, vocab_size=16)),
                             ["a", "b", "c", "d", "e"]).save_pretrained(tmp_path / "dna")
    bad = evaluate("--model", str(dna), "--baselines", "logspec")
    assert bad.returncode == 2 and "k-mer sizes" in bad.stderr
    bad = evaluate("--model", str(dirs[0]), "--model", str(dna), "--manifest", "assets:digits")
    assert bad.returncode == 2 and "must read the same input" in bad.stderr
