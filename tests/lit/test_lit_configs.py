"""Every YAML under configs/ parses: pretrain/classify configs into their typed dataclasses (and the
model section into a MambaConfig); any other kind at least into a mapping with a ``kind:``. The
``base:`` key, typed corpus sources and the shipped-config resolver."""

import json
from pathlib import Path

import pytest
import yaml

from genomamba.config import MambaConfig
from genomamba.data.corpus import AssetsSource, CorpusError, FetchSource, PathSource, build_corpus, parse_source
from genomamba.lit.config import (
    KINDS,
    ConfigError,
    ModelConfig,
    configs_dir,
    load_config,
    read_yaml,
    resolve_config_path,
    to_plain,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.y*ml"))


def test_configs_exist():
    kinds = {read_yaml(p).get("kind") for p in CONFIGS}
    assert {"pretrain", "classify"} <= kinds


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_parses(path):
    doc = read_yaml(path)
    assert isinstance(doc, dict) and "kind" in doc, f"{path}: needs a top-level kind: (its own or its base's)"
    if doc["kind"] not in KINDS:
        pytest.skip(f"kind {doc['kind']!r} is parsed by its own package's tests")
    cfg = load_config(path)
    if cfg.model is not None:
        MambaConfig.from_dict({"vocab_size": 11, **cfg.model.to_dict()})
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
                    lm = MambaLM(cfg.model.to_mamba(vocab_size=11))
                got = sum(x.numel() for x in {id(x): x for x in lm.parameters()}.values())
                assert abs(got - n) / n < 0.25, (p.name, got)
                seen.add(tag)
    assert seen == set(want)


def test_context_configs_differ_only_where_they_say():
    """The 1M-context config is the 16k one with its own window, warmup stage, step count and segments."""
    c16, c1m = (to_plain(load_config(ROOT / "configs" / "pretrain" / f"dna_1p4m_{c}.yaml")) for c in ("16k", "1m"))
    diff = {(sec, k) for sec in c16 for k in (c16[sec] if isinstance(c16[sec], dict) else [None])
            if (c16[sec].get(k) if k else c16[sec]) != (c1m[sec].get(k) if k else c1m[sec])}
    assert diff == {("name", None), ("run_dir", None), ("data", "seq_len"), ("data", "batch_size"),
                    ("seqlen_warmup", "stage_steps"), ("trainer", "max_steps"), ("trainer", "segment_len")}
    assert c1m["data"]["seq_len"] == 1048576 and c1m["model"] == c16["model"]
    assert c1m["trainer"]["segment_len"] == 131072 and c16["trainer"]["segment_len"] is None
    assert "base" not in c1m


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
    p.write_text("kind: pretrain\nmodel: {d_model: 8, n_layer: 1, d_modle: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: model: unknown key\(s\) \['d_modle'\]"):
        load_config(p)
    p.write_text("kind: pretrain\nmodel: {d_model: 8, n_layer: 1, dt_rank: yes}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: model.dt_rank: expected int or str, got True"):
        load_config(p)
    p.write_text("kind: pretrian\n")
    with pytest.raises(ConfigError, match="kind must be one of"):
        load_config(p)
    p.write_text("kind: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("kind: pretrain\nmodel: {d_model: 64\n")  # one line, where the parser stopped
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML at line 3, column 1: while parsing a flow "
                                          r"mapping expected ',' or '}', but got '<stream end>'$"):
        load_config(p)
    p.write_text("kind: pretrain\n  x: 1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2, column 4: mapping values are not allowed here$"):
        load_config(p)


def test_model_section_is_typed_and_lists_only_what_is_set(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("kind: pretrain\nmodel: {d_model: 16, n_layer: 2, dt_rank: auto, dt_min: 1e-3}\n")
    cfg = load_config(p)
    assert isinstance(cfg.model, ModelConfig) and cfg.model.dt_min == 1e-3 and cfg.model.dt_rank == "auto"
    assert to_plain(cfg)["model"] == {"d_model": 16, "n_layer": 2, "dt_rank": "auto", "dt_min": 1e-3}
    assert cfg.model.to_mamba(vocab_size=11).vocab_size == 11  # unset: the tokenizer's
    assert {f for f in ModelConfig.__dataclass_fields__} == {f for f in MambaConfig.__dataclass_fields__}
    p.write_text("kind: classify\nmodel: {}\n")
    with pytest.raises(ConfigError, match="give init_from"):
        load_config(p)


def test_overrides_are_typed(tmp_path):
    src = ROOT / "configs" / "pretrain" / "tiny_cpu.yaml"
    cfg = load_config(src, ["trainer.max_steps=7", "optim.lr=1e-3", "data.sources=[{assets: pretrain}]",
                            "seqlen_warmup.start=256", "seqlen_warmup.stage_steps=3"])
    assert cfg.trainer.max_steps == 7 and cfg.optim.lr == 1e-3
    assert cfg.data.sources == [AssetsSource("pretrain")]
    assert cfg.seqlen_warmup.start == 256
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(src, ["trainer.max_steps"])


@pytest.mark.parametrize("assignment, needle", [
    ("data.batch_size=0", "data.batch_size: expected a positive int, got 0"),
    ("optim.lr=-1", "optim.lr: expected a learning rate > 0, got -1.0"),
    ("optim.lr=.nan", "optim.lr: expected a learning rate > 0"),
    ("optim.warmup_steps=-5", "optim.warmup_steps: expected an int >= 0, got -5"),
    ("optim.weight_decay=-0.1", "optim.weight_decay: expected a number >= 0"),
    ("optim.eps=0", "optim.eps: expected a number > 0"),
    ("optim.betas=[0.9]", "optim.betas: expected two numbers in [0, 1)"),
    ("optim.betas=[0.9, 1.0]", "optim.betas: expected two numbers in [0, 1)"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio: expected a number in [0, 1]"),
    ("data.rc_prob=2", "data.rc_prob: expected a number in [0, 1], got 2.0"),
    ("data.max_n_frac=-0.5", "data.max_n_frac: expected a number in [0, 1]"),
    ("data.num_workers=-1", "data.num_workers: expected an int >= 0"),
    ("model.d_model=-3", "MambaConfig.d_model: expected a positive int"),
    ("trainer.threads=-1", "trainer.threads: expected a positive int"),
    ("trainer.seed=-1", "trainer.seed: expected an int in [0, 2**32 - 1], got -1"),
    ("trainer.grad_clip=-1", "trainer.grad_clip: expected a norm >= 0"),
    ("trainer.devices=0", "trainer.devices: expected a positive int, -1"),
    ("trainer.limit_val_batches=-2", "trainer.limit_val_batches: expected an int >= 0"),
    ("data.val_windows=-3", "data.val_windows: expected an int >= 0"),
    ("trainer.precision=fp9", "trainer.precision: expected one of auto, 32-true, bf16-mixed"),
    ("trainer.accelerator=tpu", "trainer.accelerator: expected one of auto, cpu, gpu, cuda, mps, got 'tpu'"),
    ("trainer.strategy=nonsense", "trainer.strategy: 'nonsense' is not one of Lightning's strategies; expected "
                                  "auto (DDP whenever there are several processes) or one of ddp,"),
])
def test_a_bad_value_from_set_names_the_set_not_the_file(assignment, needle, tmp_path):
    """Numbers that would fail only once Lightning runs (or train nonsense) stop at loading, and the
    message names the ``--set`` that gave them; the same value written in a file names the file."""
    src = ROOT / "configs" / "pretrain" / "tiny_cpu.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(src, ["trainer.max_steps=7", assignment])
    msg = str(err.value)
    assert msg.startswith(f"--set {assignment} (over {src})") and needle in msg, msg
    key, value = assignment.split("=", 1)
    doc = read_yaml(src)
    section, leaf = key.split(".")
    doc.setdefault(section, {})[leaf] = yaml.safe_load(value)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_config(bad, ["trainer.max_steps=7"])
    assert str(err.value).startswith(f"{bad}: ") and needle in str(err.value), str(err.value)
    # a later --set of the same key decides: the file's own value again loads
    good = to_plain(load_config(src))[section][leaf]
    assert load_config(src, [assignment, f"{key}={json.dumps(good)}"])


def test_a_zero_warmup_length_is_named_not_a_division_by_zero():
    src = ROOT / "configs" / "pretrain" / "tiny_cpu.yaml"
    for key in ("start", "stage_steps"):
        with pytest.raises(ConfigError, match=f"seqlen_warmup.{key}: expected a positive int, got 0"):
            load_config(src, ["seqlen_warmup.start=64", "seqlen_warmup.stage_steps=10", f"seqlen_warmup.{key}=0"])


def test_an_unknown_key_or_a_wrong_type_from_set_names_the_set(tmp_path):
    src = ROOT / "configs" / "pretrain" / "tiny_cpu.yaml"
    for assignment, needle in [("trainer.max_stepz=10", "trainer: unknown key(s) ['max_stepz']"),
                               ("data.seq_len=abc", "data.seq_len: expected int, got 'abc'"),
                               ("modle.d_model=5", "unknown key(s) ['modle']"),
                               ("trainer={max_steps: abc}", "trainer.max_steps: expected int")]:
        with pytest.raises(ConfigError) as err:
            load_config(src, ["trainer.max_steps=7", assignment])
        assert str(err.value).startswith(f"--set {assignment} (over {src}): {needle}"), str(err.value)
    # the same mistakes written in a file name the file, then the key (not "FILE.trainer")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {src}\ntrainer: {{max_stepz: 10}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, ["trainer.max_steps=7"])
    assert str(err.value).startswith(f"{bad}: trainer: unknown key(s) ['max_stepz']"), str(err.value)


def test_the_set_of_the_refused_key_is_named_not_one_its_advice_mentions():
    """A message about trainer.strategy that suggests more devices names the strategy's --set, not
    the devices' one given beside it."""
    src = ROOT / "configs" / "pretrain" / "tiny_cpu.yaml"
    sets = ["trainer.strategy=ddp_spawn", "trainer.devices=2", "trainer.accelerator=cpu"]
    with pytest.raises(ConfigError) as err:
        load_config(src, sets)
    assert str(err.value).startswith(f"--set trainer.strategy=ddp_spawn (over {src}): trainer.strategy"), str(err.value)
    assert "devices" in str(err.value)  # the advice that misled the old rule
    # a whole section given by a later --set: that --set, not the earlier one of the same key
    with pytest.raises(ConfigError) as err:
        load_config(src, ["trainer.max_steps=7", "trainer={max_steps: abc}"])
    msg = str(err.value)
    assert msg.startswith(f"--set trainer={{max_steps: abc}} (over {src}): trainer.max_steps"), msg


def test_sources_are_typed_and_bad_ones_name_file_and_key(tmp_path):
    src = ROOT / "configs" / "pretrain" / "tiny_cpu.yaml"
    cfg = load_config(src, ["data.sources=[{fetch: bacteria, splits: [train]}, {path: g.fa, split: val, id: g}]"])
    assert cfg.data.sources == [FetchSource("bacteria", splits=["train"]), PathSource("g.fa", split="val", id="g")]
    assert to_plain(cfg)["data"]["sources"] == [{"fetch": "bacteria", "splits": ["train"]},
                                                {"path": "g.fa", "split": "val", "id": "g"}]
    bad = {
        "[{asets: pretrain}]": r"tiny_cpu.yaml\): data.sources\[0\]: give exactly one of assets / fetch / manifest / "
                               r"path / files, got none \(unknown key\(s\) \['asets'\]\)",
        "[{assets: pretrain, path: x.fa}]": r"data.sources\[0\]: give exactly one of",
        "[{assets: pretrain}, {assets: everything}]": r"tiny_cpu.yaml\): data.sources\[1\].assets: must be one of",
        "[{assets: pretrain, dest: /tmp}]": r"data.sources\[0\]: unknown key\(s\) \['dest'\] for a assets source",
        "[{path: g.fa, split: training}]": r"data.sources\[0\].split: must be one of",
        "[{path: g.fa, split: {by: chromosome}}]": r"data.sources\[0\].split.by: must be one of \['contig', 'region', "
                                                   r"'tail'\]",
        "[{path: g.fa, split: {by: contig, tset: [x]}}]": r"data.sources\[0\].split: unknown key\(s\) \['tset'\]",
        "[{manifest: m.yaml, splits: [train, dev]}]": r"data.sources\[0\].splits: unknown split\(s\) \['dev'\]",
        "[{path: 3}]": r"data.sources\[0\].path: expected a string",
        "{assets: pretrain}": r"data.sources: expected a list",
    }
    for value, msg in bad.items():
        with pytest.raises(ConfigError, match=msg):
            load_config(src, [f"data.sources={value}"])


def test_build_corpus_takes_typed_sources_or_mappings():
    store, splits = build_corpus([AssetsSource("pretrain", splits=["train", "val"])])
    store2, splits2 = build_corpus([{"assets": "pretrain", "splits": ["train", "val"]}])
    assert store.names == store2.names and splits.train == splits2.train and splits.val == splits2.val
    assert splits.train and splits.val and not splits.test
    with pytest.raises(CorpusError, match=r"data.sources\[0\]: unknown key"):
        build_corpus([{"assets": "pretrain", "id": "x"}])
    assert parse_source(AssetsSource("genomes")) == AssetsSource("genomes")


def test_base_merges_relative_to_the_file_and_refuses_cycles(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text(yaml.safe_dump({
        "kind": "pretrain", "model": {"d_model": 8, "n_layer": 1, "vocab_size": 11},
        "data": {"seq_len": 256, "batch_size": 4}, "trainer": {"max_steps": 9, "log_every": 3}}))
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\ndata: {seq_len: 512}\nname: mid\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("base: mid.yaml\ntrainer: {max_steps: 20}\nmodel: {n_layer: 2}\n")
    cfg = load_config(tmp_path / "sub" / "leaf.yaml", ["trainer.log_every=5"])
    assert (cfg.name, cfg.data.seq_len, cfg.data.batch_size) == ("mid", 512, 4)
    assert (cfg.trainer.max_steps, cfg.trainer.log_every) == (20, 5)
    assert cfg.model.to_dict() == {"d_model": 8, "n_layer": 2, "vocab_size": 11}
    # a run directory gets the expanded config, which loads on its own
    plain = to_plain(cfg)
    assert "base" not in plain and to_plain(load_config(doc=plain)) == plain

    (tmp_path / "a.yaml").write_text("base: b.yaml\nkind: pretrain\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"b.yaml: base: a.yaml makes a cycle .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match=r"self.yaml: base: self.yaml makes a cycle"):
        load_config(tmp_path / "self.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"orphan.yaml: base: .*missing.yaml: no such file"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "badbase.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"badbase.yaml: base: expected a YAML file name"):
        load_config(tmp_path / "badbase.yaml")


def test_shipped_configs_are_found_from_anywhere(tmp_path, monkeypatch):
    assert configs_dir() == ROOT / "configs"
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("configs/pretrain/tiny_cpu.yaml") == ROOT / "configs" / "pretrain" / "tiny_cpu.yaml"
    assert load_config("configs/classify/species_tiny_cpu.yaml").name == "species_tiny_cpu"
    with pytest.raises(ConfigError, match="nope.yaml: no such file"):
        load_config("configs/pretrain/nope.yaml")


@pytest.mark.parametrize("assignment, needle", [
    ("head.pooling=median", "head.pooling: expected one of last, mean, max, got 'median'"),
    ("head.dropout=1.5", "head.dropout: expected a probability in [0, 1), got 1.5"),
    ("data.test_per_label=-1", "data.test_per_label: expected a positive int (or null: every file once), got -1"),
    ("data.val_per_label=0", "data.val_per_label: expected a positive int"),
    ("baselines=[4, 99]", "baselines: expected k-mer lengths in 1..12 (a 4**k table per label) for DNA, got 99"),
    ("baselines=[logspec]", "baselines: expected k-mer lengths in 1..12"),
    ("baselines=4", "baselines: expected list, got 4"),
])
def test_a_bad_classifier_value_stops_at_loading(assignment, needle):
    """Values the classifier would refuse only once its model is built, or after training at the test
    (the baselines, the test windows per label), stop when the config loads, naming the key."""
    src = ROOT / "configs" / "classify" / "species_tiny_cpu.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(src, [assignment])
    assert str(err.value).startswith(f"--set {assignment} (over {src})") and needle in str(err.value), str(err.value)
    assert load_config(src, ["data.test_per_label=null", "baselines=[]", "head.pooling=last"])
