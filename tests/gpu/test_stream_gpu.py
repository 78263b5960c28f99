"""Held-out text read as a stream on a CUDA device (bf16 autocast), from a model a trainer left on the
CPU: the same bits as on the CPU within bf16 rounding; adapting moves the score and restores the weights."""

import pytest
import torch

from genomamba.adapters import get_adapter
from genomamba.config import MambaConfig
from genomamba.data.fetch import assets_dir
from genomamba.lit.evaluate import stream_bits
from genomamba.models.lm import MambaLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_stream_on_cuda_matches_cpu():
    text = get_adapter("text")
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=text.vocab_size))
    ids = torch.as_tensor(text.encode((assets_dir() / "text_kjv_genesis.txt").read_text()[:20000])).long()
    ok = torch.zeros(model.config.padded_vocab_size, dtype=torch.bool)
    ok[text.data_ids] = True
    cpu = stream_bits(model, [ids], ok, chunk_len=4096)["bits"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gpu = stream_bits(model, [ids], ok, chunk_len=1000, device="cuda")
    assert next(model.parameters()).is_cuda and gpu["tokens"] == len(ids) - 1
    assert gpu["bits"] == pytest.approx(cpu, rel=2e-2)
    adaptive = stream_bits(model, [ids], ok, chunk_len=1000, adapt_lr=0.05, device="cuda")["bits"]
    assert adaptive != pytest.approx(gpu["bits"], rel=1e-4)
    for k, v in model.state_dict().items():
        assert torch.equal(v.cpu(), before[k]), k
