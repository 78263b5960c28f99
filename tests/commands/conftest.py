import pytest
import torch

from genomamba import DNATokenizer, MambaConfig, MambaLM


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small untrained DNA LM saved as a model directory (config, weights, tokenizer)."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("lm")
    MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=11)).save_pretrained(d)
    DNATokenizer().save_pretrained(d)
    return d
