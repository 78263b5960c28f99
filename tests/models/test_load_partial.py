"""Loading a checkpoint that lacks parameters (strict=False), holds extra ones, or unties a tied head."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from genomamba import MambaConfig, MambaLM
from genomamba.models.io import CheckpointError


def saved(tmp_path, drop=(), add=None, **cfg):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12, d_state=16, **cfg)).eval()
    m.save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd = {k: v for k, v in sd.items() if k not in drop}
    sd.update(add or {})
    save_file(sd, str(tmp_path / "model.safetensors"))
    return m


def test_missing_parameters_get_a_new_models_initialisation(tmp_path):
    dropped = ["backbone.norm_f.weight", "backbone.layers.1.mixer.A_log", "backbone.layers.0.mixer.D",
               "backbone.layers.1.mixer.dt_proj.bias", "backbone.layers.0.norm.weight"]
    m = saved(tmp_path, drop=dropped)
    with pytest.raises(CheckpointError, match="missing"):
        MambaLM.from_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="keep a new model's initialisation") as caught:
        m2 = MambaLM.from_pretrained(tmp_path, strict=False)
    msg = " ".join(str(w.message) for w in caught)
    assert "model.safetensors" in msg
    assert all(k in msg for k in dropped)
    d_inner = 64
    assert torch.equal(m2.backbone.norm_f.weight, torch.ones(32))
    assert torch.equal(m2.backbone.layers[0].norm.weight, torch.ones(32))
    assert torch.equal(m2.backbone.layers[0].mixer.D, torch.ones(d_inner))
    a = torch.log(torch.arange(1, 17, dtype=torch.float32)).repeat(d_inner, 1)
    assert torch.equal(m2.backbone.layers[1].mixer.A_log, a)
    dt = torch.nn.functional.softplus(m2.backbone.layers[1].mixer.dt_proj.bias)  # dt_min..dt_max at init
    assert bool((dt >= 1e-3 * 0.999).all()) and bool((dt <= 0.1 * 1.001).all())
    # what the checkpoint holds is loaded as saved
    kept = {k: v for k, v in m.state_dict().items() if k not in dropped}
    got = m2.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in kept.items())
    assert m2.lm_head.weight is m2.backbone.embedding.weight
    with torch.no_grad():
        assert bool(torch.isfinite(m2(torch.randint(0, 12, (2, 16)))).all())


def test_missing_embedding_is_initialised_and_stays_tied(tmp_path):
    saved(tmp_path, drop=["backbone.embedding.weight"])
    with pytest.warns(UserWarning, match="backbone.embedding.weight"):
        m2 = MambaLM.from_pretrained(tmp_path, strict=False)
    w = m2.backbone.embedding.weight.detach()
    assert m2.lm_head.weight is m2.backbone.embedding.weight
    assert bool(torch.isfinite(w).all()) and 0.01 < float(w.std()) < 0.03  # normal(0, initializer_range=0.02)


def test_extra_tensors_are_named_and_ignored_when_not_strict(tmp_path):
    saved(tmp_path, add={"backbone.layers.7.mixer.D": torch.ones(64)})
    with pytest.raises(CheckpointError, match="unexpected"):
        MambaLM.from_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="ignored .*backbone.layers.7.mixer.D"):
        MambaLM.from_pretrained(tmp_path, strict=False)


def test_complete_checkpoint_loads_without_warnings(tmp_path):
    m = saved(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m2 = MambaLM.from_pretrained(tmp_path, strict=False)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_tied_config_with_a_different_lm_head_warns_naming_the_file(tmp_path):
    m = saved(tmp_path)
    emb = m.backbone.embedding.weight.detach()
    save_file({**load_file(str(tmp_path / "model.safetensors")), "lm_head.weight": emb + 1},
              str(tmp_path / "model.safetensors"))
    with pytest.warns(UserWarning, match=r"model\.safetensors: lm_head\.weight differs .*tie_embeddings"):
        m2 = MambaLM.from_pretrained(tmp_path)
    assert torch.equal(m2.lm_head.weight, emb)
    # mamba_ssm's .bin holds both tied keys, equal: no warning
    (tmp_path / "model.safetensors").unlink()
    torch.save(m.state_dict(), tmp_path / "pytorch_model.bin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MambaLM.from_pretrained(tmp_path)


def test_untied_config_keeps_its_own_lm_head(tmp_path):
    m = saved(tmp_path, tie_embeddings=False)
    assert json.loads((tmp_path / "config.json").read_text())["tie_embeddings"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m2 = MambaLM.from_pretrained(tmp_path)
    assert torch.equal(m2.lm_head.weight, m.lm_head.weight)
