"""The head half of stage 4: ASPP, the v3+ decoder, the classifier and the auxiliary head.

Called by :func:`specc.graph.build_graph` once the backbone nodes exist; checks that the decoder
and auxiliary taps name backbone nodes at the declared stride.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specc.errors import SpecError

if TYPE_CHECKING:
    from specc.derive import Schedule
    from specc.graph import GraphBuilder, _Cursor
    from specc.spec import Spec

#: Internal nodes a unit can hand out as a tap (through the unit's ``forward_tap``).
TAPPABLE = {"xception": ("sep1", "sep2", "sep3"), "bottleneck": ("conv1", "conv2", "conv3")}


def _candidates(b: GraphBuilder, stride: int) -> list[str]:
    names = [a for a, n in b.aliases.items()
             if a.count(".") == 1 and b.g.nodes[n]["output_stride"] == stride]
    names += [p for p, u in b.units.items() if u["output_stride"] == stride]
    for p, u in b.units.items():
        for inner in TAPPABLE.get(u["kind"], ()):
            node = f"{p}.{inner}"
            if node in b.g and b.g.nodes[node]["output_stride"] == stride:
                names.append(node)
    seen: list[str] = []
    for n in names:
        if n not in seen:
            seen.append(n)
    if len(seen) > 12:
        seen = [*seen[:12], "…"]
    return seen


def resolve_tap(b: GraphBuilder, name: str, stride: int | None, key: str) -> dict[str, Any]:
    """Where a tap comes from: the unit that makes it and, for a unit-internal node, which one.

    Raises:
        SpecError: no such backbone node, a node the generated code cannot hand out, or (when
            ``stride`` is given) a node at another stride.
    """
    node = name if name in b.g else b.aliases.get(name)
    if node is None or not node.startswith("backbone."):
        at = f"; nodes at stride {stride}: " + ", ".join(_candidates(b, stride)) if stride else ""
        raise SpecError(f"no node {name!r}{at}", path=key)
    actual = b.g.nodes[node]["output_stride"]
    if stride is not None and actual != stride:
        raise SpecError(f"{name!r} is at stride {actual}, but the decoder expects stride {stride} "
                        f"(decoder.output_stride); nodes at stride {stride}: "
                        + ", ".join(_candidates(b, stride)), path=key)
    # Which generated module hands the feature out.
    for path, unit in b.units.items():
        if unit["node"] == node:
            return dict(node=node, unit=path, inner=None)
        if node.startswith(path + "."):
            inner = node[len(path) + 1:]
            if inner not in TAPPABLE.get(unit["kind"], ()):
                allowed = ", ".join(f"{path}.{i}" for i in TAPPABLE.get(unit["kind"], ())) or path
                raise SpecError(f"cannot tap {name!r} inside a {unit['kind']} unit; "
                                f"tap one of: {allowed}", path=key)
            return dict(node=node, unit=path, inner=inner)
    if node.startswith("backbone.stem"):
        stem_out = max((n for n in b.g if n.startswith("backbone.stem.")),
                       key=lambda n: list(b.g.nodes).index(n))
        if node != stem_out:
            raise SpecError(f"cannot tap {name!r} inside the stem; tap its output {stem_out!r}",
                            path=key)
        return dict(node=node, unit="stem", inner=None)
    raise SpecError(f"cannot tap {name!r}", path=key)


def _aspp(b: GraphBuilder, spec: Spec, schedule: Schedule, x: _Cursor) -> _Cursor:
    """ASPP branches on the backbone output, concatenated and projected."""
    aspp = spec.aspp
    assert aspp is not None
    feats = x
    branches = [b.conv("aspp.branch0", feats, aspp.channels, spec_key="aspp.channels")]
    for i, rate in enumerate(schedule.aspp_rates):
        branches.append(b.conv3x3(f"aspp.branch{i + 1}", feats, aspp.channels, rate, aspp.style,
                                  spec_key=f"aspp.rates[{i}]"))
    pool_kernel = None
    ip = aspp.image_pooling
    if ip.enabled:
        if ip.kernel == "fixed":
            pool_kernel = (feats.h, feats.w)  # the feature map at the crop (TF: image_pooling_crop_size)
        pooled = b._add("aspp.pool", "avgpool", [feats],
                        type(feats)("", feats.channels, 1, 1, feats.stride, None, feats.jump),
                        kernel=pool_kernel, mode=ip.kernel, spec_key="aspp.image_pooling")
        pooled = b.conv("aspp.pool_conv", pooled, aspp.channels, spec_key="aspp.image_pooling")
        branches.append(b.upsample("aspp.pool_upsample", pooled, feats, "bilinear",
                                   ip.align_corners, spec_key="aspp.image_pooling", rf_global=True))
    y = b.merge("aspp.concat", "concat", branches, spec_key="aspp")
    pr = aspp.projection
    y = b.conv("aspp.project", y, pr.channels, kernel=pr.kernel, spec_key="aspp.projection")
    b.g.nodes[y.node]["dropout"] = pr.dropout
    b.modules.append(dict(kind="aspp", attr="aspp", in_channels=feats.channels,
                          channels=aspp.channels, rates=schedule.aspp_rates,
                          separable=aspp.style.conv == "separable",
                          depthwise_norm=aspp.style.depthwise_norm,
                          pooling=ip.kernel if ip.enabled else "none", pool_kernel=pool_kernel,
                          align_corners=ip.align_corners, projection_channels=pr.channels,
                          projection_kernel=pr.kernel, dropout=pr.dropout, eps=b.eps,
                          node=y.node, shape=(y.channels, y.h, y.w), output_stride=y.stride,
                          spec_key="aspp"))
    return y


def add_heads(b: GraphBuilder, spec: Spec, schedule: Schedule, inp: _Cursor, x: _Cursor) -> None:
    """Append ASPP, decoder, classifier, aux head and the output node to the builder's graph."""
    y = x
    if spec.aspp is not None:
        y = _aspp(b, spec, schedule, x)
    if spec.aspp is not None and spec.aspp.extra_conv is not None:
        ec = spec.aspp.extra_conv
        in_ch = y.channels
        y = b.conv("extra", y, ec.channels, kernel=ec.kernel, spec_key="aspp.extra_conv")
        b.modules.append(dict(kind="extra", attr="extra", in_channels=in_ch,
                              out_channels=ec.channels, kernel_size=ec.kernel, eps=b.eps,
                              node=y.node, shape=(y.channels, y.h, y.w), output_stride=y.stride,
                              spec_key="aspp.extra_conv"))

    taps: dict[str, dict[str, Any]] = {}
    dec = spec.decoder
    if dec is not None:
        tap = resolve_tap(b, dec.low_level, dec.output_stride, "decoder.low_level")
        taps["low_level"] = tap
        low = b.g.nodes[tap["node"]]
        from specc.graph import _Cursor as Cursor

        low_cur = Cursor(tap["node"], low["out_channels"], low["shape"][1], low["shape"][2],
                         low["output_stride"], low["receptive_field"], low["output_stride"])
        enc_channels = y.channels
        up = b.upsample("decoder.upsample", y, low_cur, dec.upsample.mode,
                        dec.upsample.align_corners, spec_key="decoder.upsample")
        proj = b.conv("decoder.project", low_cur, dec.projection, spec_key="decoder.projection")
        y = b.merge("decoder.concat", "concat", [up, proj], spec_key="decoder")
        for i in range(dec.convs):
            y = b.conv3x3(f"decoder.fuse{i + 1}", y, dec.channels, 1, dec.style,
                          spec_key="decoder.convs")
        b.modules.append(dict(kind="decoder", attr="decoder", low_level_channels=low["out_channels"],
                              encoder_channels=enc_channels, projection=dec.projection,
                              convs=dec.convs, channels=dec.channels,
                              separable=dec.style.conv == "separable",
                              depthwise_norm=dec.style.depthwise_norm, mode=dec.upsample.mode,
                              align_corners=dec.upsample.align_corners, eps=b.eps, node=y.node,
                              shape=(y.channels, y.h, y.w), output_stride=y.stride,
                              spec_key="decoder"))
    in_ch = y.channels
    y = b.conv("classifier", y, spec.num_classes, act=None, norm=False, bias=True,
               spec_key="num_classes")
    b.modules.append(dict(kind="classifier", attr="classifier", in_channels=in_ch,
                          num_classes=spec.num_classes, node=y.node,
                          shape=(y.channels, y.h, y.w), output_stride=y.stride,
                          spec_key="num_classes"))
    up = spec.output.upsample
    out = b.upsample("upsample", y, inp, up.mode, up.align_corners, spec_key="output.upsample")
    outputs = [out]
    ports = ["out"]
    if spec.aux is not None:
        aux = spec.aux
        tap = resolve_tap(b, aux.tap, None, "aux.tap")
        taps["aux"] = tap
        node = b.g.nodes[tap["node"]]
        from specc.graph import _Cursor as Cursor

        a = Cursor(tap["node"], node["out_channels"], node["shape"][1], node["shape"][2],
                   node["output_stride"], node["receptive_field"], node["output_stride"])
        a = b.conv("aux.conv", a, aux.channels, kernel=3, spec_key="aux.channels")
        b.g.nodes[a.node]["dropout"] = aux.dropout
        a = b.conv("aux.classifier", a, spec.num_classes, act=None, norm=False, bias=True,
                   spec_key="aux")
        a = b.upsample("aux.upsample", a, inp, up.mode, up.align_corners, spec_key="aux")
        b.modules.append(dict(kind="aux", attr="aux", in_channels=node["out_channels"],
                              channels=aux.channels, num_classes=spec.num_classes,
                              dropout=aux.dropout, eps=b.eps, node=a.node, spec_key="aux"))
        outputs.append(a)
        ports.append("aux")
    res = b._add("output", "output", outputs,
                 type(out)("", spec.num_classes, inp.h, inp.w, 1, out.rf, 1), spec_key="")
    for src, port in zip(outputs, ports, strict=True):
        b.g.edges[src.node, res.node]["port"] = port
    b.g.graph["taps"] = taps
    b.g.graph["output_mode"] = dict(mode=up.mode, align_corners=up.align_corners)
