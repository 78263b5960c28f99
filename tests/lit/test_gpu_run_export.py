"""The GPU run's model export: files over the device tool's 16 MiB return limit travel in parts and
come back byte-identical (a real saved model, small part size)."""

import hashlib

import pytest

from genomamba.config import MambaConfig
from genomamba.lit.gpu_run import export_model, join_parts, main
from genomamba.models.lm import MambaLM


def _digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_export_splits_and_join_restores(tmp_path):
    src = tmp_path / "model"
    MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=16)).save_pretrained(src)
    weights = src / "model.safetensors"
    size = weights.stat().st_size
    part = size // 3 + 1
    info = export_model(src, tmp_path / "out", part_bytes=part)
    out = tmp_path / "out"
    assert info["split"] == {"model.safetensors": 3}
    assert not (out / "model.safetensors").exists()
    assert all((out / f"model.safetensors.part{i:02d}").stat().st_size <= part for i in range(3))
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert main(["--join", str(out)]) == 0
    assert _digest(out / "model.safetensors") == _digest(weights)
    assert not list(out.glob("*.part*"))
    assert MambaLM.from_pretrained(out).config.d_model == 32


def test_join_refuses_a_missing_part(tmp_path):
    (tmp_path / "w.bin.part00").write_bytes(b"a")
    (tmp_path / "w.bin.part02").write_bytes(b"c")
    with pytest.raises(ValueError, match="w.bin"):
        join_parts(tmp_path)
    assert (tmp_path / "w.bin.part00").exists()  # nothing lost
