"""Shared fixtures for the compiler tests: the shipped specs, cached small builds, CLI runners.

Builds are expensive (instantiating ResNet-101 and scripting it take seconds), so every shipped
spec is built once per test session (per xdist worker) at a 65×65 crop and shared read-only.
Nothing here defines fixtures named like tests/runtime's (kit, trees, make_tree).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "specs").rglob("*.yaml"))
#: A crop small enough for a quick forward pass; the fixed image-pooling kernel derives from it.
SMALL_CROP = 65
SMALL = (f"input.size=[{SMALL_CROP}, {SMALL_CROP}]",)


def spec_id(path: Path) -> str:
    """``specs/zoo/torchvision_deeplabv3_resnet50.yaml`` → ``zoo/torchvision_deeplabv3_resnet50``."""
    return str(path.relative_to(REPO / "specs").with_suffix(""))


def write(path: Path, text: str | bytes) -> Path:
    """Write a spec file (text as UTF-8, bytes as they are) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def set_threads() -> None:
    """Share the cores between xdist workers instead of oversubscribing them."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


# --------------------------------------------------------------------------------------------
# Command line


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture[str], *args: Any) -> CliResult:
    """Run ``specc ARGS`` in this process (``specc.cli.main``) and capture its output."""
    from specc.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def run_specc(*args: Any, cwd: Path = REPO, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m specc ARGS`` in a fresh interpreter (the real command line)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run([sys.executable, "-m", "specc", *map(str, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """``cli("validate", path)`` → CliResult(code, out, err), in process."""
    return lambda *args: run_cli(capsys, *args)


@pytest.fixture(scope="session")
def specc_proc() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``specc_proc("build", "--all", "--check", cwd=..., env=...)``: a fresh interpreter."""
    return run_specc


# --------------------------------------------------------------------------------------------
# Builds


@pytest.fixture(scope="session")
def load() -> Callable[..., Any]:
    """``load("specs/x.yaml", *overrides)`` → the validated Document (paths from the repo)."""
    from specc.api import load_spec

    return lambda path, *overrides: load_spec(REPO / path, list(overrides))


@dataclass
class SmallBuild:
    """A shipped spec built at the small crop, in eval mode, run once on a fixed input."""

    path: Path
    built: Any  # specc.api.Built
    x: Any  # the input tensor (1, 3, 65, 65)
    #: The eager outputs on ``x``.
    outputs: dict[str, Any]
    #: Output shape of every submodule during that forward pass, by qualified name.
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Shape of the first input of every submodule during that pass.
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


class BuildCache:
    """Lazily builds each spec once per session; tests must not change the modules."""

    def __init__(self) -> None:
        self._small: dict[Path, SmallBuild] = {}

    def small(self, path: Path) -> SmallBuild:
        if path not in self._small:
            self._small[path] = self._build_small(path)
        return self._small[path]

    @staticmethod
    def _build_small(path: Path) -> SmallBuild:
        import torch

        from specc.api import build, load_spec

        set_threads()
        torch.manual_seed(0)
        built = build(load_spec(path, SMALL))
        module = built.module.eval()
        shapes: dict[str, tuple[int, ...]] = {}
        inputs: dict[str, tuple[int, ...]] = {}

        def shape(value: Any) -> tuple[int, ...]:
            return tuple(value.shape) if isinstance(value, torch.Tensor) else ()

        def recorder(name: str) -> Callable[..., None]:
            def hook(_module: Any, args: tuple[Any, ...], out: Any) -> None:
                shapes[name] = shape(out)
                inputs[name] = shape(args[0]) if args else ()
            return hook

        hooks = [sub.register_forward_hook(recorder(name))
                 for name, sub in module.named_modules() if name]
        x = torch.randn(1, 3, SMALL_CROP, SMALL_CROP, generator=torch.Generator().manual_seed(1))
        try:
            with torch.no_grad():
                outputs = {k: v.clone() for k, v in module(x).items()}
        finally:
            for h in hooks:
                h.remove()
        return SmallBuild(path, built, x, outputs, shapes, inputs)


@pytest.fixture(scope="session")
def builds() -> Iterator[BuildCache]:
    """``builds.small(path)``: the spec built at 65×65, eval mode, with one forward pass done."""
    yield BuildCache()
