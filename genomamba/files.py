"""Atomic file writes: a file is either the old one or the complete new one, never a torn mix.

``atomic_path(dest)`` yields a unique temporary path in ``dest``'s folder (so the final rename
never crosses file systems); when the block ends normally the temporary file is flushed to disk,
given the mode a plain ``open(dest, "w")`` would have given it (0666 minus the umask, where
``mkstemp`` alone would leave 0600), and renamed over ``dest``. When the block raises, the
temporary file is removed and ``dest`` is left as it was::

    with atomic_path("out.h5") as tmp:
        with h5py.File(tmp, "w") as h5:
            ...

``write_text``, ``write_bytes`` and ``write_json`` cover the one-call cases.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it back races threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(dest: PathLike, mode: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync, chmod and rename it to ``dest``.

    ``mode``: the final permission bits (default ``0o666`` minus the umask).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, (0o666 & ~current_umask()) if mode is None else mode)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(dest.parent)


def write_bytes(dest: PathLike, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text(dest: PathLike, text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def write_json(dest: PathLike, obj: Any, indent: Optional[int] = 2, sort_keys: bool = False) -> Path:
    """Strict JSON (NaN and infinities written as ``null``), newline-terminated, atomically."""
    text = json.dumps(finite_or_none(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
    return write_text(dest, text + "\n")
