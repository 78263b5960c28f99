"""Save / load: bit-exact round trip, no unpickling of code, mamba_ssm and HF directories."""

import json
import os
import pickle

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.models.io import CheckpointError, read_state_dict


def small():
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12)).eval()


def test_round_trip_is_bit_exact(tmp_path):
    m = small()
    m.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["d_model"] == 32
    m2 = MambaLM.from_pretrained(tmp_path)
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert m2.lm_head.weight is m2.backbone.embedding.weight
    ids = torch.randint(0, 12, (2, 20))
    with torch.no_grad():
        assert torch.equal(m(ids), m2(ids))


def test_untied_head_round_trip(tmp_path):
    m = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8, tie_embeddings=False))
    m.save_pretrained(tmp_path)
    m2 = MambaLM.from_pretrained(tmp_path)
    assert m2.lm_head.weight is not m2.backbone.embedding.weight
    assert torch.equal(m.lm_head.weight, m2.lm_head.weight)


def test_mamba_ssm_bin_checkpoint_loads(tmp_path):
    """A mamba_ssm directory: config.json with its fields + pytorch_model.bin holding both tied keys."""
    m = small()
    cfg = {"d_model": 32, "n_layer": 2, "vocab_size": 12, "ssm_cfg": {}, "rms_norm": True,
           "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    torch.save(m.state_dict(), tmp_path / "pytorch_model.bin")
    m2 = MambaLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = tmp_path / "pytorch_model.bin"
    with open(payload, "wb") as f:
        pickle.dump({"backbone.embedding.weight": _Exploit(str(marker))}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        read_state_dict(payload)
    assert not marker.exists()
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 32, "n_layer": 2, "vocab_size": 12}))
    with pytest.raises(CheckpointError, match="never unpickles"):
        MambaLM.from_pretrained(tmp_path)
    assert not marker.exists()
    # the same payload in torch.save's zip format: torch words that refusal differently
    torch.save({"backbone.embedding.weight": _Exploit(str(marker))}, payload)
    with pytest.raises(CheckpointError, match=r"refused to load: the file is not a plain tensor checkpoint "
                                              r"\((?i:[^)]*global[^)]*open)\)"):
        read_state_dict(payload)
    assert not marker.exists()


def test_mismatched_checkpoint_names_the_key(tmp_path):
    small().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["d_state"] = 8
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="A_log has shape"):
        MambaLM.from_pretrained(tmp_path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MambaLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        MambaLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 32, "n_layer": 2, "vocab_size": 12}))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        MambaLM.from_pretrained(tmp_path)


def test_a_config_json_cannot_hold_changes_nothing_on_disk(tmp_path):
    """The config is serialised before any file is written: a save that fails on it leaves the
    earlier save whole (not new weights beside the old config)."""
    import numpy as np

    first = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11, norm_epsilon=1e-5)).eval()
    first.save_pretrained(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    second = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11, norm_epsilon=1e-3,
                                 extra={"steps": np.int64(5)}))
    with pytest.raises(ValueError, match=r"config\.json: the model's config cannot be written as JSON .*extra"):
        second.save_pretrained(tmp_path / "m")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before


def test_weights_beside_another_config_are_noticed(tmp_path):
    """A save writes the weights, then the config; weights left beside another config (a save killed
    between the two renames, or a config edited since) load with a warning naming both files. A whole
    save, and a safetensors file from elsewhere (no genomamba metadata), load without one."""
    import shutil
    import warnings

    old = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11, norm_epsilon=1e-5)).eval()
    new = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11, norm_epsilon=1e-3)).eval()
    old.save_pretrained(tmp_path / "m")
    new.save_pretrained(tmp_path / "new")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MambaLM.from_pretrained(tmp_path / "m")
    shutil.copy(tmp_path / "new" / "model.safetensors", tmp_path / "m" / "model.safetensors")  # killed here
    with pytest.warns(UserWarning, match=r"m/model\.safetensors was saved together with another .*m/config\.json "
                                         r"\(the config was edited since, or a save was interrupted"):
        loaded = MambaLM.from_pretrained(tmp_path / "m")
    assert loaded.config.norm_epsilon == 1e-5  # the config on disk, as the warning says
    new.save_pretrained(tmp_path / "m")  # the save completed: both files agree again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MambaLM.from_pretrained(tmp_path / "m").config.norm_epsilon == 1e-3
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    # the same settings laid out otherwise (CRLF line ends, other indentation and key order): no warning
    (tmp_path / "m" / "config.json").write_bytes(json.dumps(cfg, indent=4, sort_keys=True).replace("\n", "\r\n")
                                                 .encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MambaLM.from_pretrained(tmp_path / "m")
    cfg["norm_epsilon"] = 1e-4  # edited by hand
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="edited since"):
        MambaLM.from_pretrained(tmp_path / "m")
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(tmp_path / "m" / "model.safetensors")), str(tmp_path / "m" / "model.safetensors"),
              metadata={"format": "pt"})  # as another tool writes it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MambaLM.from_pretrained(tmp_path / "m")


def test_saving_a_model_over_a_classifier_removes_the_old_head(tmp_path):
    """A head left from an earlier save would be read with the new backbone as if it were trained on
    it; saving a plain model there removes it, and a classifier saved again writes its own."""
    from genomamba.models.heads import SequenceClassifier, has_head

    torch.manual_seed(0)
    clf = SequenceClassifier(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11)), ["x", "y"])
    clf.save_pretrained(tmp_path / "m")
    assert has_head(tmp_path / "m")
    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=11)).save_pretrained(tmp_path / "m")
    assert not has_head(tmp_path / "m")
    assert not (tmp_path / "m" / "head.json").exists() and not (tmp_path / "m" / "head.safetensors").exists()
    clf.save_pretrained(tmp_path / "m")
    again = SequenceClassifier.from_pretrained(tmp_path / "m")
    assert again.labels == ["x", "y"] and torch.equal(again.head.weight, clf.head.weight)


def test_from_pretrained_names_a_bad_dtype_or_device(tmp_path):
    small().save_pretrained(tmp_path)
    assert MambaLM.from_pretrained(tmp_path, dtype="bfloat16").lm_head.weight.dtype == torch.bfloat16
    assert MambaLM.from_pretrained(tmp_path, device="cpu").lm_head.weight.device.type == "cpu"
    for bad in (torch.int8, "int8", "bf16", 3):
        with pytest.raises(ValueError, match=r"^dtype: expected a floating-point torch dtype"):
            MambaLM.from_pretrained(tmp_path, dtype=bad)
    with pytest.raises(ValueError, match=r"^device: expected cpu, cuda or cuda:N, got 'gpu'"):
        MambaLM.from_pretrained(tmp_path, device="gpu")
