"""Shared helpers of the runtime tests: a tiny version of the small spec, one trained run, the CLI.

The trained run is made once per test process and cached here (test modules import this module,
so they share it); tests that change a run work on a copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from runtime.report import SILENT, Reporter

# One intra-op thread: on a shared two-core machine, OpenMP's spinning worker threads make small
# convolutions ten times slower as soon as another process competes for the cores.
torch.set_num_threads(1)
ENV_ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same for the `specc` subprocesses

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "specs" / "deeplabv3plus_mobilenetv2.yaml"
NUM_CLASSES = 5
# The shipped small spec, shrunk to run in seconds on a CPU: a quarter-width MobileNetV2, thin
# ASPP and decoder, 64 px synthetic images and 65 px crops (the paper's 513 = 8k + 1 shape).
TINY = [
    "backbone.width_multiplier=0.25",
    f"num_classes={NUM_CLASSES}",
    "aspp.channels=32",
    "aspp.projection.channels=32",
    "decoder.channels=32",
    "decoder.projection=16",
    "data.crop=[65,65]",
    "data.synthetic.size=64",
    "data.synthetic.train_length=64",
    "data.synthetic.val_length=6",
    "train.batch_size=4",
    "train.workers=0",
    "train.log_every=1",
    "train.lr=0.02",
]
BASE_ITERS = 40

_CACHE: dict[str, Path] = {}


def sets(overrides: Sequence[str]) -> list[str]:
    """``["a=1", "b=2"]`` → ``["--set", "a=1", "--set", "b=2"]``."""
    return [arg for o in overrides for arg in ("--set", o)]


def quiet() -> Reporter:
    """A reporter that shows nothing (progress off the test output)."""
    return SILENT


def train_tiny(run_dir: Path, extra: Sequence[str] = (), **kwargs: object) -> object:
    """Train the tiny spec in this process; returns runtime.train.TrainResult."""
    from runtime.train import train
    from specc.api import load_spec

    doc = load_spec(SPEC, [*TINY, *extra])
    return train(doc, run_dir, reporter=quiet(), **kwargs)  # type: ignore[arg-type]


def base_run(factory: pytest.TempPathFactory) -> Path:
    """A finished run of the tiny spec (BASE_ITERS iterations at output stride 16), made once."""
    if "base" not in _CACHE:
        run = factory.mktemp("base") / "run"
        train_tiny(run, [f"train.iters={BASE_ITERS}", f"train.save_every={BASE_ITERS // 2}"])
        _CACHE["base"] = run
    return _CACHE["base"]


def random_network() -> torch.nn.Module:
    """The tiny spec's network with random weights and non-trivial BN statistics, in eval mode.

    Convolutions get He-initialized weights and no bias, so the logits keep a scale of about one
    and vary over the image (with the default init they shrink layer by layer until the
    classifier's bias alone picks one class everywhere, which would hide a misplaced window or a
    wrong batch)."""
    from specc.api import build, load_spec

    torch.manual_seed(0)
    net = build(load_spec(SPEC, TINY)).module
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    module.bias.zero_()
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run folder (the checkpoint symlink stays a relative symlink)."""
    shutil.copytree(run, dest, symlinks=True)
    return dest


def cli(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``specc ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    from specc.cli import main

    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def python() -> str:
    """The interpreter running the tests (the project's venv)."""
    return sys.executable


def wait_for(proc: subprocess.Popen[bytes], path: Path, timeout: float = 120) -> None:
    """Wait until ``path`` exists while ``proc`` (a ``specc train`` started with ``stderr=PIPE``)
    runs; fails with its stderr if it ends first, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, f"no {path.name} within {timeout:.0f} s"
        time.sleep(0.02)
