"""Atomic file writes: a file is either the old one or the complete new one, never a torn mix.

``atomic_path(dest)`` yields a unique temporary path in ``dest``'s folder (so the final rename
never crosses file systems); when the block ends normally the temporary file is flushed to disk,
given the mode a plain ``open(dest, "w")`` would have given it (0666 minus the umask, where
``mkstemp`` alone would leave 0600), and renamed over ``dest``. When the block raises, the
temporary file is removed and ``dest`` is left as it was::

    with atomic_path("out.h5") as tmp:
        with h5py.File(tmp, "w") as h5:
            ...

``write_text``, ``write_bytes`` and ``write_json`` cover the one-call cases; ``atomic_text``
yields a text stream for a writer that streams. A text file whose name ends in ``.gz`` is written
gzip-compressed (``write_text``, ``write_json``, ``atomic_text``); the gzip stream is closed, its
trailer written, before the commit, so a crash leaves no truncated ``.gz`` behind::

    with atomic_text("samples.fa.gz") as fh:
        fh.write(">a\nACGT\n")

The temporary name is ``.<name>.<pid>.<random>.tmp``: a writer killed with ``kill -9`` leaves it
behind, and the next write of the same file (by any process) removes the temporary files whose
writer is no longer running (``clean_stale_temps``).

``replace=False`` makes the write an exclusive create, checked when the file is committed (by
``os.link``, which fails if ``dest`` exists), not only when the writer started: of two writers of
the same new file, the second to finish gets ``OutputExistsError`` and the first one's file stays.
``check_output`` is what a command runs on an output path before doing any work: not a directory,
not one of its inputs, not an existing file unless ``--force``, and in a folder that can be made.

``RunDirLock`` owns a folder (a run directory) while a process works in it; ``file_lock`` makes
processes take turns on one piece of work (a download, a self-test).
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import io
import json
import math
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, TextIO, Union

from genomamba.errors import InputFileError, OutputError, OutputExistsError, RunDirBusy, TextEncodingError

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


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _temp_prefix(name: str) -> str:
    return f".{name}."


def clean_stale_temps(dest: PathLike) -> list[Path]:
    """Remove the temporary files ``atomic_path`` left beside ``dest`` when their writer died
    (``kill -9``, power loss); those of live writers are kept. Returns the removed paths."""
    dest = Path(dest)
    prefix = _temp_prefix(dest.name)
    removed = []
    try:
        names = os.listdir(dest.parent)
    except OSError:
        return removed
    for n in names:
        if not (n.startswith(prefix) and n.endswith(".tmp")):
            continue
        pid = n[len(prefix):-len(".tmp")].split(".", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        try:
            os.unlink(dest.parent / n)
            removed.append(dest.parent / n)
        except OSError:
            pass
    return removed


def _commit_exclusive(tmp: str, dest: Path) -> None:
    """Move ``tmp`` to ``dest`` only if ``dest`` does not exist, decided atomically now."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise OutputExistsError(errno.EEXIST, f"{dest}: exists (written meanwhile by another process?); "
                                              f"use --force to replace it") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK):
            raise
        # no hard links on this file system: reserve the name exclusively, then rename over it
        try:
            os.close(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise OutputExistsError(errno.EEXIST, f"{dest}: exists (written meanwhile by another process?); "
                                                  f"use --force to replace it") from None
        os.replace(tmp, dest)
        return
    os.unlink(tmp)


@contextmanager
def atomic_path(dest: PathLike, mode: Optional[int] = None, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync, chmod and rename it to ``dest``.

    ``mode``: the final permission bits (default ``0o666`` minus the umask). ``replace=False``:
    refuse (``OutputExistsError``) if ``dest`` exists when the write is committed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(dest)
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f"{_temp_prefix(dest.name)}{os.getpid()}.", suffix=".tmp")
    except OSError as exc:  # name the file asked for, not the temporary one beside it
        raise OSError(exc.errno, f"cannot create a file in {dest.parent} ({exc.strerror})", str(dest)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, (0o666 & ~current_umask()) if mode is None else mode)
        if replace:
            os.replace(tmp, dest)
        else:
            _commit_exclusive(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(dest.parent)


@contextmanager
def file_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent) for the block: processes that share a
    folder take turns (``flock``; released when the process dies, so a crash never leaves it held)."""
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_text(path: PathLike) -> str:
    """A UTF-8 text file's content (a BOM is dropped). A file in another encoding (Latin-1, UTF-16)
    raises ``TextEncodingError`` naming the file and the first bad byte; a directory raises
    ``InputFileError``; a missing file ``FileNotFoundError``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise InputFileError(errno.EISDIR, f"{path}: is a directory, not a file") from None
    except PermissionError:
        raise InputFileError(errno.EACCES, f"{path}: permission denied") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TextEncodingError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                                "save the file as UTF-8") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(out: PathLike, inputs: Iterable[PathLike] = (), what: str = "--out", force: bool = False) -> Path:
    """Refuse (``OutputError``, one line naming ``what``) an output path that is a directory, one of
    ``inputs``, an existing file without ``force``, or in a folder that cannot be created or written.
    Run it before any work, so a mistake costs nothing."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(errno.EISDIR, f"{what} {out}: is a directory; give a file name")
    for inp in inputs:
        if inp is not None and _same_file(out, Path(inp)):
            raise OutputError(errno.EEXIST, f"{what} {out}: is also an input ({inp}); "
                                            "writing it would destroy the input, choose another output")
    if (out.exists() or out.is_symlink()) and not force:
        raise OutputExistsError(errno.EEXIST, f"{what} {out}: exists; use --force to replace it")
    anc = out.parent
    while not anc.exists() and anc != anc.parent:
        if anc.is_symlink():
            raise OutputError(errno.ENOENT, f"{what} {out}: {anc} is a broken symbolic link")
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(errno.ENOTDIR, f"{what} {out}: cannot be created, {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(errno.EACCES, f"{what} {out}: cannot be created, no write permission in {anc}")
    return out


class RunDirLock:
    """Ownership of a folder: ``<folder>/run.lock``, ``flock``-ed and holding the owner's pid.

    ``acquire`` fails at once (``RunDirBusy``, naming the pid) while another live process holds it.
    The kernel drops the lock when its holder dies however it dies, so a lock file left by a killed
    run is taken over (``acquire`` returns the dead holder's pid). ``release`` removes the file.
    """

    NAME = "run.lock"

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @staticmethod
    def _read_pid(fd: int) -> int:
        try:
            text = os.pread(fd, 64, 0).decode("ascii", "replace").split()
            return int(text[0]) if text and text[0].isdigit() else 0
        except OSError:
            return 0

    def _busy(self, pid: int) -> RunDirBusy:
        who = f"pid {pid}" if pid else "another process"
        return RunDirBusy(f"{self.folder}: in use by a running genomamba ({who}); wait for it to end, "
                          "or choose another run directory")

    def acquire(self) -> Optional[int]:
        """Take the lock; returns the pid of a dead holder whose lock was taken over, else None."""
        if self._fd is not None:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = self._read_pid(fd)
                os.close(fd)
                raise self._busy(pid) from None
            except OSError:  # no flock on this file system: trust the pid in the file
                pid = self._read_pid(fd)
                if pid and pid != os.getpid() and pid_alive(pid):
                    os.close(fd)
                    raise self._busy(pid) from None
            try:  # a holder releasing meanwhile unlinks the file we opened: lock the new one instead
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            stale = self._read_pid(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            return stale if stale and stale != os.getpid() else None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None


def write_bytes(dest: PathLike, data: bytes, replace: bool = True) -> Path:
    with atomic_path(dest, replace=replace) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def gzip_name(dest: PathLike) -> bool:
    """Whether a text output named ``dest`` is written gzip-compressed: its name ends in ``.gz``."""
    return Path(dest).name.lower().endswith(".gz")


@contextmanager
def atomic_text(dest: PathLike, mode: Optional[int] = None, replace: bool = True,
                errors: str = "strict") -> Iterator[TextIO]:
    """Yield a UTF-8 text stream that becomes ``dest`` as ``atomic_path`` says: gzip-compressed when
    the name ends in ``.gz`` (``gzip_name``). The stream is closed (a gzip stream's trailer written)
    before the commit; when the block raises, nothing is committed and the temporary file goes.
    ``errors``: the encoder's error handler (for text that holds lone surrogates)."""
    dest = Path(dest)
    with atomic_path(dest, mode=mode, replace=replace) as tmp, open(tmp, "wb") as raw:
        binary = raw
        if gzip_name(dest):  # no timestamp: the same text gives the same bytes
            binary = gzip.GzipFile(filename=dest.name, mode="wb", fileobj=raw, mtime=0)
        with io.TextIOWrapper(binary, encoding="utf-8", errors=errors) as fh:
            yield fh


def write_text(dest: PathLike, text: str, replace: bool = True, errors: str = "strict") -> Path:
    """``text`` as UTF-8, atomically; gzip-compressed when the name ends in ``.gz``."""
    with atomic_text(dest, replace=replace, errors=errors) as fh:
        fh.write(text)
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


def json_text(obj: Any, indent: Optional[int] = 2, sort_keys: bool = False) -> str:
    """Strict JSON text (NaN and infinities as ``null``), newline-terminated."""
    return json.dumps(finite_or_none(obj), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"


def write_json(dest: PathLike, obj: Any, indent: Optional[int] = 2, sort_keys: bool = False,
               replace: bool = True) -> Path:
    """Strict JSON (NaN and infinities written as ``null``), newline-terminated, atomically."""
    return write_text(dest, json_text(obj, indent, sort_keys), replace=replace)
