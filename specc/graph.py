"""Stage 4 — graph: the model as a networkx DAG with shapes on every node, then linted.

Nodes are layers (a conv with its batch norm and activation is one node), named by where they sit
(``backbone.block4.unit2.conv2``, ``aspp.branch1``). Each node carries ``op``, channels, kernel,
stride, dilation, groups, its output stride, receptive field, output shape at the spec's crop,
parameter count and multiply-adds, and the spec key it came from. The graph also holds the
*module plan* (``G.graph["modules"]``): the constructor arguments of each generated module, in
order, which :mod:`specc.emit` turns into source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx

from specc.derive import Schedule, ScheduledUnit
from specc.errors import SpecError
from specc.spec import (
    BasicUnit,
    BottleneckUnit,
    InvertedResidualUnit,
    SeparableStyle,
    Spec,
    XceptionUnit,
)


def conv_out(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Output size of a conv padded by dilation·(kernel−1)/2 ("same" for stride 1)."""
    pad = dilation * (kernel - 1) // 2
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@dataclass
class _Cursor:
    """The running tensor while the builder walks the network."""

    node: str
    channels: int
    h: int
    w: int
    stride: int
    rf: int | None  # receptive field in input pixels; None once image pooling made it global
    jump: int


class GraphBuilder:
    """Adds layer nodes to a DiGraph, propagating shapes, stride and receptive field."""

    def __init__(self, spec: Spec, schedule: Schedule) -> None:
        self.spec = spec
        self.schedule = schedule
        self.eps = spec.backbone.norm.eps
        self.act = spec.backbone.activation or (
            "relu6" if spec.backbone.preset == "mobilenetv2" else "relu")
        self.g = nx.DiGraph()
        self.modules: list[dict[str, Any]] = []
        self.aliases: dict[str, str] = {}
        self.units: dict[str, dict[str, Any]] = {}

    # -- primitives -------------------------------------------------------------------------

    def _add(self, name: str, op: str, inputs: list[_Cursor], out: _Cursor, **attrs: Any) -> _Cursor:
        if name in self.g:
            raise SpecError(f"two layers are both named {name!r}", path=attrs.get("spec_key", ""))
        attrs.setdefault("params", 0)
        attrs.setdefault("macs", 0)
        self.g.add_node(name, op=op, out_channels=out.channels, shape=(out.channels, out.h, out.w),
                        output_stride=out.stride, receptive_field=out.rf,
                        in_channels=inputs[0].channels if inputs else 0, **attrs)
        for i, src in enumerate(inputs):
            self.g.add_edge(src.node, name, index=i, channels=src.channels)
        out.node = name
        return out

    def conv(self, name: str, x: _Cursor, out_channels: int, *, kernel: int = 1, stride: int = 1,
             dilation: int = 1, groups: int = 1, norm: bool = True, act: str | None = "relu",
             bias: bool = False, spec_key: str, pre_act: str | None = None) -> _Cursor:
        h, w = conv_out(x.h, kernel, stride, dilation), conv_out(x.w, kernel, stride, dilation)
        k_eff = dilation * (kernel - 1) + 1
        rf = None if x.rf is None else x.rf + (k_eff - 1) * x.jump
        params = kernel * kernel * (x.channels // groups) * out_channels
        params += out_channels if bias else 0
        params += 2 * out_channels if norm else 0
        macs = kernel * kernel * (x.channels // groups) * out_channels * h * w
        out = _Cursor(name, out_channels, h, w, x.stride * stride, rf, x.jump * stride)
        return self._add(name, "conv", [x], out, kernel=kernel, stride=stride, dilation=dilation,
                         groups=groups, norm=norm, act=act, pre_act=pre_act, bias=bias,
                         params=params, macs=macs, spec_key=spec_key)

    def sepconv(self, name: str, x: _Cursor, out_channels: int, *, stride: int = 1,
                dilation: int = 1, depthwise_norm: bool = True, depthwise_act: str | None = "relu",
                act: str | None = "relu", pre_act: str | None = None, spec_key: str) -> _Cursor:
        h, w = conv_out(x.h, 3, stride, dilation), conv_out(x.w, 3, stride, dilation)
        rf = None if x.rf is None else x.rf + 2 * dilation * x.jump
        c = x.channels
        params = 9 * c + (2 * c if depthwise_norm else 0) + c * out_channels + 2 * out_channels
        macs = 9 * c * h * w + c * out_channels * h * w
        out = _Cursor(name, out_channels, h, w, x.stride * stride, rf, x.jump * stride)
        return self._add(name, "sepconv", [x], out, kernel=3, stride=stride, dilation=dilation,
                         groups=c, norm=True, depthwise_norm=depthwise_norm,
                         depthwise_act=depthwise_act if depthwise_norm else None, act=act,
                         pre_act=pre_act, bias=False, params=params, macs=macs, spec_key=spec_key)

    def pool(self, name: str, x: _Cursor, op: str, *, kernel: int, stride: int, spec_key: str) -> _Cursor:
        h, w = conv_out(x.h, kernel, stride, 1), conv_out(x.w, kernel, stride, 1)
        rf = None if x.rf is None else x.rf + (kernel - 1) * x.jump
        out = _Cursor(name, x.channels, h, w, x.stride * stride, rf, x.jump * stride)
        return self._add(name, op, [x], out, kernel=kernel, stride=stride, dilation=1,
                         spec_key=spec_key)

    def merge(self, name: str, op: str, xs: list[_Cursor], *, act: str | None = None,
              spec_key: str) -> _Cursor:
        ref = xs[0]
        for other in xs[1:]:
            if (other.h, other.w) != (ref.h, ref.w):
                raise SpecError(f"{op} of {ref.node} {ref.h}×{ref.w} and {other.node} "
                                f"{other.h}×{other.w}: sizes differ", path=spec_key)
        channels = sum(x.channels for x in xs) if op == "concat" else ref.channels
        rfs = [x.rf for x in xs]
        rf = None if any(r is None for r in rfs) else max(rfs)  # type: ignore[type-var]
        out = _Cursor(name, channels, ref.h, ref.w, ref.stride, rf, ref.jump)
        return self._add(name, op, xs, out, act=act, spec_key=spec_key)

    # -- backbone ---------------------------------------------------------------------------

    def stem(self, x: _Cursor) -> _Cursor:
        sched = self.schedule
        args = []
        for i, c in enumerate(sched.stem.convs):
            x = self.conv(f"backbone.stem.conv{i + 1}", x, c.channels, kernel=c.kernel,
                          stride=c.stride, act=self.act, spec_key="backbone.stem")
            args.append(dict(in_channels=self.g.nodes[x.node]["in_channels"],
                             out_channels=c.channels, kernel_size=c.kernel, stride=c.stride))
        if sched.stem.pool == "max":
            x = self.pool("backbone.stem.pool", x, "maxpool", kernel=3, stride=2,
                          spec_key="backbone.stem.pool")
        self.modules.append(dict(kind="stem", attr="stem", convs=args, pool=sched.stem.pool,
                                 act=self.act, eps=self.eps, node=x.node, spec_key="backbone.stem"))
        return x

    def unit(self, u: ScheduledUnit, x: _Cursor, index: int) -> _Cursor:
        p = u.path
        unit = u.unit
        entry: dict[str, Any] = dict(kind=unit.type, stage=u.stage, index=index, name=u.name,
                                     in_channels=x.channels, stride=u.stride, rates=u.rates,
                                     spec_key=u.spec_key, eps=self.eps)
        skip = x
        if isinstance(unit, BottleneckUnit):
            y = self.conv(f"{p}.conv1", x, unit.mid_channels, spec_key=u.spec_key)
            y = self.conv(f"{p}.conv2", y, unit.mid_channels, kernel=3, stride=u.stride,
                          dilation=u.rates[0], spec_key=u.spec_key)
            y = self.conv(f"{p}.conv3", y, unit.channels, act=None, spec_key=u.spec_key)
            skip, shortcut = self._shortcut(p, x, unit.channels, u)
            out = self.merge(p, "add", [y, skip], act="relu", spec_key=u.spec_key)
            entry.update(mid_channels=unit.mid_channels, out_channels=unit.channels,
                         shortcut=shortcut)
        elif isinstance(unit, BasicUnit):
            y = self.conv(f"{p}.conv1", x, unit.channels, kernel=3, stride=u.stride,
                          dilation=u.rates[0], spec_key=u.spec_key)
            y = self.conv(f"{p}.conv2", y, unit.channels, kernel=3, dilation=u.rates[1], act=None,
                          spec_key=u.spec_key)
            skip, shortcut = self._shortcut(p, x, unit.channels, u)
            out = self.merge(p, "add", [y, skip], act="relu", spec_key=u.spec_key)
            entry.update(out_channels=unit.channels, shortcut=shortcut)
        elif isinstance(unit, XceptionUnit):
            y = x
            for i, ch in enumerate(unit.channels):
                inside = unit.relu == "inside"
                y = self.sepconv(f"{p}.sep{i + 1}", y, ch, stride=u.stride if i == 2 else 1,
                                 dilation=u.rates[i], depthwise_act="relu" if inside else None,
                                 act="relu" if inside else None,
                                 pre_act=None if inside else "relu", spec_key=u.spec_key)
            if unit.shortcut == "conv":
                skip = self.conv(f"{p}.shortcut", x, unit.channels[2], stride=u.stride, act=None,
                                 spec_key=u.spec_key)
            if unit.shortcut == "none":
                out = y
                self.aliases[p] = y.node
            else:
                if unit.shortcut == "identity" and (x.channels != unit.channels[2] or u.stride != 1):
                    raise SpecError(f"{p}: an identity shortcut needs equal channels and stride 1 "
                                    f"(found {x.channels}→{unit.channels[2]}, stride {u.stride}); "
                                    "use shortcut: conv", path=u.spec_key)
                out = self.merge(p, "add", [y, skip], spec_key=u.spec_key)
            entry.update(channels=tuple(unit.channels), shortcut=unit.shortcut, relu=unit.relu)
        else:
            assert isinstance(unit, InvertedResidualUnit)
            hidden = x.channels * unit.expansion
            y = x
            if unit.expansion != 1:
                y = self.conv(f"{p}.expand", y, hidden, act=self.act, spec_key=u.spec_key)
            y = self.conv(f"{p}.depthwise", y, hidden, kernel=3, stride=u.stride,
                          dilation=u.rates[0], groups=hidden, act=self.act, spec_key=u.spec_key)
            y = self.conv(f"{p}.project", y, unit.channels, act=None, spec_key=u.spec_key)
            residual = u.stride == 1 and x.channels == unit.channels
            if residual:
                out = self.merge(p, "add", [y, x], spec_key=u.spec_key)
            else:
                out = y
                self.aliases[p] = y.node
            entry.update(out_channels=unit.channels, expansion=unit.expansion, residual=residual,
                         act=self.act)
        entry["node"] = out.node
        entry["shape"] = (out.channels, out.h, out.w)
        entry["output_stride"] = out.stride
        self.modules.append(entry)
        self.units[p] = entry
        return out

    def _shortcut(self, p: str, x: _Cursor, channels: int, u: ScheduledUnit) -> tuple[_Cursor, str]:
        if x.channels != channels:
            return self.conv(f"{p}.shortcut", x, channels, stride=u.stride, act=None,
                             spec_key=u.spec_key), "conv"
        if u.stride != 1:
            return self.pool(f"{p}.subsample", x, "subsample", kernel=1, stride=u.stride,
                             spec_key=u.spec_key), "subsample"
        return x, "identity"

    # -- heads ------------------------------------------------------------------------------

    def conv3x3(self, name: str, x: _Cursor, channels: int, dilation: int, style: SeparableStyle,
                spec_key: str) -> _Cursor:
        if style.conv == "separable":
            return self.sepconv(name, x, channels, dilation=dilation,
                                depthwise_norm=style.depthwise_norm, spec_key=spec_key)
        return self.conv(name, x, channels, kernel=3, dilation=dilation, spec_key=spec_key)

    def upsample(self, name: str, x: _Cursor, like: _Cursor, mode: str, align_corners: bool,
                 spec_key: str, rf_global: bool = False) -> _Cursor:
        out = _Cursor(name, x.channels, like.h, like.w, like.stride, None if rf_global else x.rf,
                      like.jump)
        return self._add(name, "upsample", [x], out, mode=mode, align_corners=align_corners,
                         spec_key=spec_key)


#: Public members of ``torch.nn.Module`` (and its ``training`` flag): a stage named like one of
#: them would shadow it in the generated ``Backbone``. Kept as data so validation needs no torch.
_MODULE_MEMBERS = frozenset("""
add_module apply bfloat16 buffers call_super_init children compile cpu cuda double dump_patches
eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule half ipu
load_state_dict modules mtia named_buffers named_children named_modules named_parameters
parameters register_backward_hook register_buffer register_forward_hook
register_forward_pre_hook register_full_backward_hook register_full_backward_pre_hook
register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module
register_parameter register_state_dict_post_hook register_state_dict_pre_hook requires_grad_
set_extra_state set_submodule share_memory state_dict to to_empty train training type xpu
zero_grad""".split())


def _reserved_attributes() -> frozenset[str]:
    """Names a stage may not take: they are attributes of the generated ``Backbone`` module."""
    import keyword

    return _MODULE_MEMBERS | frozenset(keyword.kwlist) | {"stem", "features"}


def check_stage_names(schedule: Schedule) -> None:
    """Stage names become attributes of the generated backbone; refuse those that clash.

    Raises:
        SpecError: a stage is named like a keyword or an ``nn.Module`` attribute.
    """
    reserved = _reserved_attributes()
    for i, stage in enumerate(schedule.stages):
        if stage in reserved:
            raise SpecError(f"stage name {stage!r} is reserved (a Python keyword or an "
                            "nn.Module attribute); choose another name",
                            path=f"backbone.stages[{i}].name")


def build_graph(spec: Spec, schedule: Schedule) -> nx.DiGraph:
    """The model DAG of ``spec`` under ``schedule``, linted.

    Raises:
        SpecError: a tap names no node or a node at the wrong stride, or shapes do not agree.
    """
    from specc.heads import add_heads  # the head half of the builder

    check_stage_names(schedule)
    b = GraphBuilder(spec, schedule)
    h, w = spec.input.crop
    x = b._add("input", "input", [], _Cursor("input", 3, h, w, 1, 1, 1), spec_key="input")
    inp = x
    x = b.stem(x)
    stage_last: dict[str, str] = {}
    index: dict[str, int] = {}
    for u in schedule.units:
        i = index.get(u.stage, 0)
        index[u.stage] = i + 1
        x = b.unit(u, x, i)
        stage_last[u.stage] = x.node
    for stage, node in stage_last.items():
        b.aliases[f"backbone.{stage}"] = node
    b.aliases["backbone"] = x.node
    add_heads(b, spec, schedule, inp, x)
    g = b.g
    g.graph.update(name=spec.name, num_classes=spec.num_classes, input_size=(h, w),
                   output_stride=schedule.output_stride, modules=b.modules, aliases=b.aliases,
                   stages=list(schedule.stages),
                   input=dict(crop=list(spec.input.crop), mean=list(spec.input.mean),
                              std=list(spec.input.std)),
                   **describe(spec, schedule))
    lint(g)
    return g


def describe(spec: Spec, schedule: Schedule) -> dict[str, str]:
    """One-line title and a short summary of the model, for docstrings and `specc info`."""
    bb = spec.backbone
    family = "DeepLabv3+" if spec.decoder is not None else "DeepLabv3"
    backbone = bb.preset or "custom backbone"
    title = f"{family} with {backbone} at output stride {schedule.output_stride}."
    mg = f"multi-grid {tuple(schedule.multi_grid)}" if schedule.multi_grid else "no multi-grid"
    parts = [f"Backbone: {backbone}, {len(schedule.units)} units in "
             f"{len(schedule.stages)} stages, strides placed '{schedule.stride_placement}', "
             f"{mg}" + (f", {bb.cascade} cascaded copies" if bb.cascade else "") + "."]
    if spec.aspp is None:
        parts.append("No ASPP: the classifier reads the backbone output.")
    else:
        pooling = " + image pooling" if spec.aspp.image_pooling.enabled else ""
        parts.append(f"ASPP: rates {schedule.aspp_rates}{pooling}, {spec.aspp.style.conv} "
                     "3×3 convs.")
    if spec.decoder is not None:
        parts.append(f"Decoder: low-level feature {spec.decoder.low_level} (stride "
                     f"{spec.decoder.output_stride}) projected to {spec.decoder.projection}, "
                     f"{spec.decoder.convs} {spec.decoder.style.conv} 3×3 convs of "
                     f"{spec.decoder.channels}.")
    if spec.aux is not None:
        parts.append(f"Auxiliary head on {spec.aux.tap}.")
    backbone_description = (f"{backbone} feature extractor: {len(schedule.units)} units, output "
                            f"stride {schedule.output_stride}, {mg}.")
    return dict(title=title, summary="\n".join(parts), backbone_description=backbone_description)


def resolve(g: nx.DiGraph, name: str) -> str | None:
    """The node a tap name refers to: a node, a unit, a stage, or None."""
    if name in g:
        return name
    return g.graph.get("aliases", {}).get(name)


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
