"""``specc zoo``: the shipped model specs, where each comes from, its size and cost, and which
libraries' weights import into it.

A spec under ``specs/zoo/`` is another library's model exactly, and its file name starts with
that library (``torchvision_fcn_resnet50.yaml``); the specs directly under ``specs/`` are the
papers' models. Whether a library's weights fit is read off the blocks (``Block.weight_map``),
as ``specc import-weights`` reads it: every block has a counterpart (the whole model), only the
stem and the units do (``--backbone-only``), or the backbone has none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specc.analysis import totals
from specc.api import compile_spec, load_spec
from specc.importers import SOURCES
from specc.plan import Block, Network

#: The input size the multiply-adds are counted at (the papers' evaluation crop).
ZOO_SIZE = (513, 513)
#: The source named for the specs directly under ``specs/``.
PAPERS = "papers"


@dataclass(frozen=True)
class ZooEntry:
    """One shipped spec: its name and file, source, title, parameters, multiply-adds at
    :data:`ZOO_SIZE`, and per library what its weights import as (``model`` or ``backbone``)."""

    name: str
    path: str
    source: str
    title: str
    params: int
    macs: int
    weights: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "macs_at": list(ZOO_SIZE)}


def source_of(path: Path, root: Path) -> str:
    """The library a zoo spec reproduces (its file name's first word), or ``papers``."""
    relative = path.relative_to(root)
    if relative.parts[0] == "zoo" and len(relative.parts) > 1:
        return relative.stem.split("_", 1)[0]
    return PAPERS


def _maps(block: Block, library: str) -> bool:
    return not isinstance(block.weight_map(library, ""), str)


def importable(net: Network, library: str) -> str | None:
    """``model`` when every block has a counterpart in ``library``, ``backbone`` when only the
    stem and the units do, None when the backbone has none."""
    if not all(_maps(b, library) for b in (net.stem, *net.units())):
        return None
    return "model" if all(_maps(h, library) for h in net.heads) else "backbone"


def entry(path: Path, root: Path) -> ZooEntry:
    """The zoo figures of the spec at ``path`` (under ``root``).

    Raises:
        SpecError: an invalid spec.
    """
    size = f"input.size=[{ZOO_SIZE[0]}, {ZOO_SIZE[1]}]"
    comp = compile_spec(load_spec(path, [size]))
    net = comp.network
    params, macs = totals(net.graph)
    # the cascaded copies of the last stage (backbone.cascade: block5, block6, ...) have no
    # counterpart in any library, whose ResNets end at layer4: neither the whole model nor the
    # whole backbone can be taken (import-weights takes blocks 1-4 and names the rest)
    weights = {} if getattr(comp.spec.backbone, "cascade", 0) else {
        lib: kind for lib in SOURCES if (kind := importable(net, lib)) is not None}
    return ZooEntry(name=net.name, path=path.relative_to(root).as_posix(),
                    source=source_of(path, root), title=net.title, params=params, macs=macs,
                    weights=weights)


def zoo(root: Path) -> list[ZooEntry]:
    """Every spec under ``root`` (``specs/``): the zoo's first, by source and name, then the
    papers'."""
    entries = [entry(p, root) for p in sorted(root.rglob("*.yaml"))]
    return sorted(entries, key=lambda e: (e.source == PAPERS, e.source, e.name))
