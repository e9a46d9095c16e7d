"""``specc graph``: the model DAG as Graphviz DOT (and SVG/PNG), grouped by stage.

Nodes sit in one cluster per stage (stem, each backbone stage, ASPP, decoder, head, aux), are
filled by reduction (input size / map size), and say their dilation; dilated layers get a heavier border. With
``--collapse`` each backbone unit is one node and runs of identical units one node
(``unit1–unit16 ×16`` for Xception-65's middle flow). The DOT text is written here, by hand and
deterministically; SVG and PNG come from Graphviz's ``dot`` when it is installed, else from a
simpler matplotlib drawing.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from specc.analysis import group_of
from specc.errors import SpeccError
from specc.graph import ordered_nodes
from specc.plan import Network, Unit

#: Fill colour per reduction (light to dark as the map shrinks); others are grey.
STRIDE_COLORS = {1: "#ffffff", 2: "#fff7bc", 4: "#d9f0a3", 8: "#a6d8f0", 16: "#fdd0a2",
                 32: "#fc9272"}
OTHER_COLOR = "#d9d9d9"


def color_of(reduction: int) -> str:
    return STRIDE_COLORS.get(reduction, OTHER_COLOR)


def cluster_of(node: str) -> str:
    """The cluster a node is drawn in: ``backbone.<stage>``, aspp, decoder, aux, head; the input
    and output stand alone (empty string)."""
    if node in ("input", "output"):
        return ""
    return group_of(node)


# ------------------------------------------------------------------------------------------------
# The drawn graph: nodes with a label, a cluster and a colour


@dataclass
class Drawn:
    """A graph ready to draw: node → attributes (label, name, cluster, reduction, dilated)."""

    title: str
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)


def _layer_label(name: str, d: dict[str, Any]) -> str:
    cluster = cluster_of(name)
    short = name[len(cluster) + 1:] if cluster and name.startswith(cluster + ".") else name
    op = d["op"]
    head = op
    if op in ("conv", "sepconv"):
        k = d["kernel"]
        head = f"{'sep ' if op == 'sepconv' else ''}conv {k}×{k}"
        if d.get("groups", 1) > 1 and op == "conv":
            head = f"dw conv {k}×{k}"
        if d.get("stride", 1) != 1:
            head += f" /{d['stride']}"
        if d.get("dilation", 1) != 1:
            head += f" d={d['dilation']}"
    elif op in ("maxpool", "subsample") and d.get("stride", 1) != 1:
        head += f" /{d['stride']}"
    c, h, w = d["shape"]
    what = "" if op == short else f"\n{head}"
    return f"{short}{what}\n{c}×{h}×{w}  1/{d['reduction']}"


def _plain(node: str) -> str:
    """A node's name without the ``backbone.`` prefix (for drawings without clusters)."""
    return node.removeprefix("backbone.")


def layers(net: Network) -> Drawn:
    """Every layer a node."""
    g = net.graph
    out = Drawn(title=net.title or net.name)
    for n in ordered_nodes(g):
        d = g.nodes[n]
        out.nodes[n] = {"label": _layer_label(n, d), "cluster": cluster_of(n), "name": _plain(n),
                        "reduction": d["reduction"],
                        "dilated": d.get("dilation", 1) > 1}
    order = {n: i for i, n in enumerate(out.nodes)}
    out.edges = sorted(g.edges, key=lambda e: (order[e[1]], order[e[0]]))
    return out


def collapsed(net: Network) -> Drawn:
    """Each backbone unit one node; consecutive identical units of a stage one node."""
    g = net.graph
    runs: list[list[Unit]] = []
    for u in net.units():
        prev = runs[-1][-1] if runs else None
        if prev is not None and prev.stage == u.stage and prev.signature() == u.signature():
            runs[-1].append(u)
        else:
            runs.append([u])
    owner: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    for run in runs:
        first, last = run[0], run[-1]
        stage = f"backbone.{first.stage}"
        name = f"{stage}.{first.name}" + (f"–{last.name}" if len(run) > 1 else "")
        for u in run:
            for n in g.nodes:
                if n == u.path or n.startswith(u.path + "."):
                    owner[n] = name
        c, h, w = first.out.shape
        times = f" ×{len(run)}" if len(run) > 1 else ""
        label = (f"{name[len(stage) + 1:]}{times}\n{first.describe()}\n"
                 f"{c}×{h}×{w}  1/{first.out.reduction}")
        info[name] = {"label": label, "cluster": stage, "name": _plain(name) + times,
                      "reduction": first.out.reduction,
                      "dilated": any(r > 1 for r in first.rates)}
    full = layers(net)
    out = Drawn(title=full.title)
    for n, attrs in full.nodes.items():
        target = owner.get(n, n)
        if target not in out.nodes:
            out.nodes[target] = info.get(target, attrs)
    seen: set[tuple[str, str]] = set()
    for u, v in full.edges:
        e = (owner.get(u, u), owner.get(v, v))
        if e[0] != e[1] and e not in seen:
            seen.add(e)
            out.edges.append(e)
    return out


# ------------------------------------------------------------------------------------------------
# DOT


def _q(text: str) -> str:
    """A DOT string literal: quotes and backslashes escaped, newlines as centred line breaks."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(drawn: Drawn) -> str:
    """The DOT text of a drawn graph: clusters in network order, a legend of reductions."""
    lines = ["digraph specc {",
             f"  graph [label={_q(drawn.title)}, labelloc=t, fontname=Helvetica, "
             "rankdir=TB, nodesep=0.25, ranksep=0.3, newrank=true];",
             '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10, '
             'penwidth=1];',
             "  edge [arrowsize=0.6];"]
    clusters: dict[str, list[str]] = {}
    for n, attrs in drawn.nodes.items():
        clusters.setdefault(attrs["cluster"], []).append(n)
    for i, (cluster, members) in enumerate(clusters.items()):
        indent = "  "
        if cluster:
            lines.append(f"  subgraph cluster_{i} {{")
            lines.append(f"    label={_q(cluster)}; style=rounded; color=\"#888888\"; "
                         "fontname=Helvetica;")
            indent = "    "
        for n in members:
            a = drawn.nodes[n]
            extra = ", penwidth=2.5" if a["dilated"] else ""
            lines.append(f"{indent}{_q(n)} [label={_q(a['label'])}, "
                         f"fillcolor={_q(color_of(a['reduction']))}{extra}];")
        if cluster:
            lines.append("  }")
    for u, v in drawn.edges:
        lines.append(f"  {_q(u)} -> {_q(v)};")
    strides = sorted({a["reduction"] for a in drawn.nodes.values()})
    lines.append("  subgraph cluster_legend {")
    lines.append('    label="input size / map size (thick border: dilated)"; style=rounded; '
                 'color="#888888"; fontname=Helvetica;')
    for s in strides:
        lines.append(f"    {_q(f'legend_os{s}')} [label={_q(f'1/{s}')}, "
                     f"fillcolor={_q(color_of(s))}];")
    for s, t in itertools.pairwise(strides):
        lines.append(f"    {_q(f'legend_os{s}')} -> {_q(f'legend_os{t}')} [style=invis];")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# SVG / PNG


def render_dot(dot_text: str, fmt: str) -> bytes:
    """SVG or PNG bytes from Graphviz's ``dot``.

    Raises:
        SpeccError: ``dot`` is not installed or fails.
    """
    exe = shutil.which("dot")
    if exe is None:
        raise SpeccError(f"--format {fmt} needs Graphviz's 'dot' program, which is not "
                         "installed; install graphviz (e.g. apt-get install graphviz), use "
                         "--renderer matplotlib, or use --format dot")
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True,
                          check=False, timeout=300)
    if proc.returncode != 0:
        raise SpeccError(f"dot failed: {proc.stderr.decode(errors='replace').strip()[:500]}")
    return proc.stdout


def render_matplotlib(drawn: Drawn, fmt: str) -> bytes:
    """SVG or PNG bytes drawn with matplotlib: one row per depth, clusters by colour only."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    g = nx.DiGraph()
    g.add_nodes_from(drawn.nodes)
    g.add_edges_from(drawn.edges)
    depth: dict[str, int] = {}
    for n in nx.topological_sort(g):
        depth[n] = max((depth[p] + 1 for p in g.predecessors(n)), default=0)
    rows: dict[int, list[str]] = {}
    for n in drawn.nodes:  # network order within a row
        rows.setdefault(depth[n], []).append(n)
    width = max(len(r) for r in rows.values())
    pos = {n: (i - (len(r) - 1) / 2, -k) for k, r in rows.items() for i, n in enumerate(r)}
    fig = Figure(figsize=(max(6.0, 2.6 * width), max(4.0, 0.75 * len(rows))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(drawn.title, fontsize=10)
    for u, v in drawn.edges:
        ax.annotate("", xy=pos[v], xytext=pos[u],
                    arrowprops={"arrowstyle": "->", "color": "#777777", "lw": 0.6,
                                "shrinkA": 9, "shrinkB": 9})
    for n, a in drawn.nodes.items():
        x, y = pos[n]
        label = "\n".join([a["name"], *a["label"].split("\n")[1:]])  # no clusters: full name
        ax.text(x, y, label, ha="center", va="center", fontsize=5,
                bbox={"boxstyle": "round,pad=0.3", "fc": color_of(a["reduction"]),
                      "ec": "black", "lw": 1.6 if a["dilated"] else 0.5})
    ax.set_xlim(-width / 2 - 0.5, width / 2 + 0.5)
    ax.set_ylim(-len(rows), 1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=110, bbox_inches="tight")
    return buffer.getvalue()

