"""The compiler's structure: block kinds registered once, one compilation per spec per command,
modules layered without cycles or reaching into each other's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest
import torch
from pydantic import BaseModel

import specc.graph  # noqa: F401  (registers every block kind)
from specc import spec as spec_module
from specc.api import Compilation, compile_spec, load_spec
from specc.cli import main
from specc.plan import BLOCKS, Head, Unit, kinds

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "specc").rglob("*.py"), *(REPO / "runtime").rglob("*.py")])
DEMO = REPO / "specs/deeplabv3plus_mobilenetv2_demo.yaml"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> list[tuple[str, list[str]]]:
    """(module, names) of every project import in the file; TYPE_CHECKING blocks are skipped."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, list[str]]] = []
    package = _module_name(path).rsplit(".", 1)[0]

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    mod = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1],
                                    *([mod] if mod else [])])
                out.append((mod, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                out.extend((a.name, []) for a in node.names)
            elif not top_level_only:
                visit([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])
            if top_level_only and isinstance(node, (ast.If, ast.Try)):
                visit(node.body)

    visit(tree.body)
    return [(m, n) for m, n in out if m.split(".")[0] in ("specc", "runtime")]


def test_module_level_imports_have_no_cycle():
    modules = {_module_name(p): p for p in SOURCES}
    g = nx.DiGraph()
    for name, path in modules.items():
        g.add_node(name)
        for target, names in _imports(path, top_level_only=True):
            # ``from specc.modules import SHARED`` names a module; ``from specc import x`` may too.
            for cand in [f"{target}.{n}" for n in names] + [target]:
                if cand in modules and cand != name:
                    g.add_edge(name, cand)
                    break
    cycles = list(nx.simple_cycles(g))
    assert not cycles, cycles


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in SOURCES:
        for target, names in _imports(path, top_level_only=False):
            offenders += [f"{_module_name(path)}: {target}.{n}" for n in names
                          if n.startswith("_") and n != "__version__"]
    assert not offenders


def test_every_spec_unit_type_has_a_registered_kind():
    models = [c for c in vars(spec_module).values() if isinstance(c, type)
              and issubclass(c, BaseModel) and "type" in c.model_fields]
    types = {c.model_fields["type"].annotation.__args__[0] for c in models}
    unit_kinds = {k.kind for k in kinds(Unit)}
    assert types == unit_kinds
    assert [k.kind for k in kinds(Head)] == ["aspp", "extra", "fcn", "lraspp", "fc_aspp", "decoder", "classifier", "aux"]


@pytest.mark.parametrize("module", ["emit", "importers", "graphviz", "diff", "build", "api"])
def test_stages_after_lowering_name_no_block_kind(module):
    """Kinds are dispatched through the registry: no later stage spells a kind's name."""
    tree = ast.parse((REPO / "specc" / f"{module}.py").read_text(encoding="utf-8"))
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)}
    assert not strings & set(BLOCKS) - {"aux"}  # "aux" is also the name of an output


def test_unit_taps_name_their_layers():
    net = compile_spec(load_spec(REPO / "specs/deeplabv3plus_xception.yaml",
                                 ["input.size=[65, 65]"])).network
    for unit in net.units():
        for inner in unit.taps:
            assert f"{unit.path}.{inner}" in net.graph, (unit.path, inner)
        for conv in unit.atrous:
            assert net.graph.nodes[conv.node]["dilation"] == conv.rate


def test_build_lowers_each_spec_once_and_check_instantiates_nothing(tmp_path, monkeypatch):
    import specc.compile

    real_devices: list[str] = []
    original = specc.compile.instantiate

    def counting(source: str) -> torch.nn.Module:
        real_devices.append(torch.empty(0).device.type)
        return original(source)

    monkeypatch.setattr(specc.compile, "instantiate", counting)
    before = Compilation.lowered
    sets = ["--set", "input.size=[65,65]"]
    with pytest.raises(SystemExit) as done:
        main(["build", str(DEMO), "--out", str(tmp_path), *sets])
    assert done.value.code in (0, None)
    assert Compilation.lowered - before == 1
    assert real_devices.count("cpu") == 1  # the model that is scripted; the manifest's is on meta

    real_devices.clear()
    before = Compilation.lowered
    with pytest.raises(SystemExit) as done:
        main(["build", str(DEMO), "--out", str(tmp_path), "--check", *sets])
    assert done.value.code in (0, None)
    assert Compilation.lowered - before == 1
    assert "cpu" not in real_devices
