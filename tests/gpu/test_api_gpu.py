"""genomamba.load on a CUDA device: bfloat16 weights by default, the same embeddings and scores as
on CPU within bf16 rounding (fp32 on request: within fp32 rounding); long records chunked."""

from pathlib import Path

import numpy as np
import pytest
import torch

import genomamba
from genomamba import MambaConfig, MambaLM
from genomamba.data.fasta import read_fasta

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ASSETS = Path(genomamba.__file__).parent / "assets"


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)) / np.linalg.norm(b))


def test_cuda_inference_matches_cpu(tmp_path):
    torch.manual_seed(0)
    MambaLM(MambaConfig(d_model=64, n_layer=3, vocab_size=11)).save_pretrained(tmp_path / "m")
    seq = next(read_fasta(ASSETS / "umaydis_val.fa.gz")).sequence[:20000]
    cpu = genomamba.load(tmp_path / "m")
    want = cpu.embed([seq], chunk_size=4096)
    want_bits = cpu.score([seq]).bits_per_base[0]
    gpu32 = genomamba.load(tmp_path / "m", device="cuda", dtype=torch.float32)
    gpu16 = genomamba.load(tmp_path / "m", device="cuda")
    assert next(gpu16.lm.parameters()).dtype == torch.bfloat16
    assert next(gpu32.lm.parameters()).dtype == torch.float32
    assert _rel(gpu32.embed([seq], chunk_size=4096), want) < 1e-4
    assert _rel(gpu16.embed([seq], chunk_size=4096), want) < 5e-2
    assert abs(gpu32.score([seq]).bits_per_base[0] - want_bits) < 1e-4
    assert abs(gpu16.score([seq]).bits_per_base[0] - want_bits) < 2e-2
