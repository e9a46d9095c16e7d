"""Generated code is compiled in memory: nothing planted in a shared cache folder is executed,
and TorchScript still finds the source of every generated class."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import linecache
import py_compile
import tempfile
from pathlib import Path

import torch

from specc.artifacts import script_module
from specc.compile import load_source


def _plant(cache: Path, name: str, source: str, payload: str) -> None:
    """What an attacker could leave in a shared cache: the expected source, and bytecode that
    Python would run instead of it (an unchecked-hash .pyc is used without looking at the .py)."""
    cache.mkdir(parents=True)
    (cache / f"{name}.py").write_text(source)
    evil = cache / "evil.py"
    evil.write_text(payload)
    pyc = importlib.util.cache_from_source(str(cache / f"{name}.py"))
    py_compile.compile(str(evil), cfile=pyc, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def test_planted_bytecode_in_a_shared_cache_is_never_executed(tmp_path: Path,
                                                              monkeypatch) -> None:
    source = f"VALUE = 42\n# {tmp_path}\n"  # unique: never imported before in this process
    name = "specc_generated_" + hashlib.sha256(source.encode()).hexdigest()[:20]
    marker = tmp_path / "planted-code-ran"
    payload = f"open({str(marker)!r}, 'w').close()\nVALUE = 0\n"
    shared, temp = tmp_path / "shared", tmp_path / "tmp"
    _plant(shared, name, source, payload)
    _plant(temp / "specc-modules", name, source, payload)
    monkeypatch.setenv("SPECC_CACHE", str(shared))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    before = sorted(p for p in tmp_path.rglob("*"))

    module = load_source(source)

    assert module.VALUE == 42
    assert not marker.exists()
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing read back, nothing written


def test_generated_classes_have_source_for_torchscript() -> None:
    """TorchScript reads the classes' source through inspect: it must work without a file."""
    source = ("import torch\nfrom torch import nn\n\n\nclass Twice(nn.Module):\n"
              "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        return 2 * x\n"
              "\n\ndef build() -> nn.Module:\n    return Twice()\n")
    module = load_source(source)
    assert "return 2 * x" in inspect.getsource(module.Twice)
    linecache.clearcache()  # what any library may do: the source must still be found
    scripted = script_module(module.build())
    assert torch.equal(scripted(torch.ones(2)), torch.full((2,), 2.0))
