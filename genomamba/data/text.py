"""Text files in: a file's bytes, decompressed when its first bytes say gzip, xz or bzip2.

The reader of the text modality (``genomamba.data.fasta`` is DNA's, ``genomamba.data.audio``
audio's). No decoding happens here: invalid UTF-8 or binary content is kept exactly. A path that
is missing raises ``FileNotFoundError``; a directory or another non-file, or a corrupt compressed
file, raises a one-line ``ValueError`` naming the path. An empty file reads as ``b""``: the callers
that need content (a corpus, a model's input) refuse it with its name.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import zlib
from pathlib import Path
from typing import Union

PathLike = Union[str, os.PathLike]

# A bzip2 stream opens with 'BZh', a level digit, then a block (pi) or end-of-stream (sqrt pi) magic;
# checking the magic keeps a plain text file that happens to start with "BZh" a plain text file.
_BZ2_BLOCK_MAGIC = (b"1AY&SY", b"\x17rE8P\x90")


def read_bytes(path: PathLike) -> bytes:
    """Contents of ``path``, decompressed when its first bytes say gzip, xz or bzip2."""
    p = Path(path)
    if not p.is_file():
        if p.is_dir():
            raise ValueError(f"{p}: not a regular file (a directory, not a text file)")
        if p.exists():
            raise ValueError(f"{p}: not a regular file")
        raise FileNotFoundError(f"{p}: no such file")
    raw = p.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        if raw[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(raw)
        if raw[:3] == b"BZh" and raw[4:10] in _BZ2_BLOCK_MAGIC:
            return bz2.decompress(raw)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise ValueError(f"{p}: corrupt compressed file ({e})") from None
    return raw
