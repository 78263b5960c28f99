"""DNA adapter: the package's character-level :class:`~genomamba.tokenizers.dna.DNATokenizer` behind
the common adapter interface. Ids are exactly the tokenizer's (uint8), so a model trained through
either path reads the other's tokens.

``encode_file`` reads FASTA or GenBank (plain or compressed, as ``genomamba.data.read_records``
does): one record's ids with ``record=NAME``, otherwise every record in file order with ``<eos>``
between consecutive records. ``encode_records`` returns ``{name: ids}``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from genomamba.adapters.base import Adapter, PathLike
from genomamba.data.fasta import read_records
from genomamba.tokenizers.dna import SPECIAL_TOKENS, DNATokenizer


class DNAAdapter(Adapter):
    """Nucleotides as tokens (see :class:`DNATokenizer` for the vocabulary and IUPAC policy).

    Args:
        iupac: ``"n"`` (default), ``"tokens"``, ``"unk"`` or ``"error"``.
        unknown: ``"error"`` (default) or ``"unk"`` for any other character.
    """

    name = "dna"
    unit = "base"
    dtype = np.uint8

    def __init__(self, iupac: str = "n", unknown: str = "error"):
        self.tokenizer = DNATokenizer(iupac=iupac, unknown=unknown)

    @classmethod
    def from_tokenizer(cls, tokenizer: DNATokenizer) -> "DNAAdapter":
        return cls(iupac=tokenizer.iupac, unknown=tokenizer.unknown)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def specials(self) -> dict:
        return {t: self.tokenizer.token_to_id[t] for t in SPECIAL_TOKENS}

    @property
    def data_ids(self) -> list:
        """A, C, G, T: the bases a DNA language model is scored on (N and IUPAC codes are context only)."""
        t = self.tokenizer
        return [t.a_id, t.c_id, t.g_id, t.t_id]

    def settings(self) -> dict:
        return {"iupac": self.tokenizer.iupac, "unknown": self.tokenizer.unknown}

    def encode(self, seq: Any, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """A nucleotide ``str`` / ``bytes`` / uint8 array to ids (the tokenizer's ``encode``)."""
        if not isinstance(seq, (str, bytes, bytearray, memoryview, np.ndarray)):
            raise ValueError(f"dna.encode: seq must be str, bytes or a uint8 array, got {type(seq).__name__}")
        return self.tokenizer.encode(seq, add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids: Any, softmask: Any = None, skip_special: bool = True) -> str:
        """Ids back to nucleotides; specials are dropped (``?`` with ``skip_special=False``)."""
        arr = self.check_ids(ids)
        return self.tokenizer.decode(arr, softmask=softmask, skip_special=skip_special)

    def encode_records(self, path: PathLike) -> dict:
        """``{record name: ids}`` of every record in a FASTA / GenBank file, in file order."""
        out = {}
        for rec in read_records(path):
            try:
                out[rec.name] = self.tokenizer.encode(rec.sequence)
            except ValueError as e:
                raise ValueError(f"{path}: record {rec.name!r}: {e}") from None
        return out

    def encode_file(self, path: PathLike, record: Optional[str] = None) -> np.ndarray:
        """One record (``record=``) or all records joined by ``<eos>``."""
        recs = self.encode_records(path)
        if record is not None:
            if record not in recs:
                names = list(recs)
                more = f" (and {len(names) - 5} more)" if len(names) > 5 else ""
                raise ValueError(f"{path}: no record named {record!r}; it holds {names[:5]}{more}")
            return recs[record]
        parts = []
        sep = np.array([self.tokenizer.eos_id], dtype=np.uint8)
        for i, ids in enumerate(recs.values()):
            if i:
                parts.append(sep)
            parts.append(ids)
        return np.concatenate(parts).astype(np.uint8, copy=False)
