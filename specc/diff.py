"""``specc diff``: what actually changes between two variants, read off their graphs.

A and B are spec files (``extends:`` and ``--set-a``/``--set-b`` overrides resolved) or built
folders holding a ``manifest.json``. :func:`compare` returns a JSON-ready report with only what
differs, section by section — the resolved spec, the stride/dilation schedule, parameters and
multiply-adds, the graph's nodes and edges, and whether a checkpoint of A loads into B — and
:func:`render_markdown` / :func:`render_rich` lay it out. Exit codes: 0 identical, 1 differ, 2 error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import networkx as nx
import typer

from specc.analysis import group_of
from specc.errors import SpeccError
from specc.graph import ordered_nodes
from specc.load import format_path

#: Node attributes that record provenance, not architecture.
IGNORED_NODE_ATTRS = ("spec_key",)
#: Per-unit schedule attributes compared (output stride and receptive field are shown per stage).
UNIT_ATTRS = ("type", "channels", "nominal_stride", "stride", "rates", "feature_size")
#: Items listed per category in tables before "… N more" (JSON always has every item).
LIST_LIMIT = 20


# ------------------------------------------------------------------------------------------------
# Loading a side


@dataclass
class Side:
    """One variant: its manifest (figures as built), its graph, and its parameter shapes."""

    label: str
    manifest: dict[str, Any]
    graph: nx.DiGraph | None
    source: str | None = None
    note: str = ""
    _state: dict[str, list[int]] | None = field(default=None, repr=False)

    def state(self) -> dict[str, list[int]] | None:
        """Parameter and buffer names → shapes, from the manifest or by instantiating the source
        on the meta device (no memory, no initialization)."""
        if self._state is None:
            if "state_dict" in self.manifest:
                self._state = {k: list(v) for k, v in self.manifest["state_dict"].items()}
            elif self.source is not None:
                import torch

                from specc.compile import instantiate

                with torch.device("meta"):
                    module = instantiate(self.source)
                self._state = {k: list(v.shape) for k, v in module.state_dict().items()}
        return self._state


def load_side(path: Path, overrides: list[str], which: str) -> Side:
    """A spec file or a built folder (or its manifest.json) as a :class:`Side`.

    Raises:
        SpecError: the spec is invalid. SpeccError: a folder without manifest.json, an unreadable
        manifest, or overrides given for a built folder.
    """
    manifest_path = None
    if path.is_dir():
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise SpeccError(f"{path}: expected a spec file or a built folder holding "
                             "manifest.json; this folder has no manifest.json")
    elif path.suffix == ".json":
        manifest_path = path
    if manifest_path is None:
        from specc.api import build, load_spec

        doc = load_spec(path, overrides)
        built = build(doc, instantiate=False)
        label = str(path) + "".join(f" --set {o}" for o in overrides)
        return Side(label=label, manifest=built.manifest, graph=built.graph, source=built.source)
    if overrides:
        raise SpeccError(f"--set-{which}: overrides apply to spec files; {path} is a build "
                         "(give the spec file instead)")
    return _side_from_manifest(manifest_path)


def _side_from_manifest(path: Path) -> Side:
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpeccError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpeccError(f"{path}: not a readable manifest ({exc})") from None
    missing = [k for k in ("spec", "params", "macs", "costs", "schedule") if k not in
               (man if isinstance(man, dict) else {})]
    if missing:
        raise SpeccError(f"{path}: not a specc manifest; missing {', '.join(missing)}")
    from pydantic import ValidationError

    from specc.derive import derive
    from specc.graph import build_graph
    from specc.spec import Spec

    graph, source, note = None, None, ""
    try:
        spec = Spec.model_validate(man["spec"])
        graph = build_graph(spec, derive(spec))
        if "state_dict" not in man:
            from specc.emit import emit

            source = emit(graph, sha256=man.get("spec_sha256", ""))
    except (ValidationError, SpeccError) as exc:
        note = (f"the spec in {path} no longer compiles with this specc "
                f"({str(exc).splitlines()[0]}); its graph is not compared")
    return Side(label=str(path.parent if path.name == "manifest.json" else path), manifest=man,
                graph=graph, source=source, note=note)


# ------------------------------------------------------------------------------------------------
# Comparing


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def spec_changes(a: Any, b: Any, key: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Changed key paths of two resolved specs: mappings and lists of mappings key by key, lists
    of plain values and everything else as one value (``aspp.rates``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in [*a, *(k for k in b if k not in a)]:
            out += spec_changes(a.get(k), b.get(k), (*key, k))
        return out
    nested = any(isinstance(x, dict | list) for x in [*(a or []), *(b or [])]) \
        if isinstance(a, list) and isinstance(b, list) else False
    if nested and len(a) == len(b):
        return [c for i, (x, y) in enumerate(zip(a, b, strict=True))
                for c in spec_changes(x, y, (*key, i))]
    if a != b:
        return [{"path": format_path(key), "a": a, "b": b}]
    return []


def _ab(a: Any, b: Any) -> dict[str, Any]:
    return {"a": _jsonable(a), "b": _jsonable(b)}


def _stage_rows(man: dict[str, Any]) -> dict[str, dict[str, Any]]:
    stages: dict[str, dict[str, Any]] = {}
    for r in man["schedule"]:
        s = stages.setdefault(r["stage"], {"rates": set()})
        s.update(output_stride=r["output_stride"], feature_size=r["feature_size"],
                 receptive_field=r["receptive_field"])
        s["rates"].update(r["rates"])
    for s in stages.values():
        s["rates"] = sorted(s["rates"])
    return stages


def schedule_changes(ma: dict[str, Any], mb: dict[str, Any]) -> dict[str, Any]:
    """Output stride, input size, ASPP rates, receptive field; per stage and per unit."""
    out: dict[str, Any] = {}
    for key in ("input_size", "output_stride", "aspp_rates", "receptive_field"):
        if ma.get(key) != mb.get(key):
            out[key] = _ab(ma.get(key), mb.get(key))
    sa, sb = _stage_rows(ma), _stage_rows(mb)
    stages = []
    for name in [*sa, *(s for s in sb if s not in sa)]:
        if name not in sa or name not in sb:
            continue
        ch = {k: _ab(sa[name][k], sb[name][k]) for k in sa[name] if sa[name][k] != sb[name][k]}
        if ch:
            stages.append({"stage": name, "changes": ch})
    if stages:
        out["stages"] = stages
    if [s for s in sa if s not in sb]:
        out["stages_removed"] = [s for s in sa if s not in sb]
    if [s for s in sb if s not in sa]:
        out["stages_added"] = [s for s in sb if s not in sa]
    ua = {(r["stage"], r["unit"]): r for r in ma["schedule"]}
    ub = {(r["stage"], r["unit"]): r for r in mb["schedule"]}
    units = []
    for k, ra in ua.items():
        if k in ub:
            ch = {attr: _ab(ra[attr], ub[k][attr]) for attr in UNIT_ATTRS
                  if ra.get(attr) != ub[k].get(attr)}
            if ch:
                units.append({"stage": k[0], "unit": k[1], "changes": ch})
    if units:
        out["units"] = units
    removed = [f"{s}.{u}" for (s, u) in ua if (s, u) not in ub]
    added = [f"{s}.{u}" for (s, u) in ub if (s, u) not in ua]
    if removed:
        out["units_removed"] = removed
    if added:
        out["units_added"] = added
    return out


def _measure(a: int, b: int) -> dict[str, Any]:
    return {"a": a, "b": b, "diff": b - a, "ratio": (b / a) if a else None}


def cost_changes(ma: dict[str, Any], mb: dict[str, Any]) -> list[dict[str, Any]]:
    """Per cost group (backbone stage, aspp, decoder, head, aux) whose figures differ."""
    ca, cb = ma["costs"], mb["costs"]
    zero = {"params": 0, "macs": 0}
    out = []
    for group in [*ca, *(g for g in cb if g not in ca)]:
        x, y = ca.get(group, zero), cb.get(group, zero)
        if x != y:
            out.append({"group": group, "params": _measure(x["params"], y["params"]),
                        "macs": _measure(x["macs"], y["macs"])})
    return out


def graph_changes(ga: nx.DiGraph, gb: nx.DiGraph) -> dict[str, Any]:
    """Nodes added, removed and changed (attribute by attribute), and edges added and removed."""
    na, nb = ordered_nodes(ga), ordered_nodes(gb)
    in_a, in_b = set(na), set(nb)
    changed = []
    for n in na:
        if n not in in_b:
            continue
        da, db = ga.nodes[n], gb.nodes[n]
        attrs = [k for k in [*da, *(k for k in db if k not in da)]
                 if k not in IGNORED_NODE_ATTRS and _jsonable(da.get(k)) != _jsonable(db.get(k))]
        if attrs:
            changed.append({"node": n, "changes": {k: _ab(da.get(k), db.get(k)) for k in attrs}})
    ea, eb = set(ga.edges), set(gb.edges)
    order_a = {n: i for i, n in enumerate(na)}
    order_b = {n: i for i, n in enumerate(nb)}
    return {
        "added": [_node_summary(gb, n) for n in nb if n not in in_a],
        "removed": [_node_summary(ga, n) for n in na if n not in in_b],
        "changed": changed,
        "edges_added": [list(e) for e in sorted(eb - ea, key=lambda e: (order_b[e[1]], order_b[e[0]]))],
        "edges_removed": [list(e) for e in sorted(ea - eb, key=lambda e: (order_a[e[1]], order_a[e[0]]))],
    }


def _node_summary(g: nx.DiGraph, n: str) -> dict[str, Any]:
    d = g.nodes[n]
    keys = ("op", "kernel", "stride", "dilation", "in_channels", "out_channels", "shape", "params")
    return {"node": n, **{k: _jsonable(d[k]) for k in keys if k in d}}


def weights_check(a: Side, b: Side) -> dict[str, Any]:
    """Whether a checkpoint of A loads into B: same parameter and buffer names and shapes."""
    none: dict[str, list] = {"missing": [], "unexpected": [], "reshaped": []}
    arch = a.manifest.get("architecture_sha256")
    if arch is not None and arch == b.manifest.get("architecture_sha256"):
        return {"weights_compatible": True, "weight_mismatches": none}
    sa, sb = a.state(), b.state()
    if sa is None or sb is None:
        return {"weights_compatible": None, "weight_mismatches": None}
    from specc.weights import mismatches

    m = mismatches(sb, sa)  # A's checkpoint is what is given, B is what is expected
    return {"weights_compatible": not (m["missing"] or m["unexpected"] or m["reshaped"]),
            "weight_mismatches": _jsonable(m), "weights_count": {"a": len(sa), "b": len(sb)}}


def compare(a: Side, b: Side) -> dict[str, Any]:
    """The differences between two sides; ``identical`` when there are none."""
    ma, mb = a.manifest, b.manifest
    result: dict[str, Any] = {"a": a.label, "b": b.label,
                              "title": {"a": ma.get("title"), "b": mb.get("title")}}
    result["spec_changes"] = spec_changes(ma["spec"], mb["spec"])
    result["schedule"] = schedule_changes(ma, mb)
    result["params"] = _measure(ma["params"], mb["params"])
    result["macs"] = _measure(ma["macs"], mb["macs"])
    result["cost"] = cost_changes(ma, mb)
    notes = [s.note for s in (a, b) if s.note]
    if a.graph is not None and b.graph is not None:
        result["graph"] = graph_changes(a.graph, b.graph)
    else:
        result["graph"] = None
    result.update(weights_check(a, b))
    if result["weights_compatible"] is None:
        notes.append("a manifest without state_dict and no compilable spec: weights not compared")
    graph = result["graph"]
    result["identical"] = not (
        result["spec_changes"] or result["schedule"] or result["cost"]
        or ma["params"] != mb["params"] or ma["macs"] != mb["macs"]
        or (graph is not None and any(graph.values()))
        or result["weights_compatible"] is False)
    result["notes"] = notes
    return result


# ------------------------------------------------------------------------------------------------
# Laying out: sections of (columns, rows), rendered as rich tables or markdown


@dataclass
class Section:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    footer: list[str] = field(default_factory=list)


def fmt(value: Any, attr: str = "") -> str:
    """A value as a reader wants it: sizes as 33×33, lists as 6, 12, 18, mappings as YAML flow."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and attr in ("feature_size", "shape", "input_size", "crop",
                                            "input.crop") and all(isinstance(v, int) for v in value):
        return "×".join(map(str, value))
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _signed(n: int) -> str:
    return f"+{n:,}" if n > 0 else f"{n:,}"


def _ratio(r: float | None) -> str:
    return "—" if r is None else f"×{r:.3f}"


def _limited(items: list[str], limit: int = LIST_LIMIT) -> list[str]:
    return items if len(items) <= limit else [*items[:limit], f"… {len(items) - limit} more"]


def _unit_runs(units: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Consecutive units of one stage with the same changes, as ``block3 unit1–unit22``."""
    runs: list[list[dict[str, Any]]] = []
    for u in units:
        last = runs[-1][-1] if runs else None
        if last is not None and last["stage"] == u["stage"] and last["changes"] == u["changes"]:
            runs[-1].append(u)
        else:
            runs.append([u])
    out = []
    for run in runs:
        first, end = run[0], run[-1]
        where = f"{first['stage']} {first['unit']}" + (f"–{end['unit']}" if len(run) > 1 else "")
        out.append((where, first["changes"]))
    return out


_LABELS = {"input_size": "input size", "output_stride": "output stride",
           "aspp_rates": "ASPP rates (effective)", "receptive_field": "receptive field (px)",
           "feature_size": "feature at crop", "nominal_stride": "nominal stride",
           "rates": "dilation rates"}


def sections(result: dict[str, Any]) -> list[Section]:
    """The report as sections holding only what differs."""
    out = []
    if result["spec_changes"]:
        out.append(Section("spec", ("key", "A", "B"),
                           [(c["path"], fmt(c["a"], c["path"]), fmt(c["b"], c["path"]))
                            for c in result["spec_changes"]]))
    sch = result["schedule"]
    if sch:
        rows = []
        for key in ("input_size", "output_stride", "aspp_rates", "receptive_field"):
            if key in sch:
                rows.append(("network", _LABELS[key], fmt(sch[key]["a"], key),
                             fmt(sch[key]["b"], key)))
        for s in sch.get("stages", []):
            for attr, ab in s["changes"].items():
                rows.append((f"{s['stage']} (stage)", _LABELS.get(attr, attr), fmt(ab["a"], attr),
                             fmt(ab["b"], attr)))
        for where, changes in _unit_runs(sch.get("units", [])):
            for attr, ab in changes.items():
                rows.append((where, _LABELS.get(attr, attr), fmt(ab["a"], attr),
                             fmt(ab["b"], attr)))
        for key, label in (("stages_removed", "stages only in A"), ("stages_added", "stages only in B"),
                           ("units_removed", "units only in A"), ("units_added", "units only in B")):
            if key in sch:
                rows.append((label, "", ", ".join(_limited(sch[key])), ""))
        out.append(Section("schedule", ("where", "what", "A", "B"), rows))
    if result["cost"] or result["params"]["diff"] or result["macs"]["diff"]:
        rows = []
        for c in [*result["cost"], {"group": "total", "params": result["params"],
                                    "macs": result["macs"]}]:
            for measure, label in (("params", "parameters"), ("macs", "multiply-adds")):
                m = c[measure]
                if m["diff"] or c["group"] == "total":
                    rows.append((c["group"], label, f"{m['a']:,}", f"{m['b']:,}",
                                 _signed(m["diff"]), _ratio(m["ratio"])))
        out.append(Section("cost", ("part", "measure", "A", "B", "B − A", "B / A"), rows))
    if result["graph"] is not None and any(result["graph"].values()):
        out.append(_graph_section(result["graph"]))
    if result["weights_compatible"] is not None and not result["identical"]:
        out.append(_weights_section(result))
    return out


def _describe(n: dict[str, Any]) -> str:
    op = n.get("op", "")
    bits = [op + (f" {n['kernel']}×{n['kernel']}" if isinstance(n.get("kernel"), int) else "")]
    if n.get("stride", 1) != 1:
        bits.append(f"stride {n['stride']}")
    if n.get("dilation", 1) != 1:
        bits.append(f"dilation {n['dilation']}")
    if op in ("conv", "sepconv"):
        bits.append(f"{n['in_channels']}→{n['out_channels']}")
    if "shape" in n:
        bits.append(fmt(n["shape"], "shape"))
    if n.get("params"):
        bits.append(f"{n['params']:,} params")
    return ", ".join(bits)


#: Node attributes that differ node by node when a whole part changes resolution.
_VARYING = ("params", "macs", "receptive_field", "shape", "kernel")


def _part(node: str) -> str:
    return node if node in ("input", "output") else group_of(node)


def _graph_section(gr: dict[str, Any]) -> Section:
    rows: list[tuple[str, ...]] = []
    for kind, label in (("added", "only in B"), ("removed", "only in A")):
        by_group: dict[str, list[dict[str, Any]]] = {}
        for n in gr[kind]:
            by_group.setdefault(_part(n["node"]), []).append(n)
        for group, nodes in by_group.items():
            if len(nodes) > 6:
                params = sum(n.get("params", 0) for n in nodes)
                rows.append((label, f"{group} ({len(nodes)} nodes)", f"{params:,} params"))
            else:
                rows.extend((label, n["node"], _describe(n)) for n in nodes)
    # Changed nodes, grouped by part and by what changed (sizes and costs may vary inside a group).
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in gr["changed"]:
        fixed = {k: v for k, v in c["changes"].items() if k not in _VARYING}
        key = json.dumps([_part(c["node"]), list(c["changes"]), fixed])
        groups.setdefault((_part(c["node"]), key), []).append(c)
    for (group, _key), nodes in groups.items():
        where = nodes[0]["node"] if len(nodes) == 1 else f"{group} ({len(nodes)} nodes)"
        parts = []
        for attr in nodes[0]["changes"]:
            values = {json.dumps(n["changes"][attr]) for n in nodes}
            if len(values) == 1:
                ab = nodes[0]["changes"][attr]
                parts.append(f"{attr} {fmt(ab['a'], attr)} → {fmt(ab['b'], attr)}")
            elif attr in ("params", "macs"):
                a = sum(n["changes"][attr]["a"] or 0 for n in nodes)
                b = sum(n["changes"][attr]["b"] or 0 for n in nodes)
                parts.append(f"{attr} {a:,} → {b:,} in all")
            else:
                parts.append(f"{attr} (varies)")
        rows.append(("changed", where, "; ".join(parts)))
    for kind, label in (("edges_added", "edges only in B"), ("edges_removed", "edges only in A")):
        if gr[kind]:
            n = len(gr[kind])
            rows.append((label, f"{n} edge{'s' if n > 1 else ''}",
                         ", ".join(_limited([f"{u} → {v}" for u, v in gr[kind]], 8))))
    return Section("graph", ("change", "node", "details"), rows)


def compact_names(names: list[str]) -> list[str]:
    """Parameter names sharing a module as one item: ``aux.conv.bn.{bias, weight}``."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parent, _, leaf = name.rpartition(".")
        groups.setdefault(parent, []).append(leaf)
    out = []
    for parent, leaves in groups.items():
        if not parent:
            out.extend(leaves)
        elif len(leaves) == 1:
            out.append(f"{parent}.{leaves[0]}")
        else:
            out.append(f"{parent}.{{{', '.join(leaves)}}}")
    return out


def _weights_section(result: dict[str, Any]) -> Section:
    m = result["weight_mismatches"]
    rows: list[tuple[str, ...]] = []
    if result["weights_compatible"]:
        n = result.get("weights_count", {}).get("a")
        same = f"same {n} parameter and buffer names and shapes" if n else "same architecture"
        return Section("weights", ("check", "result"),
                       [("a checkpoint of A loads into B", f"yes ({same})")])
    rows.append(("a checkpoint of A loads into B", "no"))
    for key, label in (("missing", "missing (B has, A lacks)"),
                       ("unexpected", "unexpected (A has, B lacks)")):
        if m[key]:
            rows.append((f"{len(m[key])} {label}", ", ".join(_limited(compact_names(m[key])))))
    if m["reshaped"]:
        items = [f"{k} {fmt(a, 'shape')} → {fmt(b, 'shape')}" for k, a, b in m["reshaped"]]
        rows.append((f"{len(items)} reshaped (A → B)", ", ".join(_limited(items))))
    return Section("weights", ("check", "result"), rows)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: dict[str, Any]) -> str:
    """The report as GitHub markdown, for a pull request."""
    lines = [f"## specc diff: `{result['a']}` → `{result['b']}`", ""]
    if result["identical"]:
        lines += ["Identical: same spec, schedule, cost, graph and weights.", ""]
    for s in sections(result):
        lines += [f"### {s.title}", "", "| " + " | ".join(s.columns) + " |",
                  "|" + "|".join("---" for _ in s.columns) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in s.rows]
        lines.append("")
    lines += [f"> {note}" for note in result["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def render_rich(result: dict[str, Any], console: Any) -> None:
    """The report as rich tables on ``console``."""
    from rich.table import Table

    console.print(f"[bold]A[/bold] {result['a']} — {result['title']['a']}", highlight=False)
    console.print(f"[bold]B[/bold] {result['b']} — {result['title']['b']}", highlight=False)
    if result["identical"]:
        console.print("identical: same spec, schedule, cost, graph and weights")
    for s in sections(result):
        table = Table(title=s.title, title_justify="left", show_lines=False)
        for col in s.columns:
            numeric = col in ("B − A", "B / A") or (s.title == "cost" and col in ("A", "B"))
            table.add_column(col, justify="right" if numeric else "left", overflow="fold")
        for row in s.rows:
            table.add_row(*row)
        console.print(table)
    for note in result["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False)


# ------------------------------------------------------------------------------------------------
# The command


class DiffFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


def diff_command(
    a: Annotated[Path, typer.Argument(metavar="A", help="Spec file, or built folder with "
                                      "manifest.json.")],
    b: Annotated[Path, typer.Argument(metavar="B", help="Spec file, or built folder with "
                                      "manifest.json.")],
    set_a: Annotated[list[str] | None, typer.Option(
        "--set-a", help="Override a value of spec A: key.path=value (YAML).")] = None,
    set_b: Annotated[list[str] | None, typer.Option(
        "--set-b", help="Override a value of spec B: key.path=value (YAML).")] = None,
    format_: Annotated[DiffFormat, typer.Option(
        "--format", help="table (rich, for a terminal), json, or markdown (for a pull "
        "request).")] = DiffFormat.table,
) -> None:
    """What changes between two variants: spec keys, schedule, cost, graph, and whether a
    checkpoint of A loads into B. Exit 0 identical, 1 differ, 2 error."""
    side_a = load_side(a, list(set_a or []), "a")
    side_b = load_side(b, list(set_b or []), "b")
    result = compare(side_a, side_b)
    if format_ is DiffFormat.json:
        print(json.dumps(result, indent=2))
    elif format_ is DiffFormat.markdown:
        print(render_markdown(result), end="")
    else:
        import sys

        from rich.console import Console

        render_rich(result, Console(highlight=False, width=None if sys.stdout.isatty() else 160))
    if not result["identical"]:
        raise typer.Exit(1)
