"""Peer parity with HF transformers' MambaForCausalLM (CPU, fp32): converted weights, same logits."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genomamba import MambaLM  # noqa: E402
from genomamba.models.lm import from_hf, to_hf  # noqa: E402


def hf_model(**kw):
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=24, hidden_size=48, state_size=8, num_hidden_layers=3, expand=2,
                                   conv_kernel=4, time_step_rank=6, use_conv_bias=True, **kw)
    m = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF's init leaves some tensors at constants; randomise so parity means something
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def test_hf_to_genomamba_same_logits():
    hf = hf_model()
    ours = from_hf(hf).eval()
    ids = torch.randint(0, 24, (2, 150))
    ref = hf(ids).logits
    out = ours(ids)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-4


@torch.no_grad()
def test_genomamba_to_hf_same_logits():
    from genomamba import MambaConfig

    torch.manual_seed(1)
    ours = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=13)).eval()
    hf = to_hf(ours).eval()
    ids = torch.randint(0, 13, (2, 90))
    assert rel_err(ours(ids), hf(ids).logits) <= 1e-4


@torch.no_grad()
def test_hf_directory_loads(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 24, (1, 64))
    assert rel_err(ours(ids), hf(ids).logits) <= 1e-4


@torch.no_grad()
def test_a_round_trip_through_hf_keeps_the_real_vocabulary(tmp_path):
    """HF's config holds the padded vocabulary; the real one rides along, so a model saved by HF after
    to_hf samples only real ids again (not the untrained padding rows)."""
    from genomamba import MambaConfig

    torch.manual_seed(2)
    ours = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11)).eval()
    to_hf(ours).save_pretrained(tmp_path / "hf")
    back = MambaLM.from_pretrained(tmp_path / "hf")
    assert back.config.vocab_size == 11 and back.config.padded_vocab_size == 16
    ids = torch.randint(0, 11, (2, 40))
    assert rel_err(back(ids), ours(ids)) <= 1e-6
    out = back.generate(ids[:, :4], 200, temperature=50.0, seed=0)
    assert int(out.max()) <= 10
    # an HF directory without the extra field keeps reading its vocabulary as is
    assert MambaLM.from_pretrained(_hf_dir(tmp_path)).config.vocab_size == 24
    # resized in HF since (resize_token_embeddings): its count holds, with a warning
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path / "hf")
    hf.resize_token_embeddings(20)
    hf.save_pretrained(tmp_path / "resized")
    with pytest.warns(UserWarning, match=r"genomamba_vocab_size: 11 padded to a multiple of 8 is 16, but "
                                         r"vocab_size is 20"):
        assert MambaLM.from_pretrained(tmp_path / "resized").config.vocab_size == 20


def _hf_dir(tmp_path):
    hf_model().save_pretrained(tmp_path / "plain")
    return tmp_path / "plain"


def test_a_layernorm_model_is_refused_by_name():
    from genomamba import MambaConfig

    with pytest.raises(ValueError, match=r"^rms_norm: false; HF transformers' MambaForCausalLM has RMSNorm"):
        to_hf(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11, rms_norm=False)))
