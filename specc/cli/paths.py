"""Output paths checked before a command does any work.

A command that would compute for minutes and then fail to write its result (``--out`` names a
file where a folder is expected, a folder inside a file, a folder the user cannot write) says so
first, naming the flag and the path. What is left over — a disk that fills up, a folder removed
while the command runs — is an ``OSError`` that :func:`specc.cli.main` turns into one message.
"""

from __future__ import annotations

import os
from pathlib import Path

from specc.errors import SpeccError


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
