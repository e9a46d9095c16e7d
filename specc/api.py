"""The Python API: a spec document and its compilation, mirroring the command line.

>>> doc = load_spec("specs/deeplabv3plus_xception.yaml", ["backbone.output_stride=8"])
>>> built = build(doc)
>>> built.module(torch.randn(1, 3, 65, 65))["out"].shape
torch.Size([1, 21, 65, 65])

Every command reaches the pipeline through one :class:`Compilation` per spec: it derives the
schedule, lowers the network, emits the source and instantiates the module lazily, each at most
once, so a command pays only for the stages it reads.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import networkx as nx

from specc import __version__
from specc.advice import advise
from specc.analysis import manifest, totals
from specc.derive import Schedule, derive
from specc.emit import emit
from specc.errors import SpecError, SpecErrors
from specc.graph import lower
from specc.load import RawSpec, SourceMap, canonical_sha256, load, upgrade
from specc.plan import Network
from specc.spec import Spec
from specc.validate import validate

if TYPE_CHECKING:
    from torch import nn

#: Most parameters a network may hold: 8 GB of float32 weights, 100× the largest DeepLab
#: (Xception-71, ~60 M); larger is a typo in a channel count, not a model.
MAX_PARAMETERS = 2_000_000_000

#: Sections of a spec that do not change the network (training protocol and data).
NON_ARCHITECTURE_KEYS = ("train", "data", "accepted_warnings")


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

    @classmethod
    def from_resolved(cls, resolved: dict[str, Any], origin: Path) -> Document:
        """A document from a resolved spec stored elsewhere (a manifest, a checkpoint).

        Raises:
            pydantic.ValidationError: it is not a valid spec (for this version of specc).
            SpecError: it holds both the old and the new name of a renamed key.
        """
        resolved = copy.deepcopy(resolved)
        upgrade(resolved)  # key names of older versions (specc.load.RENAMED)
        spec = Spec.model_validate(resolved)
        data = spec.model_dump(mode="json")
        digest = canonical_sha256(data)
        raw = RawSpec(data=data, sources=SourceMap(str(origin)), path=origin, sha256=digest,
                      files=(origin,))
        return cls(spec=spec, raw=raw, resolved=data, sha256=digest)


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


class Compilation:
    """One spec compiled: every stage computed on first use and kept.

    Errors of the derive and lower stages are placed at their spec key in the spec's file.
    """

    #: How many networks have been lowered in this process (a command lowers each spec once).
    lowered: ClassVar[int] = 0

    def __init__(self, doc: Document) -> None:
        self.doc = doc

    @property
    def spec(self) -> Spec:
        return self.doc.spec

    @cached_property
    def schedule(self) -> Schedule:
        """The stride and dilation of every unit, and the effective ASPP rates."""
        try:
            return derive(self.doc.spec)
        except SpecError as err:
            raise _located(self.doc, err) from None

    @cached_property
    def network(self) -> Network:
        """The lowered network: blocks, taps and the linted layer graph."""
        schedule = self.schedule
        try:
            net = lower(self.doc.spec, schedule)
        except SpecError as err:
            raise _located(self.doc, err) from None
        Compilation.lowered += 1
        return net

    @property
    def graph(self) -> nx.DiGraph:
        """The layer graph, shapes on every node."""
        return self.network.graph

    @cached_property
    def source(self) -> str:
        """The generated ``model.py``."""
        return emit(self.network, sha256=self.doc.sha256)

    @cached_property
    def module(self) -> nn.Module:
        """A fresh model from the source (random weights, train mode). Each compilation makes
        one; call :func:`specc.compile.instantiate` on :attr:`source` for another."""
        from specc.compile import instantiate  # torch: kept out of validate/info start-up

        self._check_parameters()
        try:
            return instantiate(self.source)
        except MemoryError:
            raise self._too_large("there is not enough memory for it") from None
        except RuntimeError as err:
            if "allocate" not in str(err):
                raise
            raise self._too_large("there is not enough memory for it") from None

    def _check_parameters(self) -> None:
        """Refuse, before allocating anything, a network past :data:`MAX_PARAMETERS`.

        Each field is bounded on its own; their product (channels × kernel² × channels, a
        width multiplier, an expansion) can still ask for more memory than any machine has.

        Raises:
            SpecError: the network would hold more than MAX_PARAMETERS parameters.
        """
        count, _macs = totals(self.graph)  # counted on the layer graph: nothing is allocated
        if count > MAX_PARAMETERS:
            raise self._too_large(f"it would hold {count:,} parameters, more than the "
                                  f"{MAX_PARAMETERS:,} specc builds")

    def _too_large(self, why: str) -> SpecError:
        title = self.network.title.rstrip(".")
        return SpecError(f"the network is too large to build: {why} ({title}); reduce channels, "
                         "kernels, width_multiplier or expansion",
                         location=self.doc.raw.sources.locate(()))

    @cached_property
    def state_shapes(self) -> dict[str, list[int]]:
        """Every state-dict name with its shape (from a model on the meta device: no memory)."""
        import torch  # kept out of validate/info start-up

        from specc.compile import instantiate

        with torch.device("meta"):
            model = instantiate(self.source)
        return {k: list(v.shape) for k, v in model.state_dict().items()}

    @cached_property
    def warnings(self) -> list[str]:
        """Warnings for legal but suspicious choices (``file:line:col: warning: ...``)."""
        return advise(self)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """What ``manifest.json`` holds."""
        return manifest(self)


def compile_spec(doc: Document) -> Compilation:
    """The compilation of a document (nothing is computed until it is read)."""
    return Compilation(doc)


def build(doc: Document) -> Compilation:
    """A document's compilation; ``.module`` is the live ``nn.Module``, ``.graph`` the layer
    graph, ``.manifest`` what ``manifest.json`` holds."""
    return Compilation(doc)


def manifest_json(man: dict[str, Any]) -> str:
    return json.dumps(man, indent=2, sort_keys=True) + "\n"


__all__ = ["Compilation", "Document", "SpecError", "SpecErrors", "__version__", "build",
           "compile_spec", "load_spec"]
