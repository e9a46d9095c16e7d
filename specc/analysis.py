"""Figures read off the graph: the schedule table, parameters, multiply-adds, receptive field,
and the build manifest. Nothing here recomputes shapes: they travel with the graph's nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import networkx as nx

from specc import __version__
from specc.graph import ordered_nodes

if TYPE_CHECKING:
    from specc.api import Compilation
    from specc.plan import Network


def group_of(node: str) -> str:
    """The cost group a node belongs to: ``backbone.<stage>``, ``aspp``, ``decoder``, ``head``, ``aux``."""
    parts = node.split(".")
    if parts[0] == "backbone":
        return ".".join(parts[:2])
    if parts[0] in ("aspp", "decoder", "aux"):
        return parts[0]
    return "head"


def costs(g: nx.DiGraph) -> dict[str, dict[str, int]]:
    """Parameters and multiply-adds (at the graph's input size) per group, in graph order."""
    out: dict[str, dict[str, int]] = {}
    for n in ordered_nodes(g):
        d = g.nodes[n]
        if d["op"] in ("input", "output"):
            continue
        grp = out.setdefault(group_of(n), {"params": 0, "macs": 0})
        grp["params"] += d["params"]
        grp["macs"] += d["macs"]
    return out


def totals(g: nx.DiGraph) -> tuple[int, int]:
    params = sum(d["params"] for _, d in g.nodes(data=True))
    macs = sum(d["macs"] for _, d in g.nodes(data=True))
    return params, macs


def schedule_rows(comp: Compilation) -> list[dict[str, Any]]:
    """Per unit: stride, dilation rates, reduction, feature size at the input size, channels."""
    g = comp.graph
    units = {u.path: u for u in comp.network.units()}
    rows = []
    for u in comp.schedule.units:
        node = g.nodes[units[u.path].out.node]
        prefix = u.path + "."
        params = sum(d["params"] for n, d in g.nodes(data=True) if n.startswith(prefix) or n == u.path)
        rows.append(dict(stage=u.stage, unit=u.name, type=u.unit.type,
                         nominal_stride=u.nominal_stride, stride=u.stride, rates=list(u.rates),
                         input_reduction=u.input_reduction, reduction=u.reduction,
                         feature_size=list(node["shape"][1:]), channels=node["shape"][0],
                         receptive_field=node["receptive_field"], params=params,
                         cascade=u.cascade))
    return rows


def encoder_receptive_field(net: Network) -> int:
    """Receptive field (input pixels) of the backbone's output."""
    return net.graph.nodes[net.aliases["backbone"]]["receptive_field"]


def info(comp: Compilation) -> dict[str, Any]:
    """The figures ``specc info`` shows (also its ``--json``)."""
    net, schedule = comp.network, comp.schedule
    params, macs = totals(net.graph)
    return {
        "name": net.name,
        "title": net.title,
        "params": params,
        "macs": macs,
        "input_size": list(net.input.size),
        "output_stride": schedule.output_stride,
        "receptive_field": encoder_receptive_field(net),
        "aspp_rates": list(schedule.aspp_rates),
        "multi_grid": list(schedule.multi_grid) if schedule.multi_grid else None,
        "stride_placement": schedule.stride_placement,
        "costs": costs(net.graph),
        "schedule": schedule_rows(comp),
        "taps": {p: t.node for p, t in net.taps.items()},
        **opaque_nodes(net),
    }


def opaque_nodes(net: Network) -> dict[str, list[str]]:
    """``{"opaque": [...]}``, the nodes specc cannot see inside (a timm encoder's stages: their
    multiply-adds and receptive fields are unknown), or nothing when there are none."""
    nodes = [n for n, d in net.graph.nodes(data=True) if d.get("opaque")]
    return {"opaque": nodes} if nodes else {}


def manifest(comp: Compilation) -> dict[str, Any]:
    """What a build folder says about its model: the ``info`` figures, the spec and its hashes,
    and every state-dict name with its shape. Deterministic: no times, no paths."""
    doc = comp.doc
    man = info(comp)
    man.update({
        "specc_version": __version__,
        "spec_sha256": doc.sha256,
        "architecture_sha256": doc.architecture_sha256,
        "num_classes": doc.spec.num_classes,
        "outputs": list(comp.network.outputs),
        "stages": list(comp.schedule.stages),
        "spec": doc.resolved,
        "state_dict": comp.state_shapes,
    })
    return man
