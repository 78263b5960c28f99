"""Weights split into safetensors shards (model.safetensors.index.json): HF's and mamba_ssm-style."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from genomamba import MambaConfig, MambaLM
from genomamba.models.io import CheckpointError

INDEX = "model.safetensors.index.json"


def shard_own_save(directory, n=3):
    """Split a genomamba save's model.safetensors into ``n`` shards with an index; returns the shard names."""
    sd = load_file(str(directory / "model.safetensors"))
    keys = sorted(sd)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for i, name in enumerate(names):
        part = keys[i::n]
        save_file({k: sd[k] for k in part}, str(directory / name))
        weight_map.update({k: name for k in part})
    (directory / INDEX).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (directory / "model.safetensors").unlink()
    return names


@pytest.fixture
def own(tmp_path):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12)).eval()
    m.save_pretrained(tmp_path)
    return m, tmp_path, shard_own_save(tmp_path)


def test_sharded_genomamba_directory_loads(own):
    m, d, _ = own
    m2 = MambaLM.from_pretrained(d)
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


@torch.no_grad()
def test_hf_sharded_save_loads_like_the_unsharded_one(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=24, hidden_size=48, state_size=8, num_hidden_layers=3, expand=2,
                                   conv_kernel=4, time_step_rank=6)
    hf = transformers.MambaForCausalLM(cfg).eval()
    for p in hf.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "whole")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) >= 2 and (tmp_path / "sharded" / INDEX).exists()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    whole = MambaLM.from_pretrained(tmp_path / "whole")
    sharded = MambaLM.from_pretrained(tmp_path / "sharded")
    ids = torch.randint(0, 24, (2, 40))
    assert torch.equal(sharded(ids), whole(ids))
    torch.testing.assert_close(sharded(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_missing_shard_is_named(own):
    _, d, names = own
    (d / names[1]).unlink()
    with pytest.raises(CheckpointError, match=rf"{names[1]}: missing: {INDEX} maps"):
        MambaLM.from_pretrained(d)


def test_key_mapped_to_an_absent_file_is_named(own):
    _, d, _ = own
    index = json.loads((d / INDEX).read_text())
    index["weight_map"]["backbone.norm_f.weight"] = "model-00009-of-00009.safetensors"
    (d / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model-00009-of-00009\.safetensors: missing.*backbone\.norm_f\.weight"):
        MambaLM.from_pretrained(d)


def test_shard_lacking_a_mapped_key_is_named(own):
    _, d, names = own
    index = json.loads((d / INDEX).read_text())
    key = next(k for k, v in index["weight_map"].items() if v == names[0])
    index["weight_map"][key] = names[2]
    (d / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"{names[2]}: lacks {key}"):
        MambaLM.from_pretrained(d)


@pytest.mark.parametrize("name", ["../model-00001-of-00003.safetensors", "/tmp/x.safetensors",
                                  "pytorch_model-00001-of-00003.bin", 3])
def test_index_naming_anything_but_a_safetensors_file_beside_it_is_refused(own, name):
    _, d, _ = own
    index = json.loads((d / INDEX).read_text())
    index["weight_map"]["backbone.norm_f.weight"] = name
    (d / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: weight_map\['backbone\.norm_f"):
        MambaLM.from_pretrained(d)


@pytest.mark.parametrize("text", ["{oops", "null", '{"weight_map": {}}', '{"metadata": {}}'])
def test_malformed_index_is_named(own, text):
    _, d, _ = own
    (d / INDEX).write_text(text)
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: "):
        MambaLM.from_pretrained(d)


def test_sharded_pickles_are_never_read(own, tmp_path):
    m, d, names = own
    for name in names + [INDEX]:
        (d / name).unlink()
    torch.save(m.state_dict(), d / "pytorch_model-00001-of-00001.bin")
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {k: "pytorch_model-00001-of-00001.bin" for k in m.state_dict()}}))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin\.index\.json: .*only as safetensors"):
        MambaLM.from_pretrained(d)


def test_directory_without_weights_says_what_it_looked_for(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 32, "n_layer": 2, "vocab_size": 12}))
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors\.index\.json"):
        MambaLM.from_pretrained(tmp_path)
