from pathlib import Path

import pytest
import torch

import genomamba
from genomamba import DNATokenizer, MambaConfig, MambaLM
from genomamba.data.fasta import read_fasta
from genomamba.models.heads import SequenceClassifier

LAMBDA = Path(genomamba.__file__).parent / "assets" / "lambda_virus.fa.gz"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small untrained DNA LM saved as a model directory (config, weights, tokenizer)."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("lm")
    MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=11)).save_pretrained(d)
    DNATokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
    """A small untrained 3-species classifier saved as a model directory."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("clf")
    lm = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11))
    SequenceClassifier(lm, ["E_coli", "S_aureus", "H_pylori"]).save_pretrained(d)
    DNATokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def lambda_seq() -> str:
    """The shipped lambda phage genome (48.5 kb)."""
    return next(iter(read_fasta(LAMBDA))).sequence


@pytest.fixture(scope="module")
def prompts_fa(tmp_path_factory, lambda_seq):
    """Three real lambda pieces of different lengths as a FASTA file of prompts."""
    f = tmp_path_factory.mktemp("prompts") / "prompts.fa"
    f.write_text("".join(f">p{i} lambda piece {i}\n{lambda_seq[i * 700:i * 700 + 40 + 55 * i]}\n" for i in range(3)))
    return f
