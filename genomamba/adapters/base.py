"""The adapter contract: one object turns a modality's raw data into token ids and back.

Every adapter has a ``name`` (its key in the registry), a ``vocab_size``, a ``pad_id`` and a
``specials`` mapping, ``encode`` / ``decode``, ``encode_file`` (alias ``read_file``) and
``read_files`` for the modality's files, and ``to_json`` / ``from_json`` so that a trained model
directory records which adapter (and which settings) produced its tokens: ``save(directory)``
writes ``adapter.json`` there and ``genomamba.adapters.adapter_from_json(directory)`` rebuilds it.

Every id array an adapter returns is 1-D numpy of the adapter's ``dtype`` (the smallest integer
type torch handles that holds the vocabulary). Bad input raises a one-line ``ValueError`` that
names the argument or the file.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterable, Union

import numpy as np

from genomamba.files import write_text

PathLike = Union[str, os.PathLike]

ADAPTER_FILE = "adapter.json"
ADAPTER_TYPE = "genomamba.adapter"
FORMAT_VERSION = 1


class Adapter(ABC):
    """Base class of the modality adapters (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    dtype: ClassVar[type] = np.int64
    unit: ClassVar[str] = "token"  # what one data token is ("base", "byte", "sample"): names metrics

    @property
    def bits_key(self) -> str:
        """Metric name of the model's bits per data token: ``bpb`` (bits per base) for DNA,
        ``bits_per_byte`` for text, ``bits_per_sample`` for audio."""
        return "bpb" if self.unit == "base" else f"bits_per_{self.unit}"

    @property
    def data_ids(self) -> list:
        """The ids that carry data (every id but the specials): the targets a language model is scored on."""
        special = set(self.specials.values())
        return [i for i in range(self.vocab_size) if i not in special]

    # ------------------------------------------------------------------ vocabulary
    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids; every id lies in ``[0, vocab_size)``."""

    @property
    @abstractmethod
    def pad_id(self) -> int:
        """The id used to pad a batch to a common length."""

    @property
    def specials(self) -> dict:
        """``{token_name: id}`` of the non-data tokens (empty when every id carries data)."""
        return {}

    # ------------------------------------------------------------------ tokens
    @abstractmethod
    def encode(self, data: Any) -> np.ndarray:
        """The modality's in-memory data (string, waveform, ...) to a 1-D id array."""

    @abstractmethod
    def decode(self, ids: Any) -> Any:
        """A 1-D id array (numpy, torch or a list) back to the modality's data."""

    @abstractmethod
    def encode_file(self, path: PathLike) -> np.ndarray:
        """One file of this modality to a 1-D id array."""

    def read_file(self, path: PathLike) -> np.ndarray:
        """Same as :meth:`encode_file`."""
        return self.encode_file(path)

    def read_files(self, paths: Iterable[PathLike]) -> list:
        """:meth:`encode_file` of each path, in order."""
        if isinstance(paths, (str, os.PathLike)):
            raise ValueError(f"paths must be a list of files, got the single path {str(paths)!r}")
        return [self.encode_file(p) for p in paths]

    # ------------------------------------------------------------------ settings / JSON
    @abstractmethod
    def settings(self) -> dict:
        """The constructor arguments that rebuild this adapter (JSON-serialisable)."""

    def to_dict(self) -> dict:
        return {
            "type": ADAPTER_TYPE,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "settings": self.settings(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Adapter":
        """Rebuild from :meth:`to_dict` output; the recorded vocabulary must match what is built."""
        if not isinstance(d, dict) or d.get("type") != ADAPTER_TYPE:
            got = d.get("type") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a genomamba adapter config: type={got!r}")
        if d.get("name") != cls.name:
            raise ValueError(f"adapter config is for {d.get('name')!r}, not {cls.name!r}")
        settings = d.get("settings") or {}
        if not isinstance(settings, dict):
            raise ValueError(f"adapter config 'settings' must be an object, got {type(settings).__name__}")
        adapter = cls(**settings)
        for key in ("vocab_size", "pad_id"):
            if key in d and d[key] != getattr(adapter, key):
                # Embedding rows are indexed by these ids: a silent change would scramble a model.
                raise ValueError(
                    f"adapter config records {key}={d[key]} but {cls.name!r} with these settings "
                    f"builds {key}={getattr(adapter, key)}"
                )
        return adapter

    @classmethod
    def from_json(cls, text: str) -> "Adapter":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"adapter config is not valid JSON ({e})") from None
        return cls.from_dict(d)

    def save(self, directory: PathLike) -> Path:
        """Write ``adapter.json`` into ``directory`` (created if needed); returns its path."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        out = path / ADAPTER_FILE
        write_text(out, self.to_json() + "\n")  # atomically: a reader never sees half a file
        return out

    # ------------------------------------------------------------------ helpers
    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.settings() == self.settings()

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(self.settings(), sort_keys=True)))

    def check_ids(self, ids: Any, arg: str = "ids") -> np.ndarray:
        """``ids`` as a 1-D int64 array, every value in ``[0, vocab_size)``; ValueError otherwise."""
        arr = to_numpy(ids)
        if arr.ndim != 1:
            raise ValueError(f"{self.name}.decode: {arg} must be 1-D, got shape {tuple(arr.shape)}")
        if arr.size == 0:
            return arr.astype(np.int64)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{self.name}.decode: {arg} must be integer token ids, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            pos = int(np.flatnonzero(arr == bad)[0])
            raise ValueError(
                f"{self.name}.decode: {arg} has id {bad} at position {pos}, outside [0, {self.vocab_size})"
            )
        return arr.astype(np.int64, copy=False)


def to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array, a torch tensor (any device) or a (nested) list."""
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
