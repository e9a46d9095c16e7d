"""``specc graph``: the DOT text (clusters, colours, dilation, collapse), determinism, and SVG/PNG
output with and without Graphviz installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from specc.api import compile_spec, load_spec
from specc.cli import main
from specc.errors import SpeccError
from specc.graphviz import (
    STRIDE_COLORS,
    cluster_of,
    collapsed,
    layers,
    render_dot,
    render_matplotlib,
    to_dot,
)

ROOT = Path(__file__).resolve().parents[1]
V3 = ROOT / "specs" / "deeplabv3_resnet101.yaml"
XCEPTION = ROOT / "specs" / "deeplabv3plus_xception.yaml"
NODE = re.compile(r'^\s*"(?P<name>[^"]+)" \[label="(?P<label>(?:[^"\\]|\\.)*)", '
                  r'fillcolor="(?P<color>#[0-9a-f]{6})"(?P<extra>[^\]]*)\];$')
EDGE = re.compile(r'^\s*"(?P<u>[^"]+)" -> "(?P<v>[^"]+)"(?: \[style=invis\])?;$')

_GRAPHS: dict[str, object] = {}


def graph_of(path: Path):
    if str(path) not in _GRAPHS:
        _GRAPHS[str(path)] = compile_spec(load_spec(path)).network
    return _GRAPHS[str(path)]


def parse(dot: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]:
    """Node and edge statements of our DOT (a small reader for the subset we write)."""
    nodes, edges = {}, []
    for line in dot.splitlines():
        if m := NODE.match(line):
            nodes[m["name"]] = m.groupdict()
        elif (m := EDGE.match(line)) and "legend" not in m["u"]:
            edges.append((m["u"], m["v"]))
    return nodes, edges


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


# ------------------------------------------------------------------------------------------------
# DOT


def test_dot_has_every_node_and_edge():
    g = graph_of(XCEPTION)
    dot = to_dot(layers(g))
    nodes, edges = parse(dot)
    graph_nodes = {n for n in nodes if not n.startswith("legend_")}
    assert graph_nodes == set(g.graph.nodes)
    assert sorted(edges) == sorted(g.graph.edges)
    assert dot.count("{") == dot.count("}")
    assert dot.startswith("digraph specc {") and dot.endswith("}\n")


def test_nodes_grouped_by_stage():
    g = graph_of(XCEPTION)
    dot = to_dot(layers(g))
    labels = re.findall(r'label="([^"]+)"; style=rounded', dot)
    assert labels[:8] == ["backbone.stem", "backbone.entry1", "backbone.entry2",
                          "backbone.entry3", "backbone.middle", "backbone.exit1",
                          "backbone.exit2", "aspp"]
    assert "decoder" in labels and "head" in labels
    assert cluster_of("backbone.middle.unit3.sep2") == "backbone.middle"
    assert cluster_of("classifier") == "head" and cluster_of("input") == ""


def test_colored_by_reduction_and_labelled_with_dilation():
    g = graph_of(V3)
    nodes, _ = parse(to_dot(layers(g)))
    for name, n in nodes.items():
        if name.startswith("legend_"):
            continue
        assert n["color"] == STRIDE_COLORS[g.graph.nodes[name]["reduction"]], name
        d = g.graph.nodes[name].get("dilation", 1)
        if d > 1:
            assert f"d={d}" in n["label"] and "penwidth=2.5" in n["extra"], name
        else:
            assert "d=" not in n["label"] and "penwidth" not in n["extra"], name
    assert "d=8" in nodes["backbone.block4.unit3.conv2"]["label"]
    assert "d=18" in nodes["aspp.branch3"]["label"]
    assert "/2" in nodes["backbone.block2.unit4.conv2"]["label"]  # the stride sits last (TF)
    legend = {n: v for n, v in nodes.items() if n.startswith("legend_")}
    assert sorted(legend) == sorted(f"legend_os{s}" for s in (1, 2, 4, 8, 16))


def test_collapse_xception65_middle_flow():
    g = graph_of(XCEPTION)
    full, small = layers(g), collapsed(g)
    assert len(full.nodes) > 100
    assert len(small.nodes) < 30
    assert "backbone.middle.unit1–unit16" in small.nodes
    assert "unit1–unit16 ×16" in small.nodes["backbone.middle.unit1–unit16"]["label"]
    exit2 = small.nodes["backbone.exit2.unit1"]
    assert "d=2,4,8" in exit2["label"] and exit2["dilated"]
    nodes, edges = parse(to_dot(small))
    # The decoder's tap inside entry2.unit1 becomes an edge from that unit.
    assert ("backbone.entry2.unit1", "decoder.project") in edges
    assert ("backbone.middle.unit1–unit16", "backbone.exit1.unit1") in edges
    assert all(u in nodes and v in nodes for u, v in edges)


def test_collapse_keeps_differing_units_apart():
    small = collapsed(graph_of(V3))
    names = [n for n in small.nodes if n.startswith("backbone.block")]
    # block3: unit1 widens 512 → 1024, then 22 identical units; block4's rates differ per unit.
    assert "backbone.block3.unit1" in names and "backbone.block3.unit2–unit23" in names
    assert [n for n in names if n.startswith("backbone.block4")] == [
        "backbone.block4.unit1", "backbone.block4.unit2", "backbone.block4.unit3"]


def test_dot_is_deterministic_across_hash_seeds(tmp_path):
    outs = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-m", "specc", "graph", str(XCEPTION), "--collapse"],
                              capture_output=True, text=True, env=env, cwd=ROOT, check=False)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    assert outs[0] == to_dot(collapsed(graph_of(XCEPTION)))


def test_quotes_are_escaped():
    from specc.graphviz import Drawn

    drawn = Drawn(title='a "quoted" \\ title')
    drawn.nodes['n"1'] = {"label": 'x"y\nz', "name": "n", "cluster": "", "reduction": 1,
                          "dilated": False}
    dot = to_dot(drawn)
    assert r'label="a \"quoted\" \\ title"' in dot
    assert r'"n\"1" [label="x\"y\nz"' in dot


# ------------------------------------------------------------------------------------------------
# The command, SVG and PNG


def test_command_prints_dot(capsys):
    code, out, _ = run(capsys, "graph", V3, "--collapse")
    assert code == 0 and out.startswith("digraph specc {")
    code, out, _ = run(capsys, "graph", V3, "--set", "backbone.output_stride=8")
    assert code == 0 and "d=16" in out  # block4 unit3 at 4·4


def test_command_writes_dot_file(capsys, tmp_path):
    target = tmp_path / "g.dot"
    code, _, err = run(capsys, "graph", V3, "--out", target)
    assert code == 0 and "wrote" in err
    assert target.read_text() == to_dot(layers(graph_of(V3)))


def test_png_and_svg_with_matplotlib(capsys, tmp_path):
    png, svg = tmp_path / "g.png", tmp_path / "g.svg"
    code, _, err = run(capsys, "graph", XCEPTION, "--collapse", "--out", png,
                       "--renderer", "matplotlib")
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run(capsys, "graph", V3, "--collapse", "--format", "svg", "--out", svg,
                       "--renderer", "matplotlib")
    assert code == 0, err
    assert "<svg" in svg.read_text()[:2000]


def test_auto_falls_back_to_matplotlib_without_dot(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("specc.graphviz.shutil.which", lambda name: None)
    target = tmp_path / "g.svg"
    code, _, err = run(capsys, "graph", V3, "--collapse", "--out", target)
    assert code == 0
    assert "apt-get install graphviz" in err
    assert "<svg" in target.read_text()[:2000]


def test_dot_renderer_missing_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("specc.graphviz.shutil.which", lambda name: None)
    with pytest.raises(SpeccError, match="apt-get install graphviz"):
        render_dot("digraph {}", "svg")
    code, _, err = run(capsys, "graph", V3, "--format", "svg", "--renderer", "dot",
                       "--out", tmp_path / "g.svg")
    assert code == 2 and "--format dot" in err


@pytest.mark.parametrize(("fmt", "name", "expected"), [
    ("svg", "g.png", "--format svg and --out {out}/g.png disagree (.png is the suffix of png); "
                     "drop --format to write png, or give --out {out}/g.svg"),
    ("png", "g.SVG", "--format png and --out {out}/g.SVG disagree (.SVG is the suffix of svg); "
                     "drop --format to write svg, or give --out {out}/g.png"),
    ("svg", "g.gv", "--format svg and --out {out}/g.gv disagree (.gv is the suffix of dot); "
                    "drop --format to write dot, or give --out {out}/g.svg"),
])
def test_format_and_suffix_that_disagree_are_refused(fmt, name, expected, capsys, tmp_path):
    """Not a PNG file that holds SVG: nothing is written, exit 2."""
    code, _, err = run(capsys, "graph", V3, "--collapse", "--format", fmt, "--out",
                       tmp_path / name, "--renderer", "matplotlib")
    assert code == 2 and err.strip() == "error: " + expected.format(out=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra", [[], ["--format", "png"]])
def test_an_out_named_for_another_image_format_is_refused(extra, capsys, tmp_path):
    """g.jpg would hold dot text (or PNG bytes): refused, nothing written."""
    code, _, err = run(capsys, "graph", V3, "--collapse", *extra, "--out", tmp_path / "g.jpg",
                       "--renderer", "matplotlib")
    assert code == 2
    assert err.strip() == (f"error: --out {tmp_path / 'g.jpg'}: graph writes dot, svg or png, "
                           f"not .jpg; give --out {tmp_path / 'g.png'} (or .svg, .dot)")
    assert list(tmp_path.iterdir()) == []


def test_format_with_a_suffix_of_no_format_is_kept(capsys, tmp_path):
    target = tmp_path / "graph.txt"
    code, _, err = run(capsys, "graph", V3, "--collapse", "--format", "svg", "--out", target,
                       "--renderer", "matplotlib")
    assert code == 0, err
    assert "<svg" in target.read_text()[:2000]


def test_png_needs_a_file(capsys):
    code, _, err = run(capsys, "graph", V3, "--format", "png")
    assert code == 2 and "--out" in err


def test_matplotlib_handles_the_full_graph():
    data = render_matplotlib(layers(graph_of(V3)), "png")
    assert data[:4] == b"\x89PNG"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_graphviz_accepts_our_dot():
    svg = render_dot(to_dot(layers(graph_of(XCEPTION))), "svg").decode()
    assert "<svg" in svg and "middle" in svg
