"""A config's DNA adapter settings (the IUPAC policy) reach the data, the saved model and the
classifier's reverse complement: they are not replaced by the default tokenizer."""

import json

import numpy as np
import torch

import genomamba
from genomamba.adapters.dna import DNAAdapter
from genomamba.commands.pretrain import run_pretrain
from genomamba.lit.classify import ClassifierModule
from genomamba.lit.config import load_config

from .conftest import TINY_MODEL


def test_pretrain_keeps_the_adapters_iupac_tokens(tiny_pretrain, tmp_path):
    doc = tiny_pretrain(max_steps=2)
    doc["adapter"] = {"name": "dna", "iupac": "tokens"}
    doc["model"] = {k: v for k, v in TINY_MODEL.items() if k != "vocab_size"}
    res = run_pretrain(load_config(doc=doc), quiet=True)
    model_dir = tmp_path / "run" / "model"
    assert res["global_step"] == 2
    assert json.loads((model_dir / "tokenizer.json").read_text())["iupac"] == "tokens"
    assert json.loads((model_dir / "config.json").read_text())["vocab_size"] == 21
    m = genomamba.load(model_dir)
    assert m.tokenizer.iupac == "tokens"
    assert m.encode("ACGTR").tolist() == [6, 7, 8, 9, m.tokenizer.token_to_id["R"]]


def test_the_classifiers_reverse_complement_reads_its_own_vocabulary():
    tok = DNAAdapter(iupac="tokens").tokenizer
    module = ClassifierModule(["a", "b"], model={**TINY_MODEL, "vocab_size": tok.vocab_size},
                              adapter=DNAAdapter(iupac="tokens").to_dict())
    ids = torch.from_numpy(tok.encode("AARYK").astype(np.int64))
    assert tok.decode(module._rc_tokenizer.reverse_complement(ids).numpy()) == "MRYTT"
