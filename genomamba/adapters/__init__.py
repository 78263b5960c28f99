"""Modality adapters: one Mamba backbone on DNA, text and audio tokens.

>>> from genomamba.adapters import get_adapter
>>> text = get_adapter("text")              # UTF-8 bytes, 260 ids
>>> audio = get_adapter("audio")            # 16 kHz mono, 8-bit mu-law, 256 ids
>>> dna = get_adapter("dna", iupac="n")     # the DNA tokenizer, 11 ids

``get_adapter(name, **settings)`` builds one; ``adapter.save(model_dir)`` records it in
``adapter.json`` and ``adapter_from_json(model_dir)`` rebuilds the same adapter.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Union

from genomamba.adapters.audio import MuLawAudioAdapter, mu_law_decode, mu_law_encode
from genomamba.adapters.base import ADAPTER_FILE, Adapter
from genomamba.adapters.dna import DNAAdapter
from genomamba.adapters.text import ByteTextAdapter
from genomamba.files import read_text

ADAPTERS: dict = {
    DNAAdapter.name: DNAAdapter,
    ByteTextAdapter.name: ByteTextAdapter,
    MuLawAudioAdapter.name: MuLawAudioAdapter,
}

__all__ = [
    "ADAPTERS",
    "ADAPTER_FILE",
    "Adapter",
    "ByteTextAdapter",
    "DNAAdapter",
    "MuLawAudioAdapter",
    "adapter_from_json",
    "get_adapter",
    "mu_law_decode",
    "mu_law_encode",
]


def _settings_of(cls: type) -> list:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def get_adapter(name: str, **settings: Any) -> Adapter:
    """The adapter registered as ``name`` (``"dna"``, ``"text"``, ``"audio"``) built with ``settings``."""
    if not isinstance(name, str) or name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; known adapters: {sorted(ADAPTERS)}")
    cls = ADAPTERS[name]
    allowed = _settings_of(cls)
    for key in settings:
        if key not in allowed:
            raise ValueError(f"unknown setting {key!r} for the {name!r} adapter; it takes {allowed}")
    return cls(**settings)


def adapter_from_json(source: Union[str, dict, os.PathLike]) -> Adapter:
    """Rebuild an adapter from ``to_json()`` text, its dict, an ``adapter.json`` file or the folder holding it."""
    where = "adapter config"  # what the messages name: the file, where one was read
    if isinstance(source, dict):
        d = source
    else:
        text = None
        if isinstance(source, str) and source.lstrip().startswith("{"):
            text = source
        else:
            path = Path(source)
            if path.is_dir():
                path = path / ADAPTER_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no adapter config (expected {ADAPTER_FILE})")
            text, where = read_text(path), str(path)
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
    name = d.get("name") if isinstance(d, dict) else None
    if name not in ADAPTERS:
        raise ValueError(f"{where}: unknown adapter {name!r}; known adapters: {sorted(ADAPTERS)}")
    settings = d.get("settings") or {}
    if isinstance(settings, dict):
        allowed = _settings_of(ADAPTERS[name])
        for key in settings:
            if key not in allowed:
                raise ValueError(f"{where}: unknown setting {key!r} for the {name!r} adapter; it takes {allowed}")
    return ADAPTERS[name].from_dict(d)
