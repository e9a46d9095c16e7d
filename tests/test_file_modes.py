"""Files written atomically get the modes a plain ``open`` or ``mkdir`` gives under the umask:
the temporary file (``mkstemp``, 0600) or folder (``mkdtemp``, 0700) they are made in must not
leave outputs readable by their owner only."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from runtime.checkpoint import save_checkpoint
from specc.fsutil import atomic_write_text, umask


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o027, 0o077])
def mask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_umask_is_read_without_changing_it(mask: int) -> None:
    assert umask() == mask
    assert umask() == mask


def test_atomic_files_get_the_umasks_mode(mask: int, tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert mode(written) == mode(plain) == 0o666 & ~mask


def test_checkpoint_files_and_folder_get_the_umasks_modes(mask: int, tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "run", weights={"w": torch.ones(2)},
                             state={"iteration": 3}, spec_info={"spec_sha256": "0" * 64})
    reference = tmp_path / "made by mkdir"
    reference.mkdir()
    assert mode(folder) == mode(reference) == 0o777 & ~mask
    files = sorted(folder.iterdir())
    assert files and all(mode(f) == 0o666 & ~mask for f in files)
