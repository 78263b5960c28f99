"""Species classifier: a real Trainer run on the shipped 5-species slices, CLI fit/evaluate/predict,
and the classical baselines."""

import json
import subprocess
import sys

import numpy as np
import pytest

from genomamba.baselines import GCClassifier, KmerNaiveBayes, gc_fraction, kmer_indices
from genomamba.commands.classify import run_classify
from genomamba.lit.config import load_config
from genomamba.models.heads import SequenceClassifier
from genomamba.tokenizers.dna import DNATokenizer

from .conftest import TINY_MODEL


def _doc(run_dir, **kw):
    return {
        "kind": "classify",
        "model": dict(TINY_MODEL),
        "head": {"pooling": "mean"},
        "data": {"manifest": "assets", "length": 256, "batch_size": 8, "train_samples": 10_000,
                 "test_per_label": 8},
        "optim": {"lr": 5.0e-3, "warmup_steps": 2, "head_lr_mult": 3.0},
        "trainer": {"max_steps": 12, "log_every": 1, "ckpt_every": 6, "progress": False, "threads": 1},
        "baselines": [2],
        "run_dir": str(run_dir),
        **kw,
    }


def test_classifier_trains_tests_on_heldout_strains_and_saves(tmp_path):
    run = tmp_path / "cls"
    res = run_classify(load_config(doc=_doc(run)), quiet=True)
    assert res["global_step"] == 12
    t = res["test"]
    assert t["n_windows"] == 40 and 0.0 <= t["acc"] <= 1.0
    assert np.array(t["confusion"]).sum() == 40
    assert set(res["baselines"]) >= {"gc", "nb2"}
    assert (run / "confusion_test.png").stat().st_size > 1000
    assert (run / "training_curves.png").exists()
    net = SequenceClassifier.from_pretrained(run / "model")
    assert net.labels == res["labels"] and len(net.labels) == 5

    # CLI: evaluate the saved model, then predict a FASTA's records
    from genomamba.data.fetch import asset_files

    ev = tmp_path / "eval.json"
    out = subprocess.run([sys.executable, "-m", "genomamba", "classify", "evaluate", "--model", str(run / "model"),
                          "--length", "256", "--per-label", "8", "--baselines", "2", "--out", str(ev)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(ev.read_text())
    assert got["n_windows"] == 40 and ev.with_suffix(".png").exists()
    # the same held-out windows, both strands as fit's test takes them: the same numbers
    assert got["confusion"] == t["confusion"] and got["acc"] == pytest.approx(t["acc"])
    fasta = asset_files("genomes")["DH1"]["path"]
    out = subprocess.run([sys.executable, "-m", "genomamba", "classify", "predict", str(fasta), "--model",
                          str(run / "model"), "--length", "256", "--max-windows", "4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("record\tlength\twindows\tlabel") and len(lines) == 5  # 4 slices of DH1


def test_resuming_with_the_labels_in_another_order_is_refused(tmp_path):
    """The head's rows follow the checkpoint's label order: a manifest that lists the labels otherwise
    would silently swap the classes."""
    import yaml

    from genomamba.data.fetch import default_assets
    from genomamba.lit.config import ConfigError

    run = tmp_path / "cls"
    run_classify(load_config(doc=_doc(run, baselines=[], trainer={**_doc(run)["trainer"], "max_steps": 2})),
                 quiet=True)
    doc = yaml.safe_load(default_assets().read_text())
    doc["labels"] = doc["labels"][::-1]
    for g in doc["genomes"]:
        g["path"] = str(default_assets().parent / g["path"])
    (tmp_path / "reversed.yaml").write_text(yaml.safe_dump(doc))
    again = _doc(run, baselines=[], trainer={**_doc(run)["trainer"], "max_steps": 3})
    again["data"]["manifest"] = str(tmp_path / "reversed.yaml")
    with pytest.raises(ConfigError, match=r"--resume: the checkpoint's labels \['Escherichia_coli'.* differ from "
                                          r".*reversed\.yaml's \['Klebsiella_pneumoniae'"):
        run_classify(load_config(doc=again), resume="last", quiet=True)


def test_classifier_init_from_a_classifier_keeps_its_head(tmp_path):
    """1 kb -> 16 kb style chaining: a classifier dir as init_from brings its head along when the
    labels match (same order); otherwise the head starts fresh, with a warning."""
    import torch

    from genomamba.lit.classify import ClassifierModule

    first = tmp_path / "short"
    res = run_classify(load_config(doc=_doc(first, trainer={**_doc(first)["trainer"], "max_steps": 4})), quiet=True)
    saved = SequenceClassifier.from_pretrained(first / "model")
    mod = ClassifierModule(res["labels"], init_from=str(first / "model"))
    assert mod.head_from == str(first / "model")
    assert torch.equal(mod.net.head.weight, saved.head.weight) and torch.equal(mod.net.head.bias, saved.head.bias)
    assert torch.equal(mod.net.lm.backbone.embedding.weight, saved.lm.backbone.embedding.weight)
    with pytest.warns(UserWarning, match="head starts from scratch"):
        other = ClassifierModule(res["labels"][::-1], init_from=str(first / "model"))
    assert other.head_from is None and not torch.equal(other.net.head.weight, saved.head.weight)
    # the chained run trains on longer windows from there and records where its head came from
    doc = _doc(tmp_path / "long", init_from=str(first / "model"))
    del doc["model"]
    doc["data"]["length"], doc["trainer"]["max_steps"], doc["baselines"] = 512, 2, []
    res2 = run_classify(load_config(doc=doc), quiet=True)
    assert res2["head_from"] == str(first / "model") and res2["length"] == 512 and res2["global_step"] == 2


def test_classify_cli_errors_name_the_problem(tmp_path):
    out = subprocess.run([sys.executable, "-m", "genomamba", "classify", "evaluate", "--model", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no head.json" in out.stderr and str(tmp_path) in out.stderr
    out = subprocess.run([sys.executable, "-m", "genomamba", "classify", "fit", "-c", str(tmp_path / "nope.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "nope.yaml" in out.stderr
    out = subprocess.run([sys.executable, "-m", "genomamba", "classify", "frobnicate"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "frobnicate" in out.stderr


def test_kmer_indices_skip_non_acgt():
    tok = DNATokenizer()
    ids = tok.encode("ACGTNACG")
    idx = kmer_indices(ids, 2, tok)
    # AC CG GT | (TN, NA skipped) | AC CG
    assert idx.tolist() == [1, 6, 11, 1, 6]


def test_naive_bayes_and_gc_separate_composition():
    rng = np.random.default_rng(0)
    tok = DNATokenizer()
    at_rich = lambda n: tok.encode("".join(rng.choice(list("ACGT"), n, p=[0.35, 0.15, 0.15, 0.35])))
    gc_rich = lambda n: tok.encode("".join(rng.choice(list("ACGT"), n, p=[0.15, 0.35, 0.35, 0.15])))
    nb = KmerNaiveBayes(3, tokenizer=tok).fit([[at_rich(5000)], [gc_rich(5000)]])
    wins = [at_rich(300) for _ in range(10)] + [gc_rich(300) for _ in range(10)]
    y = np.array([0] * 10 + [1] * 10)
    assert (nb.predict(wins) == y).all()
    gc = GCClassifier(tok).fit([[at_rich(300) for _ in range(20)], [gc_rich(300) for _ in range(20)]])
    assert (gc.predict(wins) == y).mean() > 0.9
    assert gc_fraction(tok.encode("GGCCNNAT")) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="k: expected"):
        KmerNaiveBayes(0)


def test_init_from_is_checked_before_the_run_starts(tmp_path):
    """A missing init_from, or one that reads ambiguity codes otherwise than the config's adapter, is
    refused before the run directory is made."""
    import torch

    from genomamba import MambaConfig, MambaLM
    from genomamba.lit.config import ConfigError

    run = tmp_path / "cls"
    with pytest.raises(ConfigError, match=r"init_from: .*nowhere does not exist; pretrain one first"):
        run_classify(load_config(doc=_doc(run, init_from=str(tmp_path / "nowhere"))), quiet=True)
    assert not run.exists()
    lm_dir = tmp_path / "lm"
    torch.manual_seed(0)
    tok = DNATokenizer(iupac="tokens")
    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=tok.vocab_size)).save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    doc = _doc(run, init_from=str(lm_dir))
    doc.pop("model")
    with pytest.raises(ConfigError, match=r"was trained with DNATokenizer\(iupac='tokens'.*set adapter: "
                                          r"\{name: dna, iupac: tokens\}"):
        run_classify(load_config(doc=doc), quiet=True)
    assert not run.exists()
