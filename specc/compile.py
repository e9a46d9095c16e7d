"""Stage 6 — compile: generated source → a live module → a TorchScript archive.

TorchScript needs the source of every class it compiles, so the generated source is first written
to a content-addressed cache file and imported from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from specc.fsutil import atomic_write_bytes


def _cache_dir() -> Path:
    root = os.environ.get("SPECC_CACHE") or os.path.join(tempfile.gettempdir(), "specc-modules")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_source(source: str) -> ModuleType:
    """Import generated source as a Python module (cached by content)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    name = f"specc_generated_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    path = _cache_dir() / f"{name}.py"
    if not path.exists() or path.read_text() != source:
        atomic_write_bytes(path, source.encode())
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def instantiate(source: str) -> nn.Module:
    """A fresh model from generated source (random weights, train mode)."""
    return load_source(source).build()


def script_module(module: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript of a generated model (``torch.jit.script``; works on CPU and CUDA)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def save_script(scripted: torch.jit.ScriptModule, path: Path) -> None:
    """Write a TorchScript archive atomically."""
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(scripted, buffer)
    atomic_write_bytes(path, buffer.getvalue())
