"""Typed run configs for ``genomamba pretrain`` / ``genomamba classify``, and their loader.

A config is a YAML file whose top-level ``kind:`` picks the dataclass (``PretrainConfig`` or
``ClassifyConfig``). Loading goes: the file, merged over its ``base:`` file (a path relative to the
file; bases may have bases; mappings merge key by key, anything else is replaced), then
``--set section.key=value`` overrides (values parsed as YAML), then a type check of every key.
Unknown keys, wrong types and bad values raise ``ConfigError`` naming the file and the key.

The configs shipped with the package live in ``configs/`` of a checkout and in
``genomamba/_configs`` of an installed wheel; ``configs_dir()`` finds whichever is there.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Union

import yaml

from genomamba.adapters import Adapter, get_adapter
from genomamba.baselines import MAX_K
from genomamba.config import MambaConfig
from genomamba.data.augment import AudioAugment
from genomamba.data.corpus import AssetsSource, CorpusError, Source, parse_source
from genomamba.errors import UserError
from genomamba.files import read_text
from genomamba.lit.callbacks import _is_pow2_multiple
from genomamba.lit.optim import OptimConfig
from genomamba.models.heads import POOLINGS

_PKG = Path(__file__).resolve().parents[1]
BASE_KEY = "base"


class ConfigError(UserError, ValueError):
    """A bad config file / override; the message names the file and the key."""


# ----------------------------------------------------------------------------- shipped configs
def configs_dir() -> Path:
    """``configs/`` of the checkout if this is one, else the copy installed as ``genomamba/_configs``."""
    for root in (_PKG.parent / "configs", _PKG / "_configs"):
        if (root / "pretrain" / "tiny_cpu.yaml").is_file():
            return root
    raise FileNotFoundError(f"the shipped configs are missing (looked in {_PKG.parent / 'configs'} and "
                            f"{_PKG / '_configs'})")


def shipped_config(name: str) -> Path:
    """A shipped config by its name under ``configs/``, e.g. ``pretrain/tiny_cpu.yaml``."""
    p = configs_dir() / name
    if not p.is_file():
        raise FileNotFoundError(f"no shipped config {name!r} in {configs_dir()}")
    return p


def resolve_config_path(path) -> Path:
    """``path`` as given if it exists; else, for ``configs/<name>`` (or ``<name>``), the shipped copy."""
    p = Path(path)
    if p.exists():
        return p
    parts = p.parts[1:] if p.parts[:1] == ("configs",) else p.parts
    try:
        shipped = configs_dir().joinpath(*parts) if parts and not p.is_absolute() else None
    except FileNotFoundError:
        shipped = None
    return shipped if shipped is not None and shipped.is_file() else p


# ----------------------------------------------------------------------------- typed configs
class _ModelConfigBase:
    """Only the fields set in the YAML count: the rest take MambaConfig's defaults (``vocab_size``:
    the tokenizer's), and the resolved config lists just what was set."""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def to_mamba(self, **defaults) -> MambaConfig:
        return MambaConfig.from_dict({**defaults, **self.to_dict()})


def _optional_fields_of(cls) -> list:
    hints = typing.get_type_hints(cls)
    return [(f.name, Optional[hints[f.name]], field(default=None)) for f in dataclasses.fields(cls)]


# The ``model:`` section: MambaConfig's fields, each optional (None = not set).
ModelConfig = dataclasses.make_dataclass("ModelConfig", _optional_fields_of(MambaConfig), bases=(_ModelConfigBase,),
                                         namespace={"__module__": __name__, "__doc__": _ModelConfigBase.__doc__})


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    # wall-clock cap on training (Lightning Timer), over the whole run: its clock is in the checkpoint,
    # so resumes count what was used before; training stops cleanly
    max_minutes: Optional[float] = None
    budget_minutes: Optional[float] = None  # plan max_steps from measured speed so the LR schedule fits
    val_every: int = 200  # optimizer steps between validations
    limit_val_batches: Optional[int] = None
    precision: str = "auto"  # auto: bf16-mixed on GPU (fp32 params), 32-true on CPU
    accelerator: str = "auto"
    devices: Any = 1
    grad_clip: float = 1.0
    accumulate: int = 1
    log_every: int = 10
    ckpt_every: int = 100
    seed: int = 0
    progress: bool = True
    gradient_checkpointing: bool = False
    threads: Optional[int] = None  # torch.set_num_threads on CPU
    num_nodes: int = 1  # machines; processes = devices x num_nodes (torchrun / SLURM through Lightning)
    strategy: str = "auto"  # auto: DDP whenever there is more than one process; or ddp, fsdp, ...
    context_parallel: int = 1  # P: each sequence split along its length over P processes (exact)
    # read each training window in segments of this many tokens, carrying the recurrent states
    # forward; the backward recomputes one segment at a time (exact; memory of one segment)
    segment_len: Optional[int] = None
    # true: every layer keeps its normed input, conv output and delta for the backward instead of
    # rebuilding them there (GPUs rebuild them by default, to reach longer windows): faster, more
    # memory (README, "keeps no copy"); same results either way
    keep_activations: bool = False
    # which weights a run ends with (saved to model/, tested): "best", those of the lowest validation
    # loss seen (the last ones when nothing was validated); "last", those of the final step
    keep: str = "best"
    # exponential moving average of the weights (e.g. 0.999; null: off), updated after every
    # optimizer step from step ema_start on: validation scores the averaged weights, and the run
    # ends with them (saved to model/ and tested; trainer.keep then does not apply)
    ema_decay: Optional[float] = None
    ema_start: int = 0
    # true: the k-th update after the first uses min(ema_decay, (1 + k) / (10 + k)), so a short run's
    # average is not dominated by its first steps; false: ema_decay throughout
    ema_warmup: bool = True


@dataclass
class SeqLenWarmupConfig:
    start: int = 1024
    stage_steps: int = 1000


@dataclass
class StreamTestConfig:
    """After the tiled test: read each held-out sequence whole, as one stream carrying the states."""
    chunk_len: int = 8192  # tokens per forward (the states carry across chunks, so the score does not change)
    # > 0: the model also learns while it reads (one SGD step per chunk after scoring it). Several
    # values: the one that scores best on the validation split is used on the test split
    adapt_lr: List[float] = field(default_factory=list)


@dataclass
class PretrainDataConfig:
    sources: List[Source] = field(default_factory=lambda: [AssetsSource("pretrain")])
    seq_len: int = 1024
    batch_size: int = 8
    train_samples: int = 100_000
    val_windows: Optional[int] = 64
    test_windows: Optional[int] = None
    rc_prob: float = 0.5
    max_n_frac: float = 0.1
    num_workers: int = 0


@dataclass
class PretrainConfig:
    kind: str = "pretrain"
    name: str = ""
    description: str = ""
    # the modality: "dna" (default), "text", "audio", or a mapping {name: audio, sample_rate: 8000, ...}
    adapter: Any = "dna"
    model: Optional[ModelConfig] = None
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seqlen_warmup: Optional[SeqLenWarmupConfig] = None
    test_after_fit: bool = True
    stream_test: Optional[StreamTestConfig] = None
    run_dir: str = "runs/pretrain"


@dataclass
class HeadConfig:
    pooling: str = "mean"
    freeze_backbone: bool = False
    dropout: float = 0.0
    tta_rc: bool = True  # evaluate on both strands (mean class probability of window + reverse complement)
    # audio only: a spectral front end (normalised log-mel frames, see genomamba.models.frontend), e.g.
    # {n_mels: 40, fmax: 4000}; null: the backbone reads the samples' token embeddings
    frontend: Optional[dict] = None


@dataclass
class SpeciesDataConfig:
    manifest: str = "assets"  # a path, "assets" (shipped slices) or "fetch:bacteria" (full genomes)
    length: int = 1024  # evaluation (and, by default, training) window length
    train_length: Optional[int] = None  # shorter training windows: more windows per second on a CPU
    batch_size: int = 32
    train_samples: int = 20_000
    val_per_label: Optional[int] = 100  # None: every val file once (whole clips)
    test_per_label: Optional[int] = 200  # None: every test file once
    rc_prob: float = 0.5
    num_workers: int = 0
    # audio only: random speed, shift, EQ, band limits, gain and noise on the training waveforms
    # (genomamba.data.augment.AudioAugment; null = off). Validation and test clips are never augmented.
    augment: Optional[AudioAugment] = None


@dataclass
class ClassifyConfig:
    kind: str = "classify"
    name: str = ""
    description: str = ""
    adapter: Any = "dna"  # as in PretrainConfig; the manifest's files are read by it
    # a pretrained model dir (save_pretrained), or a classifier's (its head is kept when the labels match);
    # else model: from scratch
    init_from: Optional[str] = None
    model: Optional[ModelConfig] = None
    head: HeadConfig = field(default_factory=HeadConfig)
    data: SpeciesDataConfig = field(default_factory=SpeciesDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    baselines: list = field(default_factory=lambda: [4])  # k of the k-mer NB baselines scored at test
    run_dir: str = "runs/classify"


KINDS = {"pretrain": PretrainConfig, "classify": ClassifyConfig}


# ----------------------------------------------------------------------------- adapters
def adapter_of(cfg, where: str = "config") -> Adapter:
    """The config's modality adapter, built from ``adapter:`` (a name or ``{name: ..., setting: ...}``)."""
    spec = cfg.adapter
    if isinstance(spec, str):
        name, settings = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
        name, settings = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ConfigError(f"{where}: adapter: expected a name (dna, text, audio) or a mapping with name:, got {spec!r}")
    try:
        return get_adapter(name, **settings)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: adapter: {e}") from None


def _check_adapter_options(cfg, where: str) -> None:
    """Refuse the DNA-only options (reverse complement) for another modality, naming the key."""
    adapter = adapter_of(cfg, where)
    frontend = cfg.head.frontend if cfg.kind == "classify" else None
    if frontend is not None:
        if adapter.name != "audio":
            raise ConfigError(f"{where}: head.frontend: the spectral front end reads audio clips, not the "
                              f"{adapter.name!r} adapter's tokens; remove it (or set it to null)")
        if not isinstance(frontend, dict):
            raise ConfigError(f"{where}: head.frontend: expected a mapping of settings (e.g. {{n_mels: 40}}) or "
                              f"null, got {frontend!r}")
        from genomamba.models.frontend import SpectralFrontEnd, with_adapter

        try:
            SpectralFrontEnd.from_config(8, with_adapter(frontend, adapter.sample_rate, adapter.mu))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: head.{e}") from None
    augment = getattr(cfg.data, "augment", None)
    if augment is not None:
        if adapter.name != "audio":
            raise ConfigError(f"{where}: data.augment: waveform augmentation is audio-only; remove it (or set it to "
                              f"null) for the {adapter.name!r} adapter")
        try:
            augment.check(adapter.sample_rate, prefix="data.augment")
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    if adapter.name == "dna":
        if cfg.kind == "classify":  # k-mer lengths, scored after training: a bad one would fail only then
            for k in cfg.baselines:
                if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
                    raise ConfigError(f"{where}: baselines: expected k-mer lengths in 1..{MAX_K} (a 4**k table "
                                      f"per label) for DNA, got {k!r}")
        return
    hint = f"reverse complement is DNA-only; set it to 0 / false for the {adapter.name!r} adapter"
    if cfg.data.rc_prob > 0:
        raise ConfigError(f"{where}: data.rc_prob: {hint}")
    if cfg.kind == "classify" and cfg.head.tta_rc:
        raise ConfigError(f"{where}: head.tta_rc: {hint}")
    if cfg.kind == "classify" and any(b != "logspec" for b in cfg.baselines):
        raise ConfigError(f"{where}: baselines: the k-mer baselines are DNA-only; use [logspec] (audio) or []")
    if cfg.model is not None and cfg.model.vocab_size is not None and cfg.model.vocab_size < adapter.vocab_size:
        raise ConfigError(f"{where}: model.vocab_size: {cfg.model.vocab_size} is smaller than the {adapter.name!r} "
                          f"adapter's {adapter.vocab_size} tokens (leave it out to use the adapter's)")


# ----------------------------------------------------------------------------- type checking
def _type_name(tp) -> str:
    return getattr(typing.get_origin(tp) or tp, "__name__", str(tp))


def _check_type(value, tp, where: str):
    if tp is Any:
        return value
    if tp is Source:
        try:
            return parse_source(value, where)
        except CorpusError as e:
            raise ConfigError(str(e)) from None
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _check_type(value, inner[0], where)
        for a in inner:
            try:
                return _check_type(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in inner)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is list and typing.get_args(tp):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "3e-3" as a string
        except ValueError:
            pass
    base = origin or tp
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an int, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(f"{where}: expected {getattr(base, '__name__', base)}, got {value!r}")
    return value


def from_dict(cls, d, where: str, root: bool = False):
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types (naming ``where``).
    ``root``: ``where`` is the file itself, so keys are named after it as ``FILE: section.key``, not
    joined to the file name with a dot."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    return cls(**{k: _check_type(v, hints[k], f"{where}: {k}" if root else f"{where}.{k}") for k, v in d.items()})


def to_plain(cfg) -> dict:
    """A config as plain YAML-ready data (the model section and sources list only what is set)."""

    def plain(x):
        if dataclasses.is_dataclass(x) and hasattr(x, "to_dict"):
            return x.to_dict()
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return copy.deepcopy(plain(cfg))


# trainer.accelerator: what genomamba's kernels and Lightning run on here (auto: a GPU when there is one)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _check_parallel(cfg, where: str) -> None:
    """The multi-process keys: positive sizes, and a context-parallel size that divides the processes
    (when ``devices`` is a count) and the training windows."""
    t = cfg.trainer
    if t.keep not in ("best", "last"):
        raise ConfigError(f"{where}: trainer.keep: expected best or last, got {t.keep!r}")
    if t.num_nodes < 1:
        raise ConfigError(f"{where}: trainer.num_nodes: expected >= 1, got {t.num_nodes}")
    if t.accelerator not in ACCELERATORS:
        raise ConfigError(f"{where}: trainer.accelerator: expected one of {', '.join(ACCELERATORS)}, "
                          f"got {t.accelerator!r}")
    if t.strategy != "auto" and "spawn" not in str(t.strategy).lower():
        from pytorch_lightning.strategies import StrategyRegistry

        known = [n for n in StrategyRegistry.available_strategies() if "spawn" not in n]
        if t.strategy not in known:
            raise ConfigError(f"{where}: trainer.strategy: {t.strategy!r} is not one of Lightning's strategies; "
                              f"expected auto (DDP whenever there are several processes) or one of {', '.join(known)}")
    if "spawn" in str(t.strategy).lower():
        # run under ddp_spawn, the validation reported twice its bases and the run no throughput
        raise ConfigError(f"{where}: trainer.strategy={t.strategy}: spawn-launched strategies are not supported "
                          "(their metrics are counted wrong); use ddp, the default with several devices")
    if t.ema_decay is not None:
        if isinstance(t.ema_decay, bool) or not isinstance(t.ema_decay, (int, float)) or not 0 < t.ema_decay < 1:
            raise ConfigError(f"{where}: trainer.ema_decay: expected a number in (0, 1) (e.g. 0.999) or null, "
                              f"got {t.ema_decay!r}")
        if "fsdp" in str(t.strategy).lower():
            raise ConfigError(f"{where}: trainer.ema_decay: weight averaging needs whole weights on every "
                              "process; it does not work with the sharded strategy fsdp")
    if isinstance(t.ema_start, bool) or not isinstance(t.ema_start, int) or t.ema_start < 0:
        raise ConfigError(f"{where}: trainer.ema_start: expected a step >= 0, got {t.ema_start!r}")
    if t.keep_activations and t.gradient_checkpointing:
        raise ConfigError(f"{where}: trainer.keep_activations and trainer.gradient_checkpointing do not combine: "
                          "checkpointed layers keep nothing and compute every activation again")
    seg = t.segment_len
    if seg is not None:
        if isinstance(seg, bool) or not isinstance(seg, int) or seg < 1:
            raise ConfigError(f"{where}: trainer.segment_len: expected a positive int (tokens) or null, got {seg!r}")
        if cfg.kind != "pretrain":
            raise ConfigError(f"{where}: trainer.segment_len: only pretraining reads windows in segments")
        if t.context_parallel > 1:
            raise ConfigError(f"{where}: trainer.segment_len and trainer.context_parallel={t.context_parallel} "
                              "do not combine; each rank already holds one slice of the window")
    p = t.context_parallel
    if p < 1:
        raise ConfigError(f"{where}: trainer.context_parallel: expected >= 1, got {p}")
    if p == 1:
        return
    if cfg.kind != "pretrain":
        raise ConfigError(f"{where}: trainer.context_parallel: only pretraining splits sequences over processes")
    if isinstance(t.devices, int) and not isinstance(t.devices, bool) and (t.devices * t.num_nodes) % p:
        raise ConfigError(f"{where}: trainer.context_parallel={p} must divide the number of processes, "
                          f"trainer.devices x trainer.num_nodes = {t.devices * t.num_nodes}")
    lengths = [("data.seq_len", cfg.data.seq_len)]
    if cfg.seqlen_warmup is not None:
        lengths.append(("seqlen_warmup.start", cfg.seqlen_warmup.start))
    halo = (cfg.model.to_mamba().d_conv - 1) if cfg.model is not None else 0
    for key, n in lengths:
        if n % p:
            raise ConfigError(f"{where}: {key}={n} must be a multiple of trainer.context_parallel={p} "
                              "(every rank takes an equal slice)")
        if n // p < max(1, halo):
            raise ConfigError(f"{where}: {key}={n} over trainer.context_parallel={p} gives slices of {n // p} "
                              f"tokens, shorter than the conv's {halo}-token halo; use fewer ranks or longer windows")


# ----------------------------------------------------------------------------- loading
def apply_override(doc: dict, assignment: str) -> None:
    """``a.b.c=value`` (value parsed as YAML) into the nested mapping ``doc``."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({e})") from None
    node = doc
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"--set {assignment!r}: {p!r} is not a section")
        node = node[p]
    node[parts[-1]] = value


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge key by key, anything else (lists too) is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _yaml_where(e: yaml.YAMLError) -> str:
    """`` at line L, column C: what the parser found`` on one line (PyYAML's own text spans several)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
    return f"{where}: {what}" if what else where or f" ({' '.join(str(e).split())})"


def _read_mapping(path: Path, label: str) -> dict:
    if not path.exists():
        raise ConfigError(f"{label}: no such file")
    try:
        doc = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML{_yaml_where(e)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return doc


def expand_base(doc: dict, origin: Optional[Path] = None, chain: tuple = ()) -> dict:
    """``doc`` merged over its ``base:`` file (resolved relative to ``origin``'s folder), recursively."""
    doc = dict(doc)
    if BASE_KEY not in doc:
        return doc
    where = str(origin) if origin else "config"
    name = doc.pop(BASE_KEY)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: base: expected a YAML file name, got {name!r}")
    base_path = ((origin.parent if origin else Path.cwd()) / name).resolve()
    chain = chain + ((origin.resolve(),) if origin else ())
    if base_path in chain:
        loop = " -> ".join(str(p) for p in chain[chain.index(base_path):] + (base_path,))
        raise ConfigError(f"{where}: base: {name} makes a cycle ({loop})")
    base = _read_mapping(base_path, f"{where}: base: {base_path}")
    return deep_merge(expand_base(base, base_path, chain), doc)


def read_yaml(path) -> dict:
    """A config file as one mapping, its ``base:`` chain merged in."""
    path = Path(path)
    return expand_base(_read_mapping(path, f"--config {path}"), path)


def load_config(path=None, overrides=(), kind: Optional[str] = None, doc: Optional[dict] = None):
    """YAML file or mapping (+ overrides) -> PretrainConfig / ClassifyConfig, chosen by ``kind:``.

    ``path`` may name a shipped config (``configs/pretrain/tiny_cpu.yaml``) from any folder."""
    if doc is None:
        path = resolve_config_path(path)
        doc = read_yaml(path)
    else:
        doc = expand_base(copy.deepcopy(doc), Path(path) if path else None)
    for o in overrides:
        apply_override(doc, o)
    where = str(path) if path else "config"
    try:
        return _build(doc, kind, where)
    except ConfigError as e:
        raise _blame_override(e, where, overrides) from None


def _modality_defaults(doc: dict, kind: str) -> None:
    """Text and audio configs: the DNA-only keys a config leaves out default to off (no reverse
    complement, no k-mer baselines) instead of being refused; keys it gives are still checked."""
    a = doc.get("adapter", "dna")
    name = a if isinstance(a, str) else (a.get("name") if isinstance(a, dict) else None)
    if name in (None, "dna"):
        return
    if isinstance(doc.get("data", {}), dict):
        doc.setdefault("data", {}).setdefault("rc_prob", 0.0)
    if kind == "classify":
        if isinstance(doc.get("head", {}), dict):
            doc.setdefault("head", {}).setdefault("tta_rc", False)
        doc.setdefault("baselines", [])


def _blame_override(e: ConfigError, where: str, overrides) -> ConfigError:
    """An error about a key that a ``--set`` gave names that ``--set`` (the file did not say it): the
    message is about the key itself (preferred: another ``--set``'s name may appear in its advice), or
    about a section of it and mentions the key's last part, or refuses a top-level key only a ``--set``
    gave."""
    msg = str(e)
    if not msg.startswith(f"{where}: "):
        return e
    rest = msg[len(where) + 2:]
    said = rest.split("; known: ")[0]  # an unknown-key error lists every known key after this
    sets = [(o.strip(), o.split("=", 1)[0].strip().split(".")) for o in reversed(list(overrides))]
    # the last --set of a key is the one that counts, hence reversed
    for o, parts in sets:
        key = ".".join(parts)
        if rest.startswith(key) and rest[len(key):len(key) + 1] in (":", "=", " ", ".", "[", ""):
            return ConfigError(f"--set {o} (over {where}): {rest}")
    for o, parts in sets:
        if said.startswith("unknown key") and repr(parts[0]) in said:  # a misspelt top-level key
            return ConfigError(f"--set {o} (over {where}): {rest}")
        for n in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:n])
            if rest.startswith(prefix) and rest[len(prefix):len(prefix) + 1] in (":", "=", " ", ".", ""):
                if parts[-1] in said[len(prefix):]:
                    return ConfigError(f"--set {o} (over {where}): {rest}")
                break
    return e


def _build(doc: dict, kind: Optional[str], where: str):
    k = doc.get("kind", kind)
    if k not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {sorted(KINDS)}, got {k!r}")
    if kind is not None and k != kind:
        raise ConfigError(f"{where}: is a {k!r} config, expected {kind!r}")
    _modality_defaults(doc, k)
    cfg = from_dict(KINDS[k], doc, where, root=True)
    if cfg.model is not None and not cfg.model.to_dict():
        cfg.model = None  # `model: {}` is no model
    if cfg.model is not None:
        try:
            cfg.model.to_mamba()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: model: {e}") from None
    if k == "pretrain" and cfg.model is None:
        raise ConfigError(f"{where}: model: missing (MambaConfig fields, e.g. d_model, n_layer, vocab_size)")
    if k == "pretrain" and cfg.seqlen_warmup is not None:
        for key in ("start", "stage_steps"):
            v = getattr(cfg.seqlen_warmup, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{where}: seqlen_warmup.{key}: expected a positive int, got {v!r}")
        if not _is_pow2_multiple(cfg.data.seq_len, cfg.seqlen_warmup.start):
            raise ConfigError(f"{where}: seqlen_warmup.start={cfg.seqlen_warmup.start} must divide data.seq_len="
                              f"{cfg.data.seq_len} by a power of two")
    _check_parallel(cfg, where)
    if k == "pretrain" and cfg.stream_test is not None:
        st = cfg.stream_test
        if isinstance(st.chunk_len, bool) or not isinstance(st.chunk_len, int) or st.chunk_len < 1:
            raise ConfigError(f"{where}: stream_test.chunk_len: expected a positive int, got {st.chunk_len!r}")
        for lr in st.adapt_lr:
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
                raise ConfigError(f"{where}: stream_test.adapt_lr: expected learning rates > 0, got {lr!r}")
    if k == "classify" and cfg.model is None and not cfg.init_from:
        raise ConfigError(f"{where}: give init_from (a pretrained model dir) or model (train from scratch)")
    _check_ranges(cfg, where)
    _check_adapter_options(cfg, where)
    return cfg


# trainer.precision: auto (bf16-mixed on a GPU, 32-true on CPU) or the Lightning setting it passes on
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def _check_ranges(cfg, where: str) -> None:
    """Numbers that must be positive (a 0 or negative step count would save an untrained model)."""
    t, d = cfg.trainer, cfg.data
    positive = {"trainer.max_steps": t.max_steps, "trainer.val_every": t.val_every, "trainer.log_every": t.log_every,
                "trainer.ckpt_every": t.ckpt_every, "trainer.accumulate": t.accumulate,
                "data.batch_size": d.batch_size, "data.train_samples": d.train_samples}
    if cfg.kind == "pretrain":
        positive["data.seq_len"] = d.seq_len
    else:
        positive["data.length"] = d.length
        if d.train_length is not None:
            positive["data.train_length"] = d.train_length
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"{where}: {key}: expected a positive int, got {v}")
    for key, v in (("trainer.max_minutes", t.max_minutes), ("trainer.budget_minutes", t.budget_minutes)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{where}: {key}: expected a positive number of minutes, got {v}")
    if d.num_workers < 0:
        raise ConfigError(f"{where}: data.num_workers: expected an int >= 0, got {d.num_workers}")
    counts = {"trainer.limit_val_batches": t.limit_val_batches}
    if cfg.kind == "pretrain":
        counts.update({"data.val_windows": d.val_windows, "data.test_windows": d.test_windows})
    for key, v in counts.items():
        if v is not None and v < 0:
            raise ConfigError(f"{where}: {key}: expected an int >= 0 (or null), got {v}")
    if t.threads is not None and t.threads < 1:
        raise ConfigError(f"{where}: trainer.threads: expected a positive int (or null: torch's default), "
                          f"got {t.threads}")
    if not 0 <= t.seed < 2 ** 32:
        raise ConfigError(f"{where}: trainer.seed: expected an int in [0, 2**32 - 1], got {t.seed}")
    if not (math.isfinite(t.grad_clip) and t.grad_clip >= 0):
        raise ConfigError(f"{where}: trainer.grad_clip: expected a norm >= 0 (0: no clipping), got {t.grad_clip}")
    if isinstance(t.devices, int) and not isinstance(t.devices, bool) and (t.devices == 0 or t.devices < -1):
        raise ConfigError(f"{where}: trainer.devices: expected a positive int, -1 (every device), 'auto' or a "
                          f"list of device indices, got {t.devices}")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"{where}: trainer.precision: expected one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    if cfg.kind == "classify":
        _check_classify(cfg, where)
    fractions = {"data.rc_prob": d.rc_prob}
    if cfg.kind == "pretrain":
        fractions["data.max_n_frac"] = d.max_n_frac
    _check_optim(cfg.optim, where, fractions)


def _check_classify(cfg, where: str) -> None:
    """The classifier's head and evaluation counts, which would otherwise fail only when the model is
    built or, for the counts, after training, at the test (the baselines: :func:`_check_adapter_options`)."""
    h, d = cfg.head, cfg.data
    if h.pooling not in POOLINGS:
        raise ConfigError(f"{where}: head.pooling: expected one of {', '.join(POOLINGS)}, got {h.pooling!r}")
    if isinstance(h.dropout, bool) or not isinstance(h.dropout, (int, float)) or not 0 <= h.dropout < 1:
        raise ConfigError(f"{where}: head.dropout: expected a probability in [0, 1), got {h.dropout!r}")
    for key, v in (("data.val_per_label", d.val_per_label), ("data.test_per_label", d.test_per_label)):
        if v is not None and v < 1:
            raise ConfigError(f"{where}: {key}: expected a positive int (or null: every file once), got {v}")


def _check_optim(o: OptimConfig, where: str, fractions: dict) -> None:
    """The optimizer's numbers, and probabilities / fractions in [0, 1], before any training starts."""
    def bad(key, want, v):
        raise ConfigError(f"{where}: {key}: expected {want}, got {v!r}")

    if not (math.isfinite(o.lr) and o.lr > 0):
        bad("optim.lr", "a learning rate > 0", o.lr)
    for key, v in (("optim.weight_decay", o.weight_decay), ("optim.head_lr_mult", o.head_lr_mult)):
        if not (math.isfinite(v) and v >= 0):
            bad(key, "a number >= 0", v)
    if not (math.isfinite(o.eps) and o.eps > 0):
        bad("optim.eps", "a number > 0 (e.g. 1e-8)", o.eps)
    if o.warmup_steps < 0:
        bad("optim.warmup_steps", "an int >= 0", o.warmup_steps)
    fractions = {**fractions, "optim.min_lr_ratio": o.min_lr_ratio}
    for key, v in fractions.items():
        if not (math.isfinite(v) and 0 <= v <= 1):
            bad(key, "a number in [0, 1]", v)
    betas = o.betas
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        bad("optim.betas", "two numbers in [0, 1), e.g. [0.9, 0.95]", betas)
