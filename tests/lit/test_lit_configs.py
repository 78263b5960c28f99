"""Every YAML under configs/ parses: pretrain/classify configs into their typed dataclasses (and the
model section into a MambaConfig); any other kind at least into a mapping with a ``kind:``."""

from pathlib import Path

import pytest
import yaml

from genomamba.config import MambaConfig
from genomamba.lit.cli import KINDS, ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.y*ml"))


def test_configs_exist():
    kinds = {yaml.safe_load(p.read_text()).get("kind") for p in CONFIGS}
    assert {"pretrain", "classify"} <= kinds


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_parses(path):
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and "kind" in doc, f"{path}: needs a top-level kind:"
    if doc["kind"] not in KINDS:
        pytest.skip(f"kind {doc['kind']!r} is parsed by its own package's tests")
    cfg = load_config(path)
    if cfg.model:
        MambaConfig.from_dict({"vocab_size": 11, **cfg.model})
    if cfg.kind == "pretrain":
        assert cfg.data.seq_len >= 2 and cfg.trainer.max_steps > 0


def test_model_sizes_match_their_names():
    """DNA configs named by size: parameter count within 25 % of the name (1.4M, 7M)."""
    from genomamba import MambaLM

    want = {"1p4m": 1.4e6, "7m": 7e6}
    seen = set()
    for p in CONFIGS:
        for tag, n in want.items():
            if f"dna_{tag}_" in p.name:
                cfg = load_config(p)
                with __import__("torch").device("meta"):
                    lm = MambaLM(MambaConfig.from_dict({"vocab_size": 11, **cfg.model}))
                got = sum(x.numel() for x in {id(x): x for x in lm.parameters()}.values())
                assert abs(got - n) / n < 0.25, (p.name, got)
                seen.add(tag)
    assert seen == set(want)


def test_bad_configs_name_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("kind: pretrain\nmodel: {d_model: 8, n_layer: 1, vocab_size: 11}\ntrainer: {max_stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*trainer.*max_stepz"):
        load_config(p)
    p.write_text("kind: pretrain\nmodel: {d_model: 8, n_layer: 1, vocab_size: 11}\ntrainer: {max_steps: many}\n")
    with pytest.raises(ConfigError, match=r"trainer.max_steps: expected int"):
        load_config(p)
    p.write_text("kind: pretrain\nmodel: {d_model: -8, n_layer: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: model: .*d_model"):
        load_config(p)
    p.write_text("kind: pretrian\n")
    with pytest.raises(ConfigError, match="kind must be one of"):
        load_config(p)
    p.write_text("kind: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_overrides_are_typed(tmp_path):
    src = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "tiny_cpu.yaml"
    cfg = load_config(src, ["trainer.max_steps=7", "optim.lr=1e-3", "data.sources=[{assets: pretrain}]",
                            "seqlen_warmup.start=256", "seqlen_warmup.stage_steps=3"])
    assert cfg.trainer.max_steps == 7 and cfg.optim.lr == 1e-3
    assert cfg.data.sources == [{"assets": "pretrain"}]
    assert cfg.seqlen_warmup.start == 256
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(src, ["trainer.max_steps"])
