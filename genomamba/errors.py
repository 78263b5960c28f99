"""The one error type for a user's mistake, and the one way it is reported.

``UserError`` is raised for anything the user can fix: a bad argument, a file that is not what it
should be, an output that would replace an input, a run directory in use. The specific errors
(``ConfigError``, ``FastaFormatError``, ``CheckpointError``, ``ManifestError``, ``CorpusError``,
``FetchError``) derive from it, so ``except UserError`` catches them all; most also stay
``ValueError`` so existing ``except ValueError`` code keeps working.

The command line prints every error as one line, ``genomamba CMD: error: MESSAGE``
(``report``); ``genomamba --debug CMD ...`` or ``GENOMAMBA_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Union

DEBUG_ENV = "GENOMAMBA_DEBUG"
PathLike = Union[str, os.PathLike]


class UserError(Exception):
    """A mistake in what the user gave (arguments, files, configs); the message says what and where."""


class StoppedBySignal(UserError):
    """A training run stopped by a signal (SIGTERM: a scheduler preempting the job) after saving its
    state; the exit code is 128 + the signal's number, as a shell reports a process the signal ended."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class InvalidArgument(UserError, ValueError):
    """A command-line or API argument out of range; the message names the argument."""


class InputFileError(UserError, OSError):
    """An input path that cannot be read as a file: missing, a directory, a symlink loop, unreadable."""

    def __str__(self) -> str:  # OSError(errno, msg) would print "[Errno 2] msg"
        return self.args[-1] if self.args else ""


class MissingInputError(InputFileError, FileNotFoundError):
    """An input path that does not exist."""


class OutputError(UserError, OSError):
    """An output path that must not be written: it exists (no ``--force``), it is an input, a directory..."""

    def __str__(self) -> str:
        return self.args[-1] if self.args else ""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists and replacing it was not asked for (``--force``)."""


class TextEncodingError(UserError, ValueError):
    """A text file (config, JSON, manifest) that is not UTF-8."""


class RunDirBusy(UserError, RuntimeError):
    """A run directory is owned by another live run."""


def debug_enabled() -> bool:
    """``GENOMAMBA_DEBUG`` set to anything but ``''``/``0``: show tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def one_line(exc: BaseException) -> str:
    """The exception as one line: its message (first line for a multi-line one), or its type's name."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and not isinstance(exc, (InputFileError, OutputError)) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    if not text:
        return type(exc).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0] if len(lines) == 1 else lines[0] + " ..."


def is_user_error(exc: BaseException) -> bool:
    """Errors a user can fix: ours, plus bad values and file-system refusals raised on their input."""
    return isinstance(exc, (UserError, ValueError, OSError, KeyError, UnicodeError))


def report(cmd: str, exc: BaseException, code: int = 1) -> int:
    """Print ``exc`` as ``genomamba CMD: error: ...`` on stderr and return ``code``; with debugging on
    re-raise it (the traceback is wanted). Anything else than a user error says it is unexpected."""
    if debug_enabled():
        raise exc
    prefix = f"genomamba {cmd}" if cmd else "genomamba"
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    if isinstance(exc, StoppedBySignal):
        print(f"{prefix}: stopped: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    if is_user_error(exc):
        print(f"{prefix}: error: {one_line(exc)}", file=sys.stderr)
    else:
        print(f"{prefix}: unexpected error: {type(exc).__name__}: {one_line(exc)} "
              f"(run `genomamba --debug {cmd} ...` or set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
    return code


def check_input_file(path: PathLike, what: str = "") -> None:
    """Raise ``InputFileError`` (one line, naming ``what`` and the path) unless ``path`` is a readable file."""
    label = f"{what}: {path}" if what else f"{path}"
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputFileError(errno.ELOOP, f"{label}: symbolic link loop") from None
        if e.errno == errno.EACCES:
            raise InputFileError(errno.EACCES, f"{label}: permission denied") from None
        if e.errno == errno.ENOTDIR:
            raise MissingInputError(errno.ENOENT, f"{label}: no such file (a parent is not a directory)") from None
        if os.path.islink(path):
            raise MissingInputError(errno.ENOENT, f"{label}: broken symbolic link") from None
        raise MissingInputError(errno.ENOENT, f"{label}: no such file") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError(errno.EISDIR, f"{label}: is a directory, not a file")
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISFIFO(st.st_mode) and not stat.S_ISCHR(st.st_mode):
        raise InputFileError(errno.EINVAL, f"{label}: not a regular file")
    if not os.access(path, os.R_OK):
        raise InputFileError(errno.EACCES, f"{label}: permission denied (not readable)")


def check_device(device, name: str = "device") -> None:
    """InvalidArgument naming ``name`` for a device that is no device name (``"gpu"``) or that this
    machine or torch build lacks (``"cuda"`` on a CPU-only torch, ``"cuda:3"`` with two GPUs)."""
    if device is None:
        return
    import torch  # here: the rest of this module runs without it

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidArgument(f"{name}: expected cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise InvalidArgument(f"{name}: {device!r} asked for, but {why} (torch {torch.__version__}); use cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidArgument(f"{name}: {device!r} asked for, but this machine shows "
                              f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 ..)")
