"""Warnings for legal but suspicious specs (shown by ``validate`` and ``build``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx

if TYPE_CHECKING:
    from specc.api import Document
    from specc.derive import Schedule


def advise(doc: Document, schedule: Schedule, g: nx.DiGraph) -> list[str]:
    """Human-readable warnings, each placed at the spec key it concerns."""
    notes: list[str] = []
    src = doc.raw.sources
    aspp = doc.spec.aspp
    if aspp is None:
        return notes
    if aspp.rates_output_stride is not None and aspp.rates_output_stride != schedule.output_stride:
        pass  # scaled on purpose
    elif aspp.rates_output_stride is None and schedule.output_stride == 16 and \
            list(aspp.rates) == [12, 24, 36]:
        notes.append(f"{src.locate('aspp.rates')}: warning: aspp.rates: (12, 24, 36) are the "
                     "paper's rates for output stride 8; at output stride 16 it uses (6, 12, 18)")
    return notes
