"""Weights files that are not what they should be: our own message naming the file, nothing unpickled."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from genomamba import MambaConfig, MambaLM
from genomamba.errors import one_line
from genomamba.models.heads import SequenceClassifier
from genomamba.models.io import CheckpointError, read_state_dict


def bin_dir(tmp_path, legacy=False):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12)).eval()
    torch.save(m.state_dict(), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 32, "n_layer": 2, "vocab_size": 12}))
    return tmp_path / "pytorch_model.bin"


def refused(tmp_path, match):
    with pytest.raises(CheckpointError, match=match) as caught:
        MambaLM.from_pretrained(tmp_path)
    msg = str(caught.value)
    assert str(tmp_path / "pytorch_model.bin") in one_line(caught.value)
    assert "weights_only" not in msg and "trusted source" not in msg  # no advice to unpickle
    return msg


def test_plain_text_bin_is_not_a_tensor_checkpoint(tmp_path):
    p = bin_dir(tmp_path)
    p.write_text("hello, this is not a checkpoint\n")
    refused(tmp_path, r"pytorch_model\.bin: not a readable tensor checkpoint: not a PyTorch weights file")


def test_empty_bin(tmp_path):
    bin_dir(tmp_path).write_bytes(b"")
    refused(tmp_path, r"not a readable tensor checkpoint: the file is empty")


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.97])
def test_truncated_bin_gets_our_message(tmp_path, legacy, keep):
    p = bin_dir(tmp_path, legacy)
    data = p.read_bytes()
    p.write_bytes(data[:int(len(data) * keep)])
    refused(tmp_path, r"pytorch_model\.bin: (not a readable tensor checkpoint|refused to load)")


def test_truncated_inside_a_class_name(tmp_path):
    """A legacy .bin cut inside a pickled name: torch reports it as a forbidden global."""
    p = bin_dir(tmp_path, legacy=True)
    data = p.read_bytes()
    cut = data.index(b"_rebuild_tensor") + 4
    p.write_bytes(data[:cut])
    msg = refused(tmp_path, r"refused to load: the file is not a plain tensor checkpoint")
    assert "never unpickles code" in msg


def test_bin_holding_more_than_tensors_names_the_entries(tmp_path):
    p = tmp_path / "pytorch_model.bin"
    torch.save({"a": torch.ones(2), "step": 3}, p)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: expected a mapping of parameter names to tensors; "
                                              r"not tensors: 'step'"):
        read_state_dict(p)


def classifier_dir(tmp_path):
    torch.manual_seed(0)
    clf = SequenceClassifier(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8)), ["a", "b", "c"])
    return clf.save_pretrained(tmp_path / "clf")


@pytest.mark.parametrize("change,match", [
    (lambda s: {**s, "extra.weight": torch.ones(2)}, r"missing \[\], unexpected \['extra\.weight'\]"),
    (lambda s: {"weight": s["weight"]}, r"missing \['bias'\], unexpected \[\]"),
    (lambda s: {"weight": s["weight"], "bias": torch.zeros(5)}, r"bias \(5,\)"),
    (lambda s: {**s, "frontend.weight": torch.ones(16, 4), "frontend.bias": torch.ones(16)},
     r"holds front-end weights .*describes no front end"),
])
def test_bad_head_file_is_named_with_its_keys(tmp_path, change, match):
    d = classifier_dir(tmp_path)
    head = d / "head.safetensors"
    save_file(change(load_file(str(head))), str(head))
    with pytest.raises(CheckpointError, match=r"head\.safetensors: .*" + match):
        SequenceClassifier.from_pretrained(d)


def test_good_head_round_trips(tmp_path):
    d = classifier_dir(tmp_path)
    clf = SequenceClassifier.from_pretrained(d)
    assert clf.labels == ["a", "b", "c"]
    assert torch.equal(clf.head.weight, load_file(str(d / "head.safetensors"))["weight"])
