"""The layers stay apart: the compiler and the runtime are plain libraries, the CLI a shell.

* no module of ``specc`` (outside ``specc.cli``) or ``runtime`` imports typer, rich or the CLI;
* ``specc --help`` and ``specc validate`` do not import torch or matplotlib (fast start-up);
* every command of the app is defined under ``specc/cli/``.

Imports are checked in fresh interpreters, where ``sys.modules`` holds only what was imported.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import runtime
import specc

REPO = Path(__file__).resolve().parents[1]
V3 = REPO / "specs" / "deeplabv3_resnet101.yaml"
CLI_ONLY = ("typer", "rich", "specc.cli")
HEAVY = ("torch", "matplotlib")


def _library_modules() -> list[str]:
    """Every module of the compiler and the runtime (found on disk, so new ones count too)."""
    names = []
    for package in (specc, runtime):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name == "specc.cli" or info.name.startswith("specc.cli."):
                continue
            if info.name == "specc.__main__":  # `python -m specc` is the CLI's entry point
                continue
            names.append(info.name)
    return sorted(names)


# Imports each module in turn and records which of the watched top-level names each one brought
# in first; prints {module: [names]} as JSON.
_PROBE = """
import importlib, json, sys
watched = {watched!r}
def loaded():
    return {{w for w in watched if any(m == w or m.startswith(w + ".") for m in sys.modules)}}
seen, blame = loaded(), {{}}
for name in {modules!r}:
    importlib.import_module(name)
    now = loaded()
    if now - seen:
        blame[name] = sorted(now - seen)
    seen = now
print(json.dumps({{"blame": blame}}))
"""

_CLI_PROBE = """
import json, sys
from specc.cli import main
try:
    main({argv!r})
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_library_modules_are_found():
    modules = _library_modules()
    for name in ("specc.api", "specc.diff", "specc.importers", "specc.graphviz", "runtime.train",
                 "runtime.evaluate", "runtime.checkpoint", "runtime.report"):
        assert name in modules
    assert not [m for m in modules if m.startswith("specc.cli")]


def test_compiler_and_runtime_import_no_cli_libraries():
    proc = _python(_PROBE.format(watched=CLI_ONLY, modules=_library_modules()))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["blame"] == {}, f"modules that import {CLI_ONLY}: {result['blame']}"


@pytest.mark.parametrize("module", ["runtime.train", "runtime.evaluate", "runtime.checkpoint"])
def test_runtime_entry_points_alone_import_no_cli_libraries(module):
    proc = _python(_PROBE.format(watched=CLI_ONLY, modules=[module]))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["blame"] == {}


@pytest.mark.parametrize("argv", [["--help"], ["validate", str(V3)]], ids=["help", "validate"])
def test_cli_start_up_imports_no_torch(argv):
    proc = _python(_CLI_PROBE.format(argv=argv, heavy=HEAVY))
    result = json.loads(proc.stderr.splitlines()[-1])
    assert result["code"] in (0, None), proc.stdout + proc.stderr
    assert result["heavy"] == [], f"specc {' '.join(argv)} imported {result['heavy']}"


def test_every_command_is_defined_under_specc_cli():
    from specc.cli import app

    commands = app.registered_commands
    assert len(commands) >= 12
    for command in commands:
        module = command.callback.__module__
        assert module == "specc.cli" or module.startswith("specc.cli."), (command.name, module)
        source = Path(sys.modules[module].__file__ or "").resolve()
        assert source.is_relative_to(REPO / "specc" / "cli"), (command.name, source)
