"""Character-level DNA tokenizer: fixed vocabulary, IUPAC policy, soft-mask, reverse complement.

Vocabulary (default, 11 tokens; the model pads the embedding to a multiple of 8)::

    0 <pad>  1 <bos>  2 <eos>  3 <cls>  4 <mask>  5 <unk>  6 A  7 C  8 G  9 T  10 N

IUPAC policy (``iupac=``):

- ``"n"`` (default): the ambiguity codes R Y S W K M B D H V become ``N``. Real assemblies carry a
  handful of them (V. cholerae N16961 has some); a base the sequencer could not resolve is an
  unknown base, which is exactly what ``N`` means to the model.
- ``"tokens"``: each code gets its own token (ids 11..20, vocabulary 21) and a proper complement.
- ``"unk"``: codes become ``<unk>``. ``"error"``: codes raise ``ValueError``.

``U`` is read as ``T`` (RNA input). Any other character (digits, ``-``, protein letters such as
``E``/``F``/``L``) is never mapped silently: by default it raises ``ValueError`` naming the first
offending position; ``unknown="unk"`` maps it to ``<unk>`` instead.

Case: lowercase letters (soft-masked repeats) get the same token as upper case; the case is
returned as a separate boolean array (``return_mask=True``) so it can weight a loss without ever
being visible to the model as input or label.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from genomamba.files import read_text, write_text

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<cls>", "<mask>", "<unk>")
BASE_TOKENS = ("A", "C", "G", "T", "N")
IUPAC_CODES = ("R", "Y", "S", "W", "K", "M", "B", "D", "H", "V")
# Watson-Crick complement of every nucleotide letter, ambiguity codes included (R=A/G <-> Y=C/T, ...).
COMPLEMENT = {
    "A": "T",
    "C": "G",
    "G": "C",
    "T": "A",
    "N": "N",
    "R": "Y",
    "Y": "R",
    "S": "S",
    "W": "W",
    "K": "M",
    "M": "K",
    "B": "V",
    "V": "B",
    "D": "H",
    "H": "D",
}
_IUPAC_POLICIES = ("n", "tokens", "unk", "error")
_UNKNOWN_POLICIES = ("error", "unk")
_INVALID = 255  # sentinel in the byte table; never a real id because vocab_size <= 21
_IUPAC_ERROR = 254

TOKENIZER_FILE = "tokenizer.json"

SeqLike = Union[str, bytes, bytearray, memoryview, np.ndarray]


class DNATokenizer:
    """Fixed-vocabulary DNA tokenizer backed by 256-entry byte lookup tables.

    Args:
        iupac: what IUPAC ambiguity codes become: ``"n"``, ``"tokens"``, ``"unk"`` or ``"error"``.
        unknown: what any other non-nucleotide character does: ``"error"`` (raise) or ``"unk"``.
    """

    def __init__(self, iupac: str = "n", unknown: str = "error"):
        if iupac not in _IUPAC_POLICIES:
            raise ValueError(f"iupac must be one of {_IUPAC_POLICIES}, got {iupac!r}")
        if unknown not in _UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {_UNKNOWN_POLICIES}, got {unknown!r}")
        self.iupac = iupac
        self.unknown = unknown
        tokens = list(SPECIAL_TOKENS) + list(BASE_TOKENS)
        if iupac == "tokens":
            tokens += list(IUPAC_CODES)
        self.vocab: list[str] = tokens
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        for t in SPECIAL_TOKENS:
            setattr(self, t.strip("<>") + "_id", self.token_to_id[t])
        self.a_id, self.c_id, self.g_id, self.t_id, self.n_id = (self.token_to_id[b] for b in BASE_TOKENS)
        # Every id at or above this one is a nucleotide; specials sit below (used by reverse_complement).
        self.first_base_id = self.a_id
        self._build_tables()

    # ------------------------------------------------------------------ tables
    def _build_tables(self) -> None:
        enc = np.full(256, _INVALID, dtype=np.uint8)
        for b in BASE_TOKENS:
            enc[ord(b)] = enc[ord(b.lower())] = self.token_to_id[b]
        enc[ord("U")] = enc[ord("u")] = self.t_id
        for code in IUPAC_CODES:
            if self.iupac == "n":
                v = self.n_id
            elif self.iupac == "tokens":
                v = self.token_to_id[code]
            elif self.iupac == "unk":
                v = self.unk_id
            else:
                v = _IUPAC_ERROR
            enc[ord(code)] = enc[ord(code.lower())] = v
        if self.unknown == "unk":
            enc[enc == _INVALID] = self.unk_id
        self._enc = enc
        self._enc_bytes = enc.tobytes()
        soft = np.zeros(256, dtype=np.uint8)
        for ch in range(ord("a"), ord("z") + 1):
            soft[ch] = 1
        self._soft_bytes = soft.tobytes()
        # Decode table: id -> one ASCII char; specials decode to '?' only when asked to keep them.
        dec = np.full(256, ord("?"), dtype=np.uint8)
        for i, t in enumerate(self.vocab):
            if len(t) == 1:
                dec[i] = ord(t)
        self._dec = dec
        comp = np.arange(256, dtype=np.int64)  # specials (and anything unknown) map to themselves
        for t, i in self.token_to_id.items():
            if t in COMPLEMENT:
                c = COMPLEMENT[t]
                comp[i] = self.token_to_id[c] if c in self.token_to_id else self.n_id
        self._comp = comp
        self._comp_bytes = np.clip(comp, 0, 255).astype(np.uint8).tobytes()

    # ------------------------------------------------------------------ public
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def reads_any_letter(self) -> bool:
        """Whether any letter is a token (``<unk>`` for what is not a nucleotide): FASTA readers then
        take every printable character instead of refusing the file."""
        return self.unknown == "unk"

    def __repr__(self) -> str:
        return f"DNATokenizer(iupac={self.iupac!r}, unknown={self.unknown!r}, vocab_size={self.vocab_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DNATokenizer) and self.to_dict() == other.to_dict()

    def encode(self, seq: SeqLike, return_mask: bool = False, add_bos: bool = False, add_eos: bool = False):
        """Encode a nucleotide string to token ids.

        Args:
            seq: ``str`` (ASCII), ``bytes``-like, or a uint8 numpy array of ASCII codes.
            return_mask: also return the soft-mask (True where the input letter was lowercase).
            add_bos / add_eos: frame the sequence with ``<bos>`` / ``<eos>`` (mask False there).

        Returns:
            ``ids`` (np.ndarray[uint8], (L,)) or ``(ids, softmask)`` with softmask np.bool_ (L,).

        Raises:
            ValueError: a character outside the policy, naming its 0-based position.
        """
        raw = _as_bytes(seq)
        # bytes.translate runs at memory speed, far above what training reads need.
        ids = np.frombuffer(raw.translate(self._enc_bytes), dtype=np.uint8)
        if ids.size and ids.max() >= _IUPAC_ERROR:
            self._raise_invalid(raw, ids)
        if add_bos or add_eos:
            parts = ([np.array([self.bos_id], np.uint8)] if add_bos else []) + [ids]
            parts += [np.array([self.eos_id], np.uint8)] if add_eos else []
            ids = np.concatenate(parts)
        else:
            ids = ids.copy()  # frombuffer views are read-only; callers expect to own the array
        if not return_mask:
            return ids
        soft = np.frombuffer(raw.translate(self._soft_bytes), dtype=np.uint8).view(np.bool_)
        if add_bos or add_eos:
            no = np.zeros(1, dtype=np.bool_)
            soft = np.concatenate(([no] if add_bos else []) + [soft] + ([no] if add_eos else []))
        else:
            soft = soft.copy()
        return ids, soft

    def _raise_invalid(self, raw: bytes, ids: np.ndarray) -> None:
        pos = int(np.flatnonzero(ids >= _IUPAC_ERROR)[0])
        ch = chr(raw[pos])
        if ids[pos] == _IUPAC_ERROR:
            raise ValueError(f"IUPAC ambiguity code {ch!r} at position {pos} (tokenizer iupac='error')")
        raise ValueError(
            f"invalid nucleotide character {ch!r} (byte 0x{raw[pos]:02x}) at position {pos}; "
            "expected A C G T U N or an IUPAC code (use unknown='unk' to map it to <unk>)"
        )

    def decode(self, ids: Any, softmask: Any = None, skip_special: bool = True) -> str:
        """Token ids back to a string; ``softmask`` restores lowercase. Specials are dropped (or '?')."""
        arr = _to_numpy(ids).astype(np.int64, copy=False).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token id out of range [0, {self.vocab_size}) in decode")
        chars = self._dec[arr]
        if softmask is not None:
            m = _to_numpy(softmask).astype(np.bool_).ravel()
            if m.shape != arr.shape:
                raise ValueError(f"softmask shape {m.shape} != ids shape {arr.shape}")
            chars = np.where(m, chars | 0x20, chars).astype(np.uint8)  # ASCII lowercase = set bit 5
        else:
            m = None
        if skip_special:
            chars = chars[arr >= self.first_base_id]
        return chars.tobytes().decode("ascii")

    def reverse_complement(self, ids: Any, mask: Any = None):
        """Reverse complement of token ids, numpy or torch, shape (L,) or (b, L).

        Nucleotide tokens and ``<unk>`` (a base that could not be read: its own complement) are
        reversed among themselves and complemented; pad and the other specials keep their positions
        (so a right-padded window stays right-padded, a leading ``<bos>`` stays first). ``mask`` (any
        per-position array: soft-mask, valid mask) is permuted the same way and returned as a second
        value.
        """
        if _is_torch(ids):
            return self._rc_torch(ids, mask)
        x = np.asarray(ids)
        if x.ndim not in (1, 2):
            raise ValueError(f"reverse_complement expects ids of shape (L,) or (b, L), got {x.shape}")
        m = None if mask is None else np.asarray(mask)
        if m is not None and m.shape != x.shape:
            raise ValueError(f"mask shape {m.shape} != ids shape {x.shape}")
        is_nuc = (x >= self.first_base_id) | (x == self.unk_id)
        if x.dtype == np.uint8 and x.ndim == 1 and is_nuc.all():
            # Hot path of RC augmentation on store windows: bytes.translate is the fastest LUT.
            out = np.frombuffer(x.tobytes().translate(self._comp_bytes), dtype=np.uint8)[::-1].copy()
            return out if m is None else (out, m[::-1].copy())
        comp = self._comp[x].astype(x.dtype, copy=False)
        if is_nuc.all():  # fast path: no specials anywhere
            out = comp[..., ::-1].copy()
            return out if m is None else (out, m[..., ::-1].copy())
        x2, c2, n2 = np.atleast_2d(x), np.atleast_2d(comp), np.atleast_2d(is_nuc)
        m2 = None if m is None else np.atleast_2d(m)
        perm_dst, src, valid = _rc_permutation_np(n2)
        vals = np.where(valid, np.take_along_axis(c2, src, 1), np.take_along_axis(x2, perm_dst, 1))
        out = np.empty_like(x2)
        np.put_along_axis(out, perm_dst, vals, 1)
        out = out.reshape(x.shape)
        if m2 is None:
            return out
        mv = np.where(valid, np.take_along_axis(m2, src, 1), np.take_along_axis(m2, perm_dst, 1))
        mo = np.empty_like(m2)
        np.put_along_axis(mo, perm_dst, mv, 1)
        return out, mo.reshape(m.shape)

    def _rc_torch(self, ids, mask):
        import torch  # only tensors reach here: the tokenizer itself needs numpy alone

        if ids.dim() not in (1, 2):
            raise ValueError(
                f"reverse_complement expects ids of shape (L,) or (b, L), got {tuple(ids.shape)}"
            )
        if mask is not None and tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"mask shape {tuple(mask.shape)} != ids shape {tuple(ids.shape)}")
        comp_t = torch.as_tensor(self._comp, device=ids.device)
        comp = comp_t[ids.long()].to(ids.dtype)
        is_nuc = (ids >= self.first_base_id) | (ids == self.unk_id)
        if bool(is_nuc.all()):
            out = comp.flip(-1)
            return out if mask is None else (out, mask.flip(-1))
        x2, c2, n2 = (
            ids.reshape(-1, ids.shape[-1]),
            comp.reshape(-1, ids.shape[-1]),
            is_nuc.reshape(-1, ids.shape[-1]),
        )
        L = x2.shape[1]
        # Stable sort puts each row's nucleotide positions first, in order (see _rc_permutation_np).
        perm_dst = torch.sort((~n2).to(torch.int8), dim=1, stable=True).indices
        n = n2.sum(1, keepdim=True)
        j = torch.arange(L, device=ids.device).expand_as(perm_dst)
        valid = j < n
        src = torch.gather(perm_dst, 1, torch.where(valid, n - 1 - j, j))
        vals = torch.where(valid, torch.gather(c2, 1, src), torch.gather(x2, 1, perm_dst))
        out = torch.empty_like(x2).scatter_(1, perm_dst, vals).reshape(ids.shape)
        if mask is None:
            return out
        m2 = mask.reshape(-1, L)
        mv = torch.where(valid, torch.gather(m2, 1, src), torch.gather(m2, 1, perm_dst))
        return out, torch.empty_like(m2).scatter_(1, perm_dst, mv).reshape(mask.shape)

    # ------------------------------------------------------------------ save / load
    def to_dict(self) -> dict:
        return {
            "type": "genomamba.DNATokenizer",
            "format_version": 1,
            "iupac": self.iupac,
            "unknown": self.unknown,
            "vocab": list(self.vocab),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DNATokenizer":
        if d.get("type") != "genomamba.DNATokenizer":
            raise ValueError(f"not a genomamba.DNATokenizer config: type={d.get('type')!r}")
        tok = cls(iupac=d.get("iupac", "n"), unknown=d.get("unknown", "error"))
        if "vocab" in d and not isinstance(d["vocab"], list):
            raise ValueError(f"vocab: expected the list of token strings, got {d['vocab']!r}")
        if "vocab" in d and list(d["vocab"]) != tok.vocab:
            # A checkpoint's embedding rows are indexed by this vocabulary: a silent change would
            # scramble every token, so refuse rather than guess.
            raise ValueError(
                f"tokenizer vocab mismatch: file has {d['vocab']}, this version builds {tok.vocab}"
            )
        return tok

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        out = path / TOKENIZER_FILE
        write_text(out, json.dumps(self.to_dict(), indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike]) -> "DNATokenizer":
        path = Path(directory)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        try:
            d = json.loads(read_text(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"no {TOKENIZER_FILE} at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object (a tokenizer's settings), got {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


def _rc_permutation_np(is_nuc: np.ndarray):
    """For (b, L) nucleotide flags: destination order, source index and validity of the RC swap.

    ``perm_dst[b, :n_b]`` are the nucleotide positions of row b in increasing order (stable sort of
    the flags), followed by its special positions. Nucleotide rank j receives the complement of
    rank n_b-1-j; special positions receive themselves. O(L log L) per row, no Python loop.
    """
    perm_dst = np.argsort(~is_nuc, axis=1, kind="stable")
    n = is_nuc.sum(1, keepdims=True)
    j = np.broadcast_to(np.arange(is_nuc.shape[1]), is_nuc.shape)
    valid = j < n
    src = np.take_along_axis(perm_dst, np.where(valid, n - 1 - j, j), 1)
    return perm_dst, src, valid


def _as_bytes(seq: SeqLike) -> bytes:
    if isinstance(seq, str):
        try:
            return seq.encode("ascii")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"non-ASCII character {seq[e.start]!r} at position {e.start} in sequence"
            ) from None
    if isinstance(seq, (bytes, bytearray, memoryview)):
        return bytes(seq)
    if isinstance(seq, np.ndarray):
        if seq.dtype != np.uint8:
            raise ValueError(f"numpy input must be uint8 ASCII codes, got dtype {seq.dtype}")
        return seq.tobytes()
    raise TypeError(f"encode expects str, bytes or a uint8 array, got {type(seq).__name__}")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _to_numpy(x: Any) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)
