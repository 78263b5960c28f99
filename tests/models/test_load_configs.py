"""config.json as mamba_ssm 1 / 2, HF and genomamba write it; bad ones are refused naming file and field."""

import json

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.errors import one_line
from genomamba.models.io import CheckpointError

MAMBA_SSM_2 = {"d_model": 32, "d_intermediate": 0, "n_layer": 2, "vocab_size": 12, "ssm_cfg": {"layer": "Mamba1"},
               "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
               "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True}


def model_dir(tmp_path, **cfg):
    """A mamba_ssm-style directory: config.json as given + pytorch_model.bin holding both tied keys."""
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12)).eval()
    torch.save(m.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return m


@pytest.mark.parametrize("extra", [{}, {"attn_layer_idx": None, "attn_cfg": None}, {"ssm_cfg": {}}, {"ssm_cfg": None},
                                   {"ssm_cfg": {"layer": "Mamba1", "d_state": 16, "use_fast_path": True}}])
def test_mamba_ssm_2_config_of_a_mamba_1_model_loads(tmp_path, extra):
    m = model_dir(tmp_path, **{**MAMBA_SSM_2, **extra})
    m2 = MambaLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 12, (2, 20))
    with torch.no_grad():
        assert torch.equal(m(ids), m2(ids))


@pytest.mark.parametrize("field,value,match", [
    ("d_intermediate", 128, r"d_intermediate: 128 gives every block an MLP"),
    ("d_intermediate", -1, r"d_intermediate: expected an int >= 0"),
    ("d_intermediate", "0", r"d_intermediate: expected an int >= 0"),
    ("attn_layer_idx", [1], r"attn_layer_idx: layers \[1\] are attention layers"),
    ("attn_layer_idx", 1, r"attn_layer_idx: expected a list"),
    ("attn_cfg", "x", r"attn_cfg: expected a mapping"),
    ("ssm_cfg", {"layer": "Mamba2", "headdim": 64}, r"ssm_cfg\.layer: genomamba runs Mamba-1 blocks"),
])
def test_mamba_ssm_2_config_genomamba_cannot_run_is_refused(tmp_path, field, value, match):
    model_dir(tmp_path, **{**MAMBA_SSM_2, field: value})
    with pytest.raises(CheckpointError, match=r"config\.json: MambaConfig\." + match):
        MambaLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("text,match", [
    ("null", r"expected a JSON object of model settings, got null"),
    ("[1, 2]", r"expected a JSON object of model settings, got list"),
    ('"d_model"', r"expected a JSON object of model settings, got str"),
])
def test_config_that_is_not_an_object(tmp_path, text, match):
    model_dir(tmp_path)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"config\.json: " + match):
        MambaLM.from_pretrained(tmp_path)


BASE = {"d_model": 32, "n_layer": 2, "vocab_size": 12}


@pytest.mark.parametrize("fields,match", [
    ({"ssm_cfg": {"d_state": "x"}}, r"ssm_cfg\.d_state: expected a positive int, got 'x'"),
    ({"ssm_cfg": {"d_state": 16.5}}, r"ssm_cfg\.d_state: expected a positive int, got 16\.5"),
    ({"ssm_cfg": {"d_state": 0}}, r"ssm_cfg\.d_state: expected a positive int"),
    ({"ssm_cfg": {"d_conv": 9}}, r"ssm_cfg\.d_conv: expected 1\.\.4"),
    ({"ssm_cfg": {"expand": True}}, r"ssm_cfg\.expand: expected a positive int"),
    ({"ssm_cfg": {"dt_rank": -2}}, r"ssm_cfg\.dt_rank: expected 'auto' or a positive int"),
    ({"ssm_cfg": {"dt_min": -1.0}}, r"ssm_cfg\.dt_min: expected a positive number"),
    ({"ssm_cfg": {"dt_min": 0.5, "dt_max": 0.1}}, r"ssm_cfg\.dt_min/dt_max"),
    ({"ssm_cfg": {"dt_init": "xavier"}}, r"ssm_cfg\.dt_init: expected 'random' or 'constant'"),
    ({"ssm_cfg": {"conv_bias": "false"}}, r"ssm_cfg\.conv_bias: expected true or false, got 'false'"),
    ({"ssm_cfg": {"use_fast_path": "yes"}}, r"ssm_cfg\.use_fast_path: expected true or false"),
    ({"ssm_cfg": {"d_stat": 16}}, r"ssm_cfg: unknown key\(s\) d_stat"),
    ({"ssm_cfg": "Mamba1"}, r"ssm_cfg: expected a mapping"),
    ({"ssm_cfg": [16]}, r"ssm_cfg: expected a mapping"),
    ({"norm_epsilon": "abc"}, r"norm_epsilon: expected a finite number >= 0, got 'abc'"),
    ({"norm_epsilon": -1e-5}, r"norm_epsilon: expected a finite number >= 0"),
    ({"dt_scale": None}, r"dt_scale: expected a finite number"),
    ({"initializer_range": "0.02"}, r"initializer_range: expected a finite number"),
    ({"dropout": "0.1"}, r"dropout: expected a probability"),
    ({"tie_embeddings": "false"}, r"tie_embeddings: expected true or false, got 'false'"),
    ({"residual_in_fp32": "no"}, r"residual_in_fp32: expected true or false, got 'no'"),
    ({"rms_norm": 0}, r"rms_norm: expected true or false, got 0"),
    ({"fused_add_norm": "true"}, r"fused_add_norm: expected true or false"),
    ({"bias": 1}, r"bias: expected true or false"),
    ({"rescale_prenorm_residual": "yes"}, r"rescale_prenorm_residual: expected true or false"),
    ({"dt_rank": True}, r"dt_rank: expected 'auto' or a positive int"),
    ({"n_layer": 2.0}, r"n_layer: expected a positive int"),
    ({"extra": []}, r"extra: expected a mapping"),
])
def test_bad_field_is_refused_naming_file_and_field(tmp_path, fields, match):
    model_dir(tmp_path, **{**BASE, **fields})
    with pytest.raises(CheckpointError, match=r"config\.json: MambaConfig\." + match) as caught:
        MambaLM.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in one_line(caught.value)


def test_ssm_cfg_values_override_the_top_level_ones(tmp_path):
    ssm_cfg = {"d_state": 8, "dt_scale": 2, "dt_init": "constant"}
    cfg = MambaConfig.from_dict({**BASE, "d_state": 16, "ssm_cfg": ssm_cfg})
    assert cfg.d_state == 8 and cfg.dt_scale == 2.0 and cfg.dt_init == "constant"


def test_mamba_config_file_names_the_file(tmp_path):
    p = tmp_path / "model.json"
    p.write_text("null")
    with pytest.raises(ValueError, match=r"model\.json: MambaConfig: expected a mapping of model settings, got null"):
        MambaConfig.from_file(p)
    p = tmp_path / "model.yaml"
    p.write_text("model: {d_model: 32, ssm_cfg: {d_state: 16.5}}\n")
    with pytest.raises(ValueError, match=r"model\.yaml: MambaConfig\.ssm_cfg\.d_state: expected a positive int"):
        MambaConfig.from_file(p)
    p.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match=r"model\.yaml: not valid YAML"):
        MambaConfig.from_file(p)


HF = {"hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 16, "state_size": 16, "conv_kernel": 4, "expand": 2,
      "time_step_rank": 2, "tie_word_embeddings": True, "model_type": "mamba"}


@pytest.mark.parametrize("fields,match", [
    ({"tie_word_embeddings": "false"}, r"tie_word_embeddings: expected true or false"),
    ({"use_conv_bias": "no"}, r"use_conv_bias: expected true or false"),
    ({"state_size": 16.5}, r"state_size: expected a positive int"),
    ({"layer_norm_epsilon": "abc"}, r"layer_norm_epsilon: expected a finite number"),
    ({"num_hidden_layers": None}, r"num_hidden_layers: expected a positive int"),
    ({"hidden_act": "gelu"}, r"hidden_act: only 'silu'"),
    ({"time_step_init_scheme": "xavier"}, r"time_step_init_scheme: expected 'random' or 'constant'"),
])
def test_bad_hf_field_is_named_by_its_hf_name(tmp_path, fields, match):
    model_dir(tmp_path, **{**HF, **fields})
    with pytest.raises(CheckpointError, match=r"config\.json: " + match):
        MambaLM.from_pretrained(tmp_path)


def test_hf_config_missing_a_required_field(tmp_path):
    model_dir(tmp_path, **{k: v for k, v in HF.items() if k != "num_hidden_layers"})
    with pytest.raises(CheckpointError, match=r"config\.json: num_hidden_layers: missing"):
        MambaLM.from_pretrained(tmp_path)
