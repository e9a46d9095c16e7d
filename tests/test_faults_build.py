"""Fault injection: ``specc build`` killed with SIGKILL at seeded random moments, then two builds
into one folder at once.

The folder always holds one whole build, the old one or the new one — model.py, manifest.json and
model.pt of one spec, which every reader accepts — and what a killed build leaves behind never
blocks the next one.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specc.api import load_spec
from specc.artifacts import check_build_folder, read_weights
from specc.build import BUILD_FILES

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "specs/deeplabv3plus_mobilenetv2_demo.yaml"
NAME = "deeplabv3plus_mobilenetv2_demo"
#: Two variants with the same name (so the same folder), told apart by their spec hashes.
VARIANTS = {"a": ["input.size=[33,33]"], "b": ["input.size=[33,33]", "backbone.output_stride=8"]}
SEED = 20240611
KILLS = 4
#: A kill falls this long (at most) after the build first changes anything in the output folder:
#: the writes happen in that window; a few kills fall before it (while compiling).
WINDOW_S = 3.0


def _command(which: str, out: Path) -> list[str]:
    sets = [a for o in VARIANTS[which] for a in ("--set", o)]
    return [sys.executable, "-m", "specc", "build", str(DEMO), *sets, "--out", str(out)]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _build(which: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(which, out), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _state(out: Path) -> frozenset[tuple[str, int, int]]:
    """Every entry under ``out`` with its inode and modification time: it changes as soon as a
    build writes anything there, however it writes."""
    entries = set()
    for root, dirs, files in os.walk(out):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # renamed or removed while we looked
                continue
            entries.add((os.path.join(root, name), st.st_ino, st.st_mtime_ns))
    return frozenset(entries)


def _build_killed(which: str, out: Path, rng: random.Random) -> str:
    """Start a build and SIGKILL it at a random moment; returns when it was killed."""
    proc = subprocess.Popen(_command(which, out), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if rng.random() < 0.25:
            delay = rng.uniform(0.5, 3.0)
            time.sleep(delay)
            moment = f"{delay:.2f} s after start"
        else:
            before = _state(out)
            while proc.poll() is None and _state(out) == before:
                time.sleep(0.002)
            delay = rng.uniform(0, WINDOW_S)
            time.sleep(delay)
            moment = f"{delay:.2f} s into writing"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=300)
    return moment if proc.returncode == -signal.SIGKILL else f"{moment} (had finished)"


def _which(folder: Path, hashes: dict[str, str]) -> str:
    """The variant the folder holds whole; fails on a mixture or a missing file."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(BUILD_FILES)
    found = set(check_build_folder(folder).values())
    assert len(found) == 1
    (sha,) = found
    assert sha in hashes.values(), sha
    read_weights(folder / "model.pt")  # the archive loads, with the spec inside checked
    return next(k for k, v in hashes.items() if v == sha)


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {k: load_spec(DEMO, v).sha256 for k, v in VARIANTS.items()}


def test_killed_and_concurrent_builds_leave_one_whole_build(cli, hashes, tmp_path: Path) -> None:
    """Kills at seeded moments, each while replacing the other variant; then the two variants
    built into the folder at once, over what the kills left."""
    out = tmp_path / "out"
    first = _build("a", out)
    assert first.returncode == 0, first.stderr
    folder = out / NAME
    held = _which(folder, hashes)
    rng = random.Random(SEED)
    moments = []
    for _ in range(KILLS):
        other = "b" if held == "a" else "a"
        moments.append(_build_killed(other, out, rng))
        now = _which(folder, hashes)
        assert now in (held, other), moments
        held = now
    procs = [subprocess.Popen(_command(which, out), cwd=REPO, env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for which in ("a", "b")]
    for proc in procs:  # neither is blocked by a lock or a temporary folder a kill left
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    held = _which(folder, hashes)
    assert sorted(p.name for p in out.iterdir()) == [NAME], moments  # leftovers removed
    check = cli("build", DEMO, *[a for o in VARIANTS[held] for a in ("--set", o)], "--check",
                "--out", out)
    assert check.code == 0, check.err
    print("killed:", "; ".join(moments))
