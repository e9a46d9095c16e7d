"""Stage 4 — lower: the spec and its schedule → a :class:`specc.plan.Network`, linted.

The backbone is lowered by :mod:`specc.lower_backbone`, the heads by :mod:`specc.lower_heads`;
this module strings them together, describes the model, and lints the layer graph before anything
is emitted (acyclic, channels agree on every edge, one input, one output).
"""

from __future__ import annotations

import networkx as nx

from specc.derive import Schedule
from specc.errors import SpecError
from specc.lower_backbone import Context, activation, lower_backbone
from specc.lower_heads import HeadContext, lower_heads
from specc.plan import InputGeometry, LayerGraph, Network, Upsample
from specc.spec import Spec


def lower(spec: Spec, schedule: Schedule) -> Network:
    """The network of ``spec`` under ``schedule``: its blocks and its linted layer graph.

    Raises:
        SpecError: a tap names no node or a node at the wrong stride, or shapes do not agree.
    """
    lg = LayerGraph()
    h, w = spec.input.size
    image = lg.input(h, w)
    bb = spec.backbone
    timm = None if bb.timm is None else (bb.timm, bb.output_stride, (h, w))
    ctx = Context(lg, activation(spec), bb.norm.eps, timm)
    stem, stages, x = lower_backbone(ctx, schedule, image)
    head_eps = spec.backbone.norm.head_eps
    hc = HeadContext(lg=lg, spec=spec, schedule=schedule,
                     eps=ctx.eps if head_eps is None else head_eps, image=image, backbone=x,
                     stem=stem, stages=stages)
    heads = lower_heads(hc)
    lint(lg.g)
    up = spec.output.upsample
    return Network(
        name=spec.name, num_classes=spec.num_classes,
        input=InputGeometry((h, w), tuple(spec.input.mean), tuple(spec.input.std)),
        output_stride=schedule.output_stride, stem=stem, stages=stages, heads=heads,
        taps=dict(sorted(hc.taps.items())), aliases=dict(lg.aliases),
        outputs=tuple(hc.outputs), upsample=Upsample(up.mode, up.align_corners), graph=lg.g,
        **describe(spec, schedule))


def describe(spec: Spec, schedule: Schedule) -> dict[str, str]:
    """One-line title and a short summary of the model, for docstrings and `specc info`."""
    bb = spec.backbone
    family = "DeepLabv3+" if spec.decoder is not None else "DeepLabv3"
    if spec.fcn is not None:
        family = "FCN"
    if spec.lraspp is not None:
        family = "LR-ASPP"
    if spec.fc_aspp is not None:
        family = "DeepLab v1 (LargeFOV)" if len(spec.fc_aspp.rates) == 1 else "DeepLab v2 (ASPP-L)"
    backbone = bb.preset or (f"timm {bb.timm}" if bb.timm else "custom backbone")
    title = f"{family} with {backbone} at output stride {schedule.output_stride}."
    mg = f"multi-grid {tuple(schedule.multi_grid)}" if schedule.multi_grid else "no multi-grid"
    parts = [f"Backbone: {backbone}, {len(schedule.units)} units in "
             f"{len(schedule.stages)} stages, strides placed '{schedule.stride_placement}', "
             f"{mg}" + (f", {bb.cascade} cascaded copies" if bb.cascade else "") + "."]
    if spec.fcn is not None:
        parts.append(f"FCN head: a 3×3 conv of {spec.fcn.channels} and dropout "
                     f"{spec.fcn.dropout} before the classifier, no ASPP.")
    elif spec.lraspp is not None:
        parts.append(f"Lite R-ASPP: a gated 1×1 branch of {spec.lraspp.channels} on the backbone "
                     f"output and a classifier on {spec.lraspp.low_level}, summed.")
    elif spec.fc_aspp is not None:
        parts.append(f"DeepLab v1/v2 head: fc6 at rates {tuple(spec.fc_aspp.rates)}, each "
                     "branch classified and the logits summed.")
    elif spec.aspp is None:
        parts.append("No ASPP: the classifier reads the backbone output.")
    else:
        pooling = " + image pooling" if spec.aspp.image_pooling.enabled else ""
        parts.append(f"ASPP: rates {schedule.aspp_rates}{pooling}, {spec.aspp.style.conv} "
                     "3×3 convs.")
    if spec.decoder is not None:
        parts.append(f"Decoder: low-level feature {spec.decoder.low_level} (1/"
                     f"{spec.decoder.low_level_reduction} of the input) projected to {spec.decoder.projection}, "
                     f"{spec.decoder.convs} {spec.decoder.style.conv} 3×3 convs of "
                     f"{spec.decoder.channels}.")
    if spec.aux is not None:
        parts.append(f"Auxiliary head on {spec.aux.tap}.")
    backbone_description = (f"{backbone} feature extractor: {len(schedule.units)} units, output "
                            f"stride {schedule.output_stride}, {mg}.")
    if bb.timm is not None:
        parts[0] = (f"Backbone: timm's {bb.timm} as a features-only encoder, "
                    f"{len(schedule.stages)} stages (opaque to specc).")
        backbone_description = (f"timm's {bb.timm} features-only encoder: "
                                f"{len(schedule.stages)} stages, output stride "
                                f"{schedule.output_stride}.")
    return dict(title=title, summary="\n".join(parts), backbone_description=backbone_description)


def ordered_nodes(g: nx.DiGraph) -> list[str]:
    """Nodes in a deterministic topological order (ties broken by insertion index)."""
    order = {n: i for i, n in enumerate(g.nodes)}
    return list(nx.lexicographical_topological_sort(g, key=lambda n: order[n]))


def lint(g: nx.DiGraph) -> None:
    """Check the graph before emission: acyclic, channels agree on every edge, one output.

    Raises:
        SpecError: with what is wrong and how to fix it (a bug in a preset shows here too).
    """
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        raise SpecError(f"the graph has a cycle through {cycle[0][0]}; layers must feed forward")
    for src, dst, data in g.edges(data=True):
        if data["channels"] != g.nodes[src]["out_channels"]:
            raise SpecError(f"edge {src} → {dst} carries {data['channels']} channels but "
                            f"{src} makes {g.nodes[src]['out_channels']}")
        node = g.nodes[dst]
        if node["op"] in ("conv", "sepconv") and node["in_channels"] != data["channels"]:
            raise SpecError(f"{dst} expects {node['in_channels']} input channels, "
                            f"{src} gives {data['channels']}")
    sinks = [n for n in g.nodes if g.out_degree(n) == 0]
    if sinks != ["output"]:
        raise SpecError(f"expected one output node, found {', '.join(sorted(sinks))}; every "
                        "layer must lead to the output")
    sources = [n for n in g.nodes if g.in_degree(n) == 0]
    if sources != ["input"]:
        raise SpecError(f"expected one input node, found {', '.join(sorted(sources))}")
