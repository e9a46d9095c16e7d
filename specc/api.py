"""The Python API: the compiler stages strung together, mirroring the command line.

>>> doc = load_spec("specs/deeplabv3plus_xception.yaml", ["backbone.output_stride=8"])
>>> built = build(doc)
>>> built.module(torch.randn(1, 3, 65, 65))["out"].shape
torch.Size([1, 21, 65, 65])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from specc import __version__
from specc.derive import Schedule, derive
from specc.errors import SpecError, SpecErrors
from specc.graph import build_graph
from specc.load import RawSpec, canonical_sha256, load
from specc.spec import Spec
from specc.validate import validate

#: Sections of a spec that do not change the network (training protocol and data).
NON_ARCHITECTURE_KEYS = ("train", "data")


@dataclass(frozen=True)
class Document:
    """A validated spec with where it came from."""

    spec: Spec
    raw: RawSpec
    #: The resolved spec (defaults filled in) as plain JSON values.
    resolved: dict[str, Any]
    #: sha256 of ``resolved`` as canonical JSON.
    sha256: str

    @property
    def path(self) -> Path:
        return self.raw.path

    @property
    def architecture_sha256(self) -> str:
        """sha256 of the parts of the spec that shape the network (not train/data)."""
        return architecture_sha256(self.resolved)


def architecture_sha256(resolved: dict[str, Any]) -> str:
    """Hash of a resolved spec without its training and data sections."""
    return canonical_sha256({k: v for k, v in resolved.items() if k not in NON_ARCHITECTURE_KEYS})


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Document:
    """Load and validate a spec file, with ``extends:`` and ``key=value`` overrides applied.

    Raises:
        SpecError / SpecErrors: the file is missing or invalid; messages carry file:line:col.
    """
    raw = load(path, tuple(overrides))
    spec = validate(raw)
    resolved = spec.model_dump(mode="json")
    return Document(spec=spec, raw=raw, resolved=resolved, sha256=canonical_sha256(resolved))


def _located(doc: Document, err: SpecError) -> SpecError:
    if err.location is not None:
        return err
    return doc.raw.sources.error(err.path, err.detail) if err.path else SpecError(
        err.detail, location=doc.raw.sources.locate(()))


def compile_graph(doc: Document) -> tuple[Schedule, nx.DiGraph]:
    """Derive the schedule and build the linted graph, placing any error at its spec key."""
    try:
        schedule = derive(doc.spec)
        return schedule, build_graph(doc.spec, schedule)
    except SpecError as err:
        raise _located(doc, err) from None


@dataclass
class Built:
    doc: Document
    schedule: Schedule
    graph: nx.DiGraph
    source: str
    manifest: dict[str, Any]
    module: Any = field(default=None, repr=False)


def emit_source(doc: Document, graph: nx.DiGraph) -> str:
    from specc.emit import emit

    return emit(graph, sha256=doc.sha256)


def build(doc: Document, *, instantiate: bool = True) -> Built:
    """Compile a document to source and (by default) a live ``nn.Module``."""
    from specc.analysis import manifest

    schedule, graph = compile_graph(doc)
    source = emit_source(doc, graph)
    module = None
    state: dict[str, list[int]] | None = None
    if instantiate:
        from specc.compile import instantiate as make

        module = make(source)
        state = {k: list(v.shape) for k, v in module.state_dict().items()}
    man = manifest(doc, schedule, graph, state)
    return Built(doc=doc, schedule=schedule, graph=graph, source=source, manifest=man,
                 module=module)


def manifest_json(man: dict[str, Any]) -> str:
    return json.dumps(man, indent=2, sort_keys=True) + "\n"


__all__ = ["Built", "Document", "SpecError", "SpecErrors", "__version__", "build",
           "compile_graph", "load_spec"]
