"""Atomic file writes (a temp file in the same folder, flushed, then renamed over the target),
and output paths checked before a command does any work.

A reader (or a crash, even ``kill -9``) sees the old file or the complete new one, never half.
The temporary files and folders are made private (mode 0600/0700) while they are written and get
the modes a plain ``open`` or ``mkdir`` would give them under the process's umask before they
take their final name, so other users and groups read the outputs as they read any other file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from specc.errors import SpeccError


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry to disk (so a rename survives a power cut, not just a kill)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read a block at a time (weights and artifacts run to
    hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def umask() -> int:
    """The process's file-mode creation mask, read without changing it where Linux tells it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open`` gives a new file: 0666 less the umask."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder: 0777 less the umask."""
    return 0o777 & ~umask()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create ``path`` all at once: ``write(tmp)`` fills a temporary file next to it, which is
    fsynced and renamed over ``path``. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # mkstemp's file is private
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def os_error(err: OSError, path: str | Path, what: str) -> SpeccError:
    """One clear message for an OS error while writing: the path it hit, what could not be
    done and the system's reason (``No space left on device``, ``Permission denied``, ...)."""
    where = err.filename if err.filename else path
    return SpeccError(f"{where}: {what} ({err.strerror or err})")


@contextlib.contextmanager
def reporting_os_errors(path: str | Path, what: str) -> Iterator[None]:
    """Turn an :class:`OSError` raised inside into :func:`os_error`'s :class:`SpeccError`."""
    try:
        yield
    except OSError as err:
        raise os_error(err, path, what) from None


# -- output paths, checked before a command does any work ------------------------------------
# A command that would compute for minutes and then fail to write its result (an --out that names
# a file where a folder is expected, a folder inside a file, a folder the user cannot write) says
# so first. What is left over (a disk that fills up, a folder removed while the command runs) is
# an OSError that the command line turns into one message.


def output_folder(path: Path, flag: str = "--out") -> Path:
    """``path`` if it is, or can be made, a folder this user may write into.

    Raises:
        SpeccError: ``path`` is a file, lies below a file, or is not writable.
    """
    if path.exists() and not path.is_dir():
        raise SpeccError(f"{flag} {path}: expected a folder, found a file")
    _check_writable(path, path, flag)
    return path


def output_file(path: Path, flag: str = "--out") -> Path:
    """``path`` if a file can be written there (created, or replaced).

    Raises:
        SpeccError: ``path`` is a folder, lies below a file, or its folder is not writable.
    """
    if path.is_dir():
        raise SpeccError(f"{flag} {path}: expected a file name, found a folder")
    _check_writable(path.parent, path, flag)
    return path


def _check_writable(folder: Path, target: Path, flag: str) -> None:
    """The nearest existing ancestor of ``folder`` must be a writable folder."""
    existing = folder
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise SpeccError(f"{flag} {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpeccError(f"{flag} {target}: cannot write into {existing} (permission denied)")
