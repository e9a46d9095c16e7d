"""Stage 4, graph: node attributes, lint, deterministic order, parameter counts, shapes and
receptive fields — checked against the real modules (forward hooks) and torchvision."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from specc.api import compile_spec, load_spec
from specc.errors import SpecError
from specc.graph import lint, ordered_nodes
from specc.plan import Network, conv_out

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "specs").rglob("*.yaml"))
IDS = [str(p.relative_to(REPO / "specs").with_suffix("")) for p in SPECS]
ZOO = {50: REPO / "specs/zoo/torchvision_deeplabv3_resnet50.yaml",
       101: REPO / "specs/zoo/torchvision_deeplabv3_resnet101.yaml"}
#: torchvision deeplabv3_resnet50/101(weights=None, aux_loss=True) (docs/deeplab.md).
TORCHVISION_PARAMS = {50: 42_004_074, 101: 60_996_202}

COMMON = {"op", "in_channels", "out_channels", "shape", "reduction", "receptive_field",
          "params", "macs", "spec_key"}
CONV = {"kernel", "stride", "dilation", "groups"}

TINY = """\
name: tiny
num_classes: 2
input: {{size: [33, 33]}}
backbone:
  stem: {{convs: [{{channels: 8, kernel: 3, stride: 2}}], pool: none}}
  output_stride: {os}
  stages:
    - name: s1
      units: [{{type: basic, channels: 8}}]
    - name: s2
      units: [{{type: basic, channels: 8, stride: 2}}]
    - name: s3
      units: [{{type: basic, channels: 8}}]
aspp: null
"""


def network_of(path: Path, *overrides: str) -> Network:
    return compile_spec(load_spec(path, list(overrides))).network


def graph_of(path: Path, *overrides: str) -> nx.DiGraph:
    return network_of(path, *overrides).graph


@pytest.fixture(scope="module")
def graphs() -> dict[Path, nx.DiGraph]:
    return {p: graph_of(p) for p in SPECS}


@pytest.fixture(scope="module")
def networks(graphs) -> dict[Path, Network]:
    return {p: network_of(p) for p in SPECS}


# --------------------------------------------------------------------------------------------
# Node attributes


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_every_node_carries_its_shape_and_reduction(path, networks):
    g = networks[path].graph
    h, w = networks[path].input.size
    for n, d in g.nodes(data=True):
        assert set(d) >= COMMON, (n, COMMON - set(d))
        assert d["shape"][0] == d["out_channels"] and len(d["shape"]) == 3, n
        assert d["reduction"] >= 1, n
        if d["op"] in ("conv", "sepconv"):
            assert set(d) >= CONV, n
            assert d["in_channels"] % d["groups"] == 0, n
            assert d["params"] > 0 and d["macs"] > 0, n
        if d["op"] in ("input", "output", "upsample"):
            continue
        # A node's size follows from its output stride ("same" padding, rounding up), except
        # the pooled image feature before it is upsampled.
        pooled = any(g.nodes[p]["op"] == "avgpool" for p in g.predecessors(n))
        if d["op"] != "avgpool" and not pooled:
            s = d["reduction"]
            assert d["shape"][1:] == (-(-h // s), -(-w // s)), (n, d["shape"], s)


def test_conv_attributes_of_known_layers(graphs):
    g = graphs[REPO / "specs/deeplabv3_resnet101.yaml"]
    conv2 = g.nodes["backbone.block4.unit3.conv2"]
    assert (conv2["op"], conv2["kernel"], conv2["stride"], conv2["dilation"], conv2["groups"]) == \
        ("conv", 3, 1, 8, 1)
    assert (conv2["in_channels"], conv2["out_channels"], conv2["reduction"]) == (512, 512, 16)
    assert g.nodes["backbone.block3.unit23.conv2"]["stride"] == 1  # de-strided
    assert g.nodes["backbone.block2.unit4.conv2"]["stride"] == 2
    assert [g.nodes[f"aspp.branch{i}"]["dilation"] for i in (1, 2, 3)] == [6, 12, 18]
    x = graphs[REPO / "specs/deeplabv3plus_xception.yaml"]
    sep = x.nodes["backbone.exit2.unit1.sep3"]
    assert (sep["op"], sep["dilation"], sep["groups"], sep["in_channels"], sep["out_channels"]) \
        == ("sepconv", 8, 1536, 1536, 2048)
    mb = graphs[REPO / "specs/deeplabv3plus_mobilenetv2.yaml"]
    dw = mb.nodes["backbone.layer7.unit1.depthwise"]
    assert dw["groups"] == dw["in_channels"] == dw["out_channels"] == 960
    assert dw["dilation"] == 2


def test_taps_are_at_their_reductions(networks):
    for path, net in networks.items():
        g = net.graph
        for port, tap in net.taps.items():
            node = g.nodes[tap.node]
            if port == "low_level" and net.head("decoder") is not None:
                assert node["reduction"] == 4, path
        # Heads that make the logits themselves (lraspp, fc_aspp) leave no classifier node.
        logits = next(iter(g.predecessors("upsample")))
        if logits == "classifier":
            assert g.nodes[logits]["reduction"] == (4 if net.head("decoder") is not None
                                                    else net.output_stride), path


# --------------------------------------------------------------------------------------------
# Lint


def _graph(*edges: tuple[str, str, int], channels: dict[str, tuple[int, int]]) -> nx.DiGraph:
    g = nx.DiGraph()
    for name, (cin, cout) in channels.items():
        op = name if name in ("input", "output") else "conv"
        g.add_node(name, op=op, in_channels=cin, out_channels=cout)
    for src, dst, ch in edges:
        g.add_edge(src, dst, channels=ch)
    return g


GOOD = {"input": (0, 3), "a": (3, 8), "b": (8, 8), "output": (8, 8)}


def test_lint_accepts_a_well_formed_graph():
    lint(_graph(("input", "a", 3), ("a", "b", 8), ("b", "output", 8), channels=GOOD))


@pytest.mark.parametrize("edges, channels, message", [
    ([("input", "a", 3), ("a", "b", 8), ("b", "a", 8), ("b", "output", 8)], GOOD,
     "the graph has a cycle through a; layers must feed forward"),
    ([("input", "a", 3), ("a", "b", 16), ("b", "output", 8)], GOOD,
     "edge a → b carries 16 channels but a makes 8"),
    ([("input", "a", 3), ("a", "b", 8), ("b", "output", 8)],
     {**GOOD, "b": (4, 8)}, "b expects 4 input channels, a gives 8"),
    ([("input", "a", 3), ("a", "b", 8), ("a", "output", 8)], GOOD,
     "expected one output node, found b, output; every layer must lead to the output"),
    ([("input", "a", 3), ("c", "b", 8), ("a", "b", 8), ("b", "output", 8)],
     {**GOOD, "c": (3, 8)}, "expected one input node, found c, input"),
])
def test_lint_catches_broken_graphs(edges, channels, message):
    with pytest.raises(SpecError) as info:
        lint(_graph(*edges, channels=channels))
    assert str(info.value) == message


def test_every_shipped_graph_lints(graphs):
    for g in graphs.values():
        lint(g)
        assert [n for n in g if g.in_degree(n) == 0] == ["input"]
        assert [n for n in g if g.out_degree(n) == 0] == ["output"]


# --------------------------------------------------------------------------------------------
# Deterministic order


def test_node_order_is_deterministic_and_topological():
    path = REPO / "specs/deeplabv3plus_xception.yaml"
    a, b = graph_of(path), graph_of(path)
    assert list(a.nodes) == list(b.nodes)
    assert list(a.edges(data=True)) == list(b.edges(data=True))
    order = ordered_nodes(a)
    assert order == ordered_nodes(b)
    assert order[0] == "input" and order[-1] == "output"
    position = {n: i for i, n in enumerate(order)}
    assert all(position[u] < position[v] for u, v in a.edges)
    # Backbone layers come in network order: every stage before the next.
    stages = [n.split(".")[1] for n in order if n.startswith("backbone.") and n.count(".") >= 2]
    assert list(dict.fromkeys(stages)) == ["stem", *(s.name for s in network_of(path).stages)]


# --------------------------------------------------------------------------------------------
# Parameter counts


@pytest.mark.parametrize("depth", [50, 101])
def test_zoo_parameter_counts_match_torchvision(depth, graphs):
    from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101

    g = graphs[ZOO[depth]]
    params = sum(d["params"] for _, d in g.nodes(data=True))
    assert params == TORCHVISION_PARAMS[depth]
    make = deeplabv3_resnet50 if depth == 50 else deeplabv3_resnet101
    reference = make(weights=None, weights_backbone=None, aux_loss=True)
    assert params == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_graph_parameter_count_equals_the_module(path, builds):
    small = builds.small(path)
    g = small.built.graph
    module = small.built.module
    assert sum(d["params"] for _, d in g.nodes(data=True)) == \
        sum(p.numel() for p in module.parameters()) == small.built.manifest["params"]


# --------------------------------------------------------------------------------------------
# Shapes against the real tensors


def module_of(node: str, net: Network) -> str | None:
    """The submodule (qualified name) that computes ``node``, or None for a functional step."""
    g = net.graph
    if m := re.fullmatch(r"backbone\.stem\.conv(\d+)", node):
        return f"backbone.stem.{int(m.group(1)) - 1}"
    if node == "backbone.stem.pool":
        return f"backbone.stem.{sum(1 for n in g if n.startswith('backbone.stem.conv'))}"
    parts = node.split(".")
    if parts[0] == "backbone":
        unit = net.unit(".".join(parts[:3]))
        base = unit.module
        if len(parts) == 3:
            return base
        if unit.kind == "vgg" and (m := re.fullmatch(r"conv(\d+)", parts[3])):
            return f"{base}.convs.{2 * (int(m.group(1)) - 1)}"  # Conv2d, ReLU, Conv2d, ...
        return f"{base}.{'shortcut' if parts[3] == 'subsample' else parts[3]}"
    if m := re.fullmatch(r"fc_aspp\.branch(\d+)\.(fc\d)", node):
        return f"fc_aspp.branches.{m.group(1)}.{m.group(2)}"
    pool_branch = len([n for n in g if re.fullmatch(r"aspp\.branch\d+", n)])
    table = {"aspp.pool_conv": f"aspp.convs.{pool_branch}.conv",
             "aspp.pool_upsample": f"aspp.convs.{pool_branch}",
             "aspp.project": "aspp.project", "extra": "extra", "classifier": "classifier",
             "decoder.project": "decoder.project", "aux.conv": "aux.conv",
             "aux.classifier": "aux.classifier", "fcn.conv": "fcn.conv",
             "lraspp.cbr": "lraspp.cbr", "lraspp.scale": "lraspp.scale",
             "lraspp.low_classifier": "lraspp.low_classifier",
             "lraspp.high_classifier": "lraspp.high_classifier", "lraspp.sum": "lraspp",
             "fc_aspp.sum": "fc_aspp"}
    if node in table:
        return table[node]
    if m := re.fullmatch(r"aspp\.branch(\d+)", node):
        return f"aspp.convs.{m.group(1)}"
    if m := re.fullmatch(r"decoder\.fuse(\d+)", node):
        return f"decoder.fuse.{int(m.group(1)) - 1}"
    return None


def observed_shape(node: str, g: nx.DiGraph, small: Any) -> tuple[int, ...] | None:
    """The real (C, H, W) of ``node`` from the hooked forward pass; None if not observable."""
    name = module_of(node, small.built.network)
    if name is not None:
        shape = small.shapes.get(name)
        return shape[1:] if shape else None  # a unit run through forward_tap has no hook
    pool_branch = len([n for n in g if re.fullmatch(r"aspp\.branch\d+", n)])
    inputs = {"aspp.pool": f"aspp.convs.{pool_branch}.conv", "aspp.concat": "aspp.project",
              "decoder.concat": "decoder.fuse.0", "lraspp.pool": "lraspp.scale",
              "lraspp.upsample": "lraspp.high_classifier"}
    if node in inputs and inputs[node] in small.input_shapes:
        return small.input_shapes[inputs[node]][1:]
    if node == "decoder.upsample":
        encoder = small.shapes["extra" if "extra" in small.shapes else "aspp"]
        return (encoder[1], *small.shapes["decoder.project"][2:])
    if node == "lraspp.gate":  # the gated branch: the 1×1 branch's shape
        return small.shapes["lraspp.cbr"][1:]
    if node == "input":
        return tuple(small.x.shape[1:])
    if node == "upsample":
        return tuple(small.outputs["out"].shape[1:])
    if node == "aux.upsample":
        return tuple(small.outputs["aux"].shape[1:])
    return None


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_graph_shapes_equal_the_real_tensor_shapes(path, builds):
    small = builds.small(path)
    g = small.built.graph
    unobserved = []
    for n, d in g.nodes(data=True):
        real = observed_shape(n, g, small)
        if real is None:
            unobserved.append(n)
            continue
        assert real == d["shape"], (n, real, d["shape"])
    # Only the output node and units that hand out a tap (run through forward_tap) are unhooked.
    tapped = {t.unit for t in small.built.network.taps.values()}
    assert set(unobserved) <= {"output", *tapped}, unobserved
    assert small.outputs["out"].shape == (1, small.built.network.num_classes, 65, 65)


def test_shapes_at_an_odd_non_square_crop():
    """H and W travel separately (a swap would show) and odd sizes round up."""
    import torch

    from specc.api import build

    doc = load_spec(REPO / "specs/deeplabv3plus_mobilenetv2.yaml",
                    ["input.size=[41, 75]", "aspp.image_pooling.kernel=fixed"])
    built = build(doc)
    g = built.graph
    seen: dict[str, tuple[int, ...]] = {}
    module = built.module.eval()

    def recorder(name: str) -> Any:
        def hook(_module: Any, _args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                seen[name] = tuple(out.shape)
        return hook

    for name, sub in module.named_modules():
        sub.register_forward_hook(recorder(name))
    with torch.no_grad():
        out = module(torch.randn(1, 3, 41, 75))["out"]
    assert out.shape == (1, 21, 41, 75)
    checked = 0
    for n, d in g.nodes(data=True):
        name = module_of(n, built.network)
        if name in seen:
            assert seen[name][1:] == d["shape"], n
            checked += 1
    assert checked > 40
    assert g.nodes["backbone.layer7.unit1.project"]["shape"] == (320, 3, 5)
    assert built.network.head("aspp").pool_kernel == (3, 5)


def test_fixed_image_pooling_kernel_derives_from_the_crop():
    def kernel(*overrides: str) -> tuple[int, int]:
        net = network_of(REPO / "specs/deeplabv3_resnet101.yaml", *overrides)
        return net.head("aspp").pool_kernel

    assert kernel() == (33, 33)  # 513 at output stride 16
    assert kernel("input.size=[65, 65]") == (5, 5)
    assert kernel("backbone.output_stride=8") == (65, 65)
    assert kernel("input.size=[321, 513]") == (21, 33)


# --------------------------------------------------------------------------------------------
# Receptive field


def test_conv_out_is_same_padding():
    assert conv_out(65, 3, 2, 1) == 33
    assert conv_out(65, 3, 1, 12) == 65
    assert conv_out(33, 1, 2, 1) == 17
    assert conv_out(65, 7, 2, 1) == 33


@pytest.mark.parametrize("os_, expected", [
    # stem 3×3/2: RF 3, reduction 2. s1 (rate 1): +2·2 per conv → 7, 11.
    # OS 2: s2 is de-strided and keeps rate 1 → 15, 19; s3 runs at rate 2 (a 5×5 footprint,
    # +4·2 per conv) → 27, 35.
    (2, {"backbone.stem.conv1": 3, "backbone.s1.unit1.conv1": 7, "backbone.s1.unit1": 11,
         "backbone.s2.unit1.conv1": 15, "backbone.s2.unit1": 19,
         "backbone.s3.unit1.conv1": 27, "backbone.s3.unit1": 35}),
    # OS 4: s2's first conv has stride 2 (+2·2 → 15, then reduction 4), its second +2·4 → 23; s3
    # adds 8 per conv → 31, 39.
    (4, {"backbone.stem.conv1": 3, "backbone.s1.unit1": 11, "backbone.s2.unit1.conv1": 15,
         "backbone.s2.unit1": 23, "backbone.s3.unit1.conv1": 31, "backbone.s3.unit1": 39}),
])
def test_receptive_field_by_hand(os_, expected, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(os=os_))
    doc = load_spec(path)
    net = compile_spec(doc).network
    g = net.graph
    got = {n: g.nodes[n]["receptive_field"] for n in expected}
    assert got == expected
    assert g.nodes["backbone.s3.unit1"]["reduction"] == os_
    assert g.nodes["classifier"]["receptive_field"] == expected["backbone.s3.unit1"]
    from specc.analysis import encoder_receptive_field

    assert encoder_receptive_field(net) == expected["backbone.s3.unit1"]


def test_image_pooling_makes_the_receptive_field_global(graphs):
    g = graphs[REPO / "specs/deeplabv3_resnet101.yaml"]
    assert g.nodes["aspp.pool_upsample"]["receptive_field"] is None
    assert g.nodes["aspp.concat"]["receptive_field"] is None
    assert g.nodes["aspp.branch3"]["receptive_field"] > g.nodes["aspp.branch1"]["receptive_field"]
    cascade = graphs[REPO / "specs/deeplabv3_resnet101_cascade.yaml"]
    assert cascade.nodes["classifier"]["receptive_field"] is not None
