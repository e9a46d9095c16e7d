"""What actually changes between two variants, read off their graphs (``specc diff``).

A and B are spec files (``extends:`` and ``--set-a``/``--set-b`` overrides resolved) or built
folders holding a ``manifest.json``. :func:`compare` returns a JSON-ready report with only what
differs, section by section — the resolved spec, the stride/dilation schedule, parameters and
multiply-adds, the graph's nodes and edges, and whether a checkpoint of A loads into B. The
command line (``specc.cli.render``) lays it out as tables or markdown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import ValidationError

from specc.api import Compilation, Document, compile_spec, load_spec
from specc.artifacts import MANIFEST, SPEC, check_build_folder, spec_info_of
from specc.errors import SpeccError
from specc.graph import ordered_nodes
from specc.load import format_path

__all__ = ["compare", "load_side", "spec_changes"]

#: Node attributes that record provenance, not architecture.
IGNORED_NODE_ATTRS = ("spec_key",)
#: Per-unit schedule attributes compared (output stride and receptive field are shown per stage).
UNIT_ATTRS = ("type", "channels", "nominal_stride", "stride", "rates", "feature_size")
#: The note for a run or checkpoint folder: two runs of one spec are "identical" here, however
#: differently they trained.
TRAINED_NOT_COMPARED = ("a run or checkpoint folder is compared by the spec it trained: the "
                        "values of its trained weights are not compared")


# ------------------------------------------------------------------------------------------------
# Loading a side


@dataclass
class Side:
    """One variant: its manifest (figures as built), its graph, and its compilation when its spec
    still compiles."""

    label: str
    manifest: dict[str, Any]
    graph: nx.DiGraph | None
    compilation: Compilation | None = None
    note: str = ""

    def state(self) -> dict[str, list[int]] | None:
        """Parameter and buffer names → shapes, from the manifest or the compilation."""
        if "state_dict" in self.manifest:
            return {k: list(v) for k, v in self.manifest["state_dict"].items()}
        return self.compilation.state_shapes if self.compilation is not None else None


def load_side(path: Path, overrides: list[str], which: str) -> Side:
    """A spec file or a built folder (or its manifest.json) as a :class:`Side`.

    Raises:
        SpecError: the spec is invalid. SpeccError: a folder without manifest.json, an unreadable
        manifest, a build whose files come from different specs, or overrides given for a built
        folder.
    """
    manifest_path = None
    if path.is_dir() and not (path / MANIFEST).is_file() and (path / SPEC).is_file():
        if overrides:
            raise SpeccError(f"--set-{which}: overrides apply to spec files; {path} is a run "
                             "(give the spec file instead)")
        return _side_from_spec_json(path)
    if path.is_dir():
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise SpeccError(f"{path}: expected a spec file, a built folder holding "
                             "manifest.json or a run folder holding spec.json; this folder has "
                             "neither")
    elif path.suffix == ".json":
        manifest_path = path
    if manifest_path is None:
        comp = compile_spec(load_spec(path, overrides))
        label = str(path) + "".join(f" --set {o}" for o in overrides)
        return Side(label=label, manifest=comp.manifest, graph=comp.graph, compilation=comp)
    if overrides:
        raise SpeccError(f"--set-{which}: overrides apply to spec files; {path} is a build "
                         "(give the spec file instead)")
    if manifest_path.name == MANIFEST:
        check_build_folder(manifest_path.parent)  # model.py, model.pt from the same spec
    return _side_from_manifest(manifest_path)


def _side_from_spec_json(folder: Path) -> Side:
    """A training run or checkpoint folder: the resolved spec its ``spec.json`` records,
    compiled again."""
    path = folder / SPEC
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpeccError(f"{path}: not a readable spec record ({exc})") from None
    resolved = spec_info_of(info).get("resolved") if isinstance(info, dict) else None
    if not isinstance(resolved, dict):
        raise SpeccError(f"{path}: not a spec record written by specc (no resolved spec)")
    comp = compile_spec(Document.from_resolved(resolved, path))
    return Side(label=str(folder), manifest=comp.manifest, graph=comp.graph, compilation=comp,
                note=TRAINED_NOT_COMPARED)


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
    comp, graph, note = None, None, ""
    try:
        comp = compile_spec(Document.from_resolved(man["spec"], path))
        graph = comp.graph
    except (ValidationError, SpeccError) as exc:
        comp = None
        note = (f"the spec in {path} no longer compiles with this specc "
                f"({str(exc).splitlines()[0]}); its graph is not compared")
    return Side(label=str(path.parent if path.name == "manifest.json" else path), manifest=man,
                graph=graph, compilation=comp, note=note)


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
        s.update(reduction=r["reduction"], feature_size=r["feature_size"],
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
    """A count in A and B, their difference, and B / A (None where one side has none of it: a
    part only one spec has is not "×0")."""
    return {"a": a, "b": b, "diff": b - a, "ratio": (b / a) if a and b else None}


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
    from specc.artifacts import mismatches

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
    notes = list(dict.fromkeys(s.note for s in (a, b) if s.note))  # each note once
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

