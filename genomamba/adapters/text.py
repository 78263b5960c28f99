"""Byte-level text adapter: every UTF-8 byte is a token, so any text (and any file) round-trips.

Vocabulary (260 ids)::

    0..255  the byte values themselves     256 <pad>  257 <bos>  258 <eos>  259 <mask>

``encode(str)`` is the string's UTF-8 bytes; ``decode(ids)`` drops the specials and decodes UTF-8
with replacement, so a window cut in the middle of a multi-byte character yields U+FFFD instead of
raising. ``encode_file`` (alias ``read_file``) returns a file's raw bytes as ids: no decoding
happens, so invalid UTF-8 or binary content is kept exactly; a gzip, xz or bzip2 file (detected by
its first bytes) is decompressed first.
"""

from __future__ import annotations

import codecs
from typing import Any

import numpy as np

from genomamba.adapters.base import Adapter, PathLike
from genomamba.data.text import read_bytes

__all__ = ["ByteTextAdapter", "SPECIAL_TOKENS", "read_bytes"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<mask>")
N_BYTES = 256


def _surrogates(err: UnicodeEncodeError):
    """Encode error handler: U+DC80..U+DCFF as the byte it stands for, any other lone surrogate as its
    3-byte (surrogatepass) encoding."""
    out = bytearray()
    for ch in err.object[err.start:err.end]:
        cp = ord(ch)
        out += bytes([cp - 0xDC00]) if 0xDC80 <= cp <= 0xDCFF else ch.encode("utf-8", "surrogatepass")
    return bytes(out), err.end


# the error handler's name, for str.encode and text files: a str that holds escaped bytes is written
# as those bytes
SURROGATE_BYTES = "genomamba.text.surrogates"
codecs.register_error(SURROGATE_BYTES, _surrogates)

class ByteTextAdapter(Adapter):
    """UTF-8 bytes as tokens, with ``<pad> <bos> <eos> <mask>`` after the 256 byte values."""

    name = "text"
    unit = "byte"
    dtype = np.int16  # holds 260 ids; a dtype torch supports, half the memory of int32

    def __init__(self) -> None:
        self._specials = {t: N_BYTES + i for i, t in enumerate(SPECIAL_TOKENS)}

    @property
    def vocab_size(self) -> int:
        return N_BYTES + len(SPECIAL_TOKENS)

    @property
    def pad_id(self) -> int:
        return self._specials["<pad>"]

    @property
    def bos_id(self) -> int:
        return self._specials["<bos>"]

    @property
    def eos_id(self) -> int:
        return self._specials["<eos>"]

    @property
    def mask_id(self) -> int:
        return self._specials["<mask>"]

    @property
    def specials(self) -> dict:
        return dict(self._specials)

    def settings(self) -> dict:
        return {}

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: Any, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """UTF-8 bytes of ``text`` (a ``str``) as ids, optionally framed by ``<bos>`` / ``<eos>``."""
        if not isinstance(text, str):
            hint = " (use encode_bytes for raw bytes)" if isinstance(text, (bytes, bytearray, memoryview)) else ""
            raise ValueError(f"text.encode: text must be str, got {type(text).__name__}{hint}")
        # Python reads bytes that are not UTF-8 (a command-line argument, a file name) as the lone
        # surrogates U+DC80..U+DCFF: those give their bytes back. Other lone surrogates (never valid
        # UTF-8) become their 3-byte encodings and decode back as replacement characters. Each
        # character on its own, whatever else the string holds.
        return self.encode_bytes(text.encode("utf-8", errors=SURROGATE_BYTES), add_bos, add_eos)

    def encode_bytes(self, data: Any, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """Raw ``bytes`` / ``bytearray`` / ``memoryview`` as ids (id == byte value)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"text.encode_bytes: data must be bytes, got {type(data).__name__}")
        ids = np.frombuffer(bytes(data), dtype=np.uint8).astype(self.dtype)
        if add_bos or add_eos:
            head = [self.bos_id] if add_bos else []
            tail = [self.eos_id] if add_eos else []
            ids = np.concatenate([np.array(head, self.dtype), ids, np.array(tail, self.dtype)])
        return ids

    def decode_bytes(self, ids: Any) -> bytes:
        """The bytes behind ``ids``; special tokens are dropped."""
        arr = self.check_ids(ids)
        return arr[arr < N_BYTES].astype(np.uint8).tobytes()

    def decode(self, ids: Any, errors: str = "replace") -> str:
        """Ids back to text. Invalid or cut UTF-8 becomes U+FFFD (``errors="strict"`` raises)."""
        raw = self.decode_bytes(ids)
        try:
            return raw.decode("utf-8", errors=errors)
        except UnicodeDecodeError as e:
            raise ValueError(f"text.decode: invalid UTF-8 at byte {e.start} (errors={errors!r})") from None

    # ------------------------------------------------------------------ files
    def encode_file(self, path: PathLike) -> np.ndarray:
        """A file's bytes as ids; gzip / xz / bzip2 files are decompressed first."""
        return self.encode_bytes(read_bytes(path))
