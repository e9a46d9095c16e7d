"""Stage 5 — emit: the linted graph → readable PyTorch source, through jinja2 templates.

Every decision is made here, in Python; the templates only lay out the values they are given.
Only the building blocks the model uses are emitted. The output is deterministic: it depends on
the graph alone (no dict-order or hash-seed accident, no timestamp).
"""

from __future__ import annotations

from typing import Any

import jinja2
import networkx as nx

from specc import __version__

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("specc", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)

#: Building blocks, in the order they are written, with the unit kinds that need each.
_BLOCKS = (
    ("conv_bn_act", None),
    ("separable_conv", {"xception", "separable"}),
    ("basic", {"basic"}),
    ("bottleneck", {"bottleneck"}),
    ("xception", {"xception"}),
    ("inverted_residual", {"inverted_residual"}),
    ("aspp", {"aspp"}),
    ("decoder", {"decoder"}),
    ("aux_head", {"aux"}),
)


def class_name(name: str) -> str:
    """``deeplabv3plus_xception`` → ``Deeplabv3plusXception``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def shape_text(channels: int | str, stride: int) -> str:
    """``(N, 256, H/16, W/16)``."""
    if stride == 1:
        return f"(N, {channels}, H, W)"
    return f"(N, {channels}, H/{stride}, W/{stride})"


def _kwargs(items: list[tuple[str, Any, Any]]) -> str:
    """``name=value`` for each (name, value, default) whose value is not the default."""
    out = []
    for key, value, default in items:
        if value != default:
            out.append(f"{key}={_lit(value)}")
    return ", ".join(out)


def _lit(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "(" + ", ".join(_lit(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_lit(v) for v in value) + "]"
    return repr(value)


def _call(cls: str, positional: list[Any], kwargs: list[tuple[str, Any, Any]]) -> str:
    args = [_lit(v) for v in positional]
    kw = _kwargs(kwargs)
    return f"{cls}({', '.join(args + ([kw] if kw else []))})"


def _unit_code(m: dict[str, Any], tap: int) -> str:
    eps = ("eps", m["eps"], 1e-5)
    kind = m["kind"]
    if kind == "bottleneck":
        return _call("Bottleneck", [m["in_channels"], m["mid_channels"], m["out_channels"]],
                     [("stride", m["stride"], 1), ("dilation", m["rates"][0], 1),
                      ("shortcut", m["shortcut"], "identity"), ("tap", tap, 3), eps])
    if kind == "basic":
        return _call("BasicBlock", [m["in_channels"], m["out_channels"]],
                     [("stride", m["stride"], 1), ("rates", tuple(m["rates"]), (1, 1)),
                      ("shortcut", m["shortcut"], "identity"), eps])
    if kind == "xception":
        return _call("XceptionUnit", [m["in_channels"], tuple(m["channels"])],
                     [("stride", m["stride"], 1), ("rates", tuple(m["rates"]), (1, 1, 1)),
                      ("shortcut", m["shortcut"], "conv"), ("relu", m["relu"], "pre"),
                      ("tap", tap, 3), eps])
    return _call("InvertedResidual", [m["in_channels"], m["out_channels"]],
                 [("expansion", m["expansion"], 6), ("stride", m["stride"], 1),
                  ("dilation", m["rates"][0], 1), ("act", m["act"], "relu6"), eps])


_TAP_INDEX = {"sep1": 1, "sep2": 2, "sep3": 3, "conv1": 1, "conv2": 2, "conv3": 3}


def _backbone(g: nx.DiGraph) -> dict[str, Any]:
    modules = g.graph["modules"]
    taps: dict[str, list[tuple[str, str | None]]] = {}
    for port, tap in sorted(g.graph.get("taps", {}).items()):
        taps.setdefault(tap["unit"], []).append((port, tap["inner"]))

    stem = next(m for m in modules if m["kind"] == "stem")
    stride = 1
    layers = []
    for c in stem["convs"]:
        stride *= c["stride"]
        code = _call("ConvBNAct", [c["in_channels"], c["out_channels"]],
                     [("kernel_size", c["kernel_size"], 1), ("stride", c["stride"], 1),
                      ("act", stem["act"], "relu"), ("eps", stem["eps"], 1e-5)])
        layers.append(dict(code=code, comment=shape_text(c["out_channels"], stride)))
    if stem["pool"] == "max":
        stride *= 2
        layers.append(dict(code="nn.MaxPool2d(3, stride=2, padding=1)",
                           comment=shape_text(stem["convs"][-1]["out_channels"], stride)))
    forward = [dict(code="x = self.stem(x)",
                    comment=shape_text(stem["convs"][-1]["out_channels"], stride))]
    for port, _inner in taps.get("stem", []):
        forward.append(dict(code=f'features["{port}"] = x', comment=""))

    stages: list[dict[str, Any]] = []
    units = [m for m in modules if m["kind"] in ("bottleneck", "basic", "xception",
                                                 "inverted_residual")]
    for stage in g.graph["stages"]:
        members = [m for m in units if m["stage"] == stage]
        keys = sorted({m["spec_key"] for m in members})
        spec_key = ", ".join(keys)
        if spec_key in ("backbone.preset", "backbone.cascade"):
            spec_key = f"{spec_key} → {stage}"
        entry = dict(attr=stage, spec_key=spec_key, units=[])
        unroll = any(
            inner is not None or i < len(members) - 1
            for i, m in enumerate(members)
            for _port, inner in taps.get(f"backbone.{stage}.{m['name']}", [])
        )
        for i, m in enumerate(members):
            path = f"backbone.{stage}.{m['name']}"
            unit_taps = taps.get(path, [])
            inners = {inner for _p, inner in unit_taps if inner is not None}
            tap_index = _TAP_INDEX[inners.pop()] if inners else 3
            shape = shape_text(m["shape"][0], m["output_stride"])
            entry["units"].append(dict(code=_unit_code(m, tap_index),
                                       comment=f"{m['name']}: {shape}"))
            if unroll:
                if any(inner is not None for _p, inner in unit_taps):
                    forward.append(dict(code=f"x, tapped = self.{stage}[{i}].forward_tap(x)",
                                        comment=shape))
                else:
                    forward.append(dict(code=f"x = self.{stage}[{i}](x)", comment=shape))
                for port, inner in unit_taps:
                    value = "tapped" if inner is not None else "x"
                    forward.append(dict(code=f'features["{port}"] = {value}', comment=""))
        if not unroll:
            forward.append(dict(code=f"x = self.{stage}(x)",
                                comment=shape_text(members[-1]["shape"][0],
                                                   members[-1]["output_stride"])))
            for port, _inner in taps.get(f"backbone.{stage}.{members[-1]['name']}", []):
                forward.append(dict(code=f'features["{port}"] = x', comment=""))
        stages.append(entry)
    return dict(stem=dict(spec_key=stem["spec_key"], layers=layers), stages=stages,
                forward=forward, description=g.graph["backbone_description"])


def _interpolate(var: str, size: str, mode: str, align_corners: bool) -> str:
    if mode == "nearest":
        return f'F.interpolate({var}, size={size}, mode="nearest")'
    return f'F.interpolate({var}, size={size}, mode="bilinear", align_corners={align_corners})'


def _model(g: nx.DiGraph) -> dict[str, Any]:
    init: list[dict[str, str]] = [dict(code="self.backbone = Backbone()", spec_key="backbone")]
    forward: list[dict[str, str]] = [dict(code="features = self.backbone(x)", comment="")]
    if not any(m["kind"] == "aspp" for m in g.graph["modules"]):
        forward.append(dict(code='y = features["out"]', comment=""))
    out_mode = g.graph["output_mode"]
    for m in g.graph["modules"]:
        kind = m["kind"]
        shape = shape_text(m["shape"][0], m["output_stride"]) if "shape" in m else ""
        if kind == "aspp":
            code = _call("ASPP", [m["in_channels"], m["channels"]], [
                ("rates", list(m["rates"]), None), ("separable", m["separable"], None),
                ("depthwise_norm", m["depthwise_norm"], None),
                ("pooling", m["pooling"] != "none", None),
                ("pool_kernel", list(m["pool_kernel"] or []), None),
                ("align_corners", m["align_corners"], None),
                ("projection_channels", m["projection_channels"], None),
                ("projection_kernel", m["projection_kernel"], None),
                ("dropout", m["dropout"], None), ("eps", m["eps"], 1e-5)])
            init.append(dict(code=f"self.aspp = {code}", spec_key=m["spec_key"]))
            forward.append(dict(code='y = self.aspp(features["out"])', comment=shape))
        elif kind == "extra":
            code = _call("ConvBNAct", [m["in_channels"], m["out_channels"]],
                         [("kernel_size", m["kernel_size"], 1), ("eps", m["eps"], 1e-5)])
            init.append(dict(code=f"self.extra = {code}", spec_key=m["spec_key"]))
            forward.append(dict(code="y = self.extra(y)", comment=shape))
        elif kind == "decoder":
            code = _call("Decoder", [m["encoder_channels"], m["low_level_channels"]], [
                ("projection", m["projection"], None), ("convs", m["convs"], None),
                ("channels", m["channels"], None), ("separable", m["separable"], None),
                ("depthwise_norm", m["depthwise_norm"], None), ("mode", m["mode"], None),
                ("align_corners", m["align_corners"], None), ("eps", m["eps"], 1e-5)])
            init.append(dict(code=f"self.decoder = {code}", spec_key=m["spec_key"]))
            forward.append(dict(code='y = self.decoder(y, features["low_level"])', comment=shape))
        elif kind == "classifier":
            init.append(dict(code=f"self.classifier = nn.Conv2d({m['in_channels']}, num_classes, 1)",
                             spec_key=m["spec_key"]))
            forward.append(dict(code="y = self.classifier(y)",
                                comment=shape_text("num_classes", m["output_stride"])))
            forward.append(dict(code="result: Dict[str, Tensor] = {}", comment=""))
            forward.append(dict(
                code='result["out"] = ' + _interpolate("y", "size", out_mode["mode"],
                                                       out_mode["align_corners"]),
                comment=shape_text("num_classes", 1)))
        elif kind == "aux":
            code = _call("AuxHead", [m["in_channels"], m["channels"], "NUM_CLASSES"],
                         [("dropout", m["dropout"], None), ("eps", m["eps"], 1e-5)])
            init.append(dict(code="self.aux = " + code.replace('"NUM_CLASSES"', "num_classes"),
                             spec_key=m["spec_key"]))
    if "aux" in g.graph.get("taps", {}):
        forward.append(dict(code='a = self.aux(features["aux"])', comment=""))
        forward.append(dict(code='result["aux"] = ' + _interpolate(
            "a", "size", out_mode["mode"], out_mode["align_corners"]),
            comment=shape_text("num_classes", 1)))
    return dict(init=init, forward=forward)


def _used_blocks(g: nx.DiGraph) -> list[str]:
    kinds = {m["kind"] for m in g.graph["modules"]}
    for m in g.graph["modules"]:
        if m.get("separable"):
            kinds.add("separable")
    return [name for name, needs in _BLOCKS if needs is None or needs & kinds]


def emit(g: nx.DiGraph, *, sha256: str) -> str:
    """The PyTorch source of the model in ``g`` (a module with a ``build()`` function)."""
    meta = g.graph
    header = _ENV.get_template("header.py.j2").render(
        version=__version__, name=meta["name"], sha256=sha256, title=meta["title"],
        summary=meta["summary"], mean=list(meta["input"]["mean"]), std=list(meta["input"]["std"]),
        crop=meta["input"]["crop"], num_classes=meta["num_classes"], has_aux="aux" in meta["taps"])
    parts = [header]
    for block in _used_blocks(g):
        parts.append(_ENV.get_template(f"{block}.py.j2").render())
    parts.append(_ENV.get_template("backbone.py.j2").render(**_backbone(g)))
    parts.append(_ENV.get_template("model.py.j2").render(
        class_name=class_name(meta["name"]), description=meta["title"],
        num_classes=meta["num_classes"], **_model(g)))
    return "".join(parts)
