"""Stage 6 — compile: generated source → a live module (TorchScript: specc.artifacts).

TorchScript needs the source of every class it compiles, so the generated source is first written
to a content-addressed cache file and imported from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

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
