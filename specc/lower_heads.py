"""Stage 4b — head lowering: ASPP, the extra conv, the FCN head, Lite R-ASPP, DeepLab v1/v2's heads, the v3+ decoder, the classifier and the
auxiliary head, each a registered :class:`specc.plan.Head` kind, lowered in registration order.

A head's ``lower`` returns None when the spec has no such head. The decoder and auxiliary head
read backbone features through *taps*: a backbone node named in the spec, checked to be one the
generated code can hand out (a unit's output, the stem's output, or a unit kind's tappable inner
layer) and, for the decoder, at the declared stride.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from specc.derive import Schedule
from specc.errors import SpecError
from specc.lower_backbone import Stem
from specc.plan import (
    ALWAYS,
    STEM,
    AtrousConv,
    Code,
    Feature,
    Head,
    LayerGraph,
    Line,
    Separable,
    Stage,
    Tap,
    Upsample,
    call,
    kinds,
    register,
    shape_text,
)
from specc.spec import SeparableStyle, Spec


@dataclass
class HeadContext:
    """What the heads' lowering shares: the graph, the spec, the backbone, and what the heads
    add to the network (taps and outputs)."""

    lg: LayerGraph
    spec: Spec
    schedule: Schedule
    eps: float
    #: The image node (outputs are resized to it).
    image: Feature
    #: The backbone's output.
    backbone: Feature
    stem: Stem
    stages: tuple[Stage, ...]
    taps: dict[str, Tap] = field(default_factory=dict)
    #: Output key → the tensor it returns, in order.
    outputs: dict[str, Feature] = field(default_factory=dict)
    #: Set by a head that makes the class logits itself (Lite R-ASPP): the classifier then
    #: only resizes them.
    logits: bool = False

    @property
    def upsample(self) -> Upsample:
        up = self.spec.output.upsample
        return Upsample(up.mode, up.align_corners)


def separable(style: SeparableStyle) -> Separable:
    return Separable(style.conv == "separable", style.depthwise_norm)


def interpolate(var: str, how: Upsample) -> str:
    """The generated call that resizes ``var`` to the input size."""
    if how.mode == "nearest":
        return f'F.interpolate({var}, size=size, mode="nearest")'
    return f'F.interpolate({var}, size=size, mode="bilinear", align_corners={how.align_corners})'


# ------------------------------------------------------------------------------------------------
# Taps


def _candidates(hc: HeadContext, reduction: int) -> list[str]:
    """Names a tap at ``reduction`` could use: stages, units, tappable inner layers (at most 12)."""
    g = hc.lg.g
    names = [a for a, n in hc.lg.aliases.items()
             if a.count(".") == 1 and g.nodes[n]["reduction"] == reduction]
    units = [u for s in hc.stages for u in s.units]
    names += [u.path for u in units if u.out.reduction == reduction]
    for u in units:
        for inner in u.taps:
            node = f"{u.path}.{inner}"
            if node in g and g.nodes[node]["reduction"] == reduction:
                names.append(node)
    seen = list(dict.fromkeys(names))
    return [*seen[:12], "…"] if len(seen) > 12 else seen


def resolve_tap(hc: HeadContext, port: str, name: str, reduction: int | None, key: str) -> Tap:
    """Where a tap comes from: the unit that makes it and, for a unit-internal node, which one.

    Raises:
        SpecError: no such backbone node, a node the generated code cannot hand out, or (when
            ``reduction`` is given) a node at another reduction.
    """
    g = hc.lg.g
    node = name if name in g else hc.lg.aliases.get(name)
    if node is None or not node.startswith("backbone."):
        at = (f"; nodes at 1/{reduction} of the input: " + ", ".join(_candidates(hc, reduction))
              if reduction else "")
        raise SpecError(f"no node {name!r}{at}", path=key)
    actual = g.nodes[node]["reduction"]
    if reduction is not None and actual != reduction:
        raise SpecError(f"{name!r} is at 1/{actual} of the input, but the decoder expects 1/"
                        f"{reduction} (decoder.low_level_reduction); nodes at 1/{reduction}: "
                        + ", ".join(_candidates(hc, reduction)), path=key)
    for unit in (u for s in hc.stages for u in s.units):
        if unit.out.node == node:
            return Tap(port, node, unit.path, None)
        if node.startswith(unit.path + "."):
            inner = node[len(unit.path) + 1:]
            if inner not in unit.taps:
                allowed = ", ".join(f"{unit.path}.{i}" for i in unit.taps) or unit.path
                raise SpecError(f"cannot tap {name!r} inside a {unit.kind} unit; "
                                f"tap one of: {allowed}", path=key)
            return Tap(port, node, unit.path, inner)
    if node.startswith("backbone.stem"):
        if node != hc.stem.out.node:
            raise SpecError(f"cannot tap {name!r} inside the stem; tap its output "
                            f"{hc.stem.out.node!r}", path=key)
        return Tap(port, node, STEM, None)
    raise SpecError(f"cannot tap {name!r}", path=key)


# ------------------------------------------------------------------------------------------------
# Head kinds


@register
@dataclass(frozen=True, kw_only=True)
class ASPP(Head):
    """Atrous spatial pyramid pooling: a 1×1 branch, 3×3 branches at the rates, optional image
    pooling, concatenated and projected (DeepLabv3 §3.3)."""

    kind = "aspp"
    code = "aspp"
    attr = "aspp"
    reads_backbone = True

    in_channels: int
    channels: int
    rates: tuple[int, ...]
    style: Separable
    #: ``fixed`` or ``adaptive`` image pooling, or ``none``.
    pooling: str
    #: The fixed pooling kernel (the feature map at the spec's input size).
    pool_kernel: tuple[int, int] | None
    align_corners: bool
    projection_channels: int
    projection_kernel: int
    dropout: float
    #: The image-pooling conv's norm: ``batch``, ``group`` or ``none``.
    pool_norm: str = "batch"
    #: GroupNorm groups of the image-pooling conv (``pool_norm == "group"``).
    pool_groups: int = 1
    #: The pooled branch comes first in the concat (MMSegmentation).
    pool_first: bool = False

    def shared(self) -> tuple[str, ...]:
        # conv_norm_act is always copied: ImagePooling's constructor names ConvNormAct.
        layers = ("conv_bn_act", "conv_norm_act")
        return (*layers, "separable_conv") if self.style.separable else layers

    def init(self) -> list[Line]:
        code = call("ASPP", [self.in_channels, self.channels], [
            ("rates", list(self.rates), ALWAYS), ("separable", self.style.separable, ALWAYS),
            ("depthwise_norm", self.style.depthwise_norm, ALWAYS),
            ("pooling", self.pooling != "none", ALWAYS),
            ("pool_kernel", list(self.pool_kernel or []), ALWAYS),
            ("align_corners", self.align_corners, ALWAYS),
            ("projection_channels", self.projection_channels, ALWAYS),
            ("projection_kernel", self.projection_kernel, ALWAYS),
            ("dropout", self.dropout, ALWAYS), ("pool_norm", self.pool_norm, "batch"),
            ("pool_groups", self.pool_groups, 1), ("pool_first", self.pool_first, False),
            ("eps", self.eps, 1e-5)])
        return [Line(f"self.aspp = {code}", self.spec_key)]

    def forward(self) -> list[Line]:
        return [Line('y = self.aspp(features["out"])',
                     shape_text(self.out.channels, self.out.reduction))]

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library == "smp":
            return self._smp_map(at)
        if library == "mmseg":
            return self._mmseg_map(at)
        if library != "torchvision":
            return super().weight_map(library, at)
        if self.pool_first:
            return "torchvision's ASPP concatenates the pooled branch last, the spec's first"
        if self.style.separable:
            return "torchvision's ASPP has plain 3×3 convs, the spec's are separable"
        if self.pooling != "none" and self.pool_norm != "batch":
            return ("torchvision's image pooling has a BatchNorm, the spec's "
                    f"aspp.image_pooling.norm is '{self.pool_norm}': its ASPP has no counterpart")
        src = f"{at}classifier.0"
        n = len(self.rates)
        out = {}
        for i in range(n + 1):
            out[f"convs.{i}.conv"] = f"{src}.convs.{i}.0"
            out[f"convs.{i}.bn"] = f"{src}.convs.{i}.1"
        if self.pooling != "none":
            out[f"convs.{n + 1}.conv.conv"] = f"{src}.convs.{n + 1}.1"
            out[f"convs.{n + 1}.conv.bn"] = f"{src}.convs.{n + 1}.2"
        out.update({"project.conv": f"{src}.project.0", "project.bn": f"{src}.project.1"})
        return out

    def _mmseg_map(self, at: str) -> dict[str, str] | str:
        """MMSegmentation's ``ASPPHead`` / ``DepthwiseSeparableASPPHead`` at ``at``
        (``decode_head``): ``image_pool.1`` (conv, bn), ``aspp_modules.{i}`` (the 1×1 branch and
        the rates: conv, bn or depthwise_conv / pointwise_conv), ``bottleneck`` (the 3×3
        projection); the pooled branch is concatenated first."""
        if self.pooling == "none" or self.pool_norm != "batch" or not self.pool_first:
            return ("MMSegmentation's ASPP has an image-pooling branch with a BatchNorm, "
                    "concatenated first (aspp.image_pooling.position: first)")
        if self.style.separable and not self.style.depthwise_norm:
            return ("MMSegmentation's separable convs have BN + ReLU between depthwise and "
                    "pointwise, the spec's aspp.style.depthwise_norm is false")
        n = len(self.rates)
        out = {"convs.0.conv": f"{at}.aspp_modules.0.conv",
               "convs.0.bn": f"{at}.aspp_modules.0.bn"}
        for i in range(1, n + 1):
            m = f"{at}.aspp_modules.{i}"
            if self.style.separable:
                out.update({f"convs.{i}.depthwise": f"{m}.depthwise_conv.conv",
                            f"convs.{i}.bn_depthwise": f"{m}.depthwise_conv.bn",
                            f"convs.{i}.pointwise": f"{m}.pointwise_conv.conv",
                            f"convs.{i}.bn_pointwise": f"{m}.pointwise_conv.bn"})
            else:
                out.update({f"convs.{i}.conv": f"{m}.conv", f"convs.{i}.bn": f"{m}.bn"})
        out.update({f"convs.{n + 1}.conv.conv": f"{at}.image_pool.1.conv",
                    f"convs.{n + 1}.conv.bn": f"{at}.image_pool.1.bn",
                    "project.conv": f"{at}.bottleneck.conv", "project.bn": f"{at}.bottleneck.bn"})
        return out

    def _smp_map(self, at: str) -> dict[str, str] | str:
        """smp's ASPP at ``at`` (``decoder.aspp`` in DeepLabV3, ``decoder.aspp.0`` in
        DeepLabV3Plus): ``convs.{i}`` are Sequentials of conv (or a depthwise + pointwise
        Sequential), BN, ReLU; the pooling branch is pool, conv, BN, ReLU."""
        if self.pooling == "none" or self.pool_norm != "batch" or self.pool_first:
            return ("smp's ASPP has an image-pooling branch with a BatchNorm, concatenated "
                    "last; the spec's does not")
        if self.style.separable and self.style.depthwise_norm:
            return ("smp's separable convs have nothing between depthwise and pointwise, the "
                    "spec's aspp.style.depthwise_norm is true")
        n = len(self.rates)
        out = {"convs.0.conv": f"{at}.convs.0.0", "convs.0.bn": f"{at}.convs.0.1"}
        for i in range(1, n + 1):
            if self.style.separable:
                out.update({f"convs.{i}.depthwise": f"{at}.convs.{i}.0.0",
                            f"convs.{i}.pointwise": f"{at}.convs.{i}.0.1",
                            f"convs.{i}.bn_pointwise": f"{at}.convs.{i}.1"})
            else:
                out.update({f"convs.{i}.conv": f"{at}.convs.{i}.0",
                            f"convs.{i}.bn": f"{at}.convs.{i}.1"})
        out.update({f"convs.{n + 1}.conv.conv": f"{at}.convs.{n + 1}.1",
                    f"convs.{n + 1}.conv.bn": f"{at}.convs.{n + 1}.2",
                    "project.conv": f"{at}.project.0", "project.bn": f"{at}.project.1"})
        return out

    @classmethod
    def lower(cls, hc: HeadContext, y: Feature) -> tuple[ASPP | None, Feature]:
        aspp = hc.spec.aspp
        if aspp is None:
            return None, y
        lg, feats, style = hc.lg, y, separable(aspp.style)
        branches = [lg.conv("aspp.branch0", feats, aspp.channels, spec_key="aspp.channels")]
        atrous = []
        for i, rate in enumerate(hc.schedule.aspp_rates):
            key = f"aspp.rates[{i}]"
            branches.append(lg.conv3x3(f"aspp.branch{i + 1}", feats, aspp.channels, rate, style,
                                       spec_key=key))
            atrous.append(AtrousConv(f"aspp.branch{i + 1}", rate, (feats.h, feats.w), key))
        pool_kernel = None
        ip = aspp.image_pooling
        if ip.enabled:
            if ip.kernel == "fixed":  # the feature map at input.size (TF: image_pooling_crop_size)
                pool_kernel = (feats.h, feats.w)
            pooled = lg.global_pool("aspp.pool", feats, kernel=pool_kernel, mode=ip.kernel,
                                    spec_key="aspp.image_pooling")
            pooled = lg.conv("aspp.pool_conv", pooled, aspp.channels, norm=ip.norm != "none",
                             bias=ip.norm == "none", spec_key="aspp.image_pooling")
            branches.append(lg.upsample("aspp.pool_upsample", pooled, feats,
                                        Upsample("bilinear", ip.align_corners),
                                        spec_key="aspp.image_pooling", rf_global=True))
            if ip.position == "first":
                branches = branches[-1:] + branches[:-1]
        y = lg.merge("aspp.concat", "concat", branches, spec_key="aspp")
        pr = aspp.projection
        y = lg.conv("aspp.project", y, pr.channels, kernel=pr.kernel, spec_key="aspp.projection")
        lg.g.nodes[y.node]["dropout"] = pr.dropout
        block = cls(spec_key="aspp", out=y, eps=hc.eps, atrous=tuple(atrous),
                    in_channels=feats.channels, channels=aspp.channels,
                    rates=tuple(hc.schedule.aspp_rates), style=style,
                    pooling=ip.kernel if ip.enabled else "none", pool_kernel=pool_kernel,
                    align_corners=ip.align_corners, projection_channels=pr.channels,
                    projection_kernel=pr.kernel, dropout=pr.dropout, pool_norm=ip.norm,
                    pool_groups=group_count(aspp.channels) if ip.norm == "group" else 1,
                    pool_first=ip.enabled and ip.position == "first")
        return block, y


def group_count(channels: int, most: int = 32, least_per_group: int = 8) -> int:
    """GroupNorm groups for the image-pooling conv: the most groups (up to ``most``, Wu & He's
    32) that divide ``channels`` and keep at least ``least_per_group`` channels in each. The
    pooled map can be 1×1, where a group of one channel would normalize every value to zero."""
    for groups in range(min(most, channels // least_per_group), 1, -1):
        if channels % groups == 0:
            return groups
    return 1


#: A plain 3×3 conv (the extra conv's default style).
PLAIN = Separable(separable=False, depthwise_norm=True)


@register
@dataclass(frozen=True, kw_only=True)
class ExtraConv(Head):
    """A conv → BN → ReLU between the ASPP and the classifier (torchvision's DeepLabHead), or a
    separable 3×3 conv there (smp's DeepLabV3Plus: depthwise, pointwise, then BN + ReLU)."""

    kind = "extra"
    attr = "extra"

    in_channels: int
    out_channels: int
    kernel_size: int
    style: Separable = PLAIN

    def shared(self) -> tuple[str, ...]:
        return ("conv_bn_act", "separable_conv") if self.style.separable else ("conv_bn_act",)

    def init(self) -> list[Line]:
        if self.style.separable:
            code = call("SeparableConv", [self.in_channels, self.out_channels],
                        [("depthwise_norm", self.style.depthwise_norm, ALWAYS),
                         ("eps", self.eps, 1e-5)])
        else:
            code = call("ConvBNAct", [self.in_channels, self.out_channels],
                        [("kernel_size", self.kernel_size, 1), ("eps", self.eps, 1e-5)])
        return [Line(f"self.extra = {code}", self.spec_key)]

    def forward(self) -> list[Line]:
        return [Line("y = self.extra(y)", shape_text(self.out.channels, self.out.reduction))]

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library == "torchvision":
            if self.style.separable:
                return "torchvision's extra conv is a plain 3×3 conv, the spec's is separable"
            return {"conv": f"{at}classifier.1", "bn": f"{at}classifier.2"}
        if library == "smp":
            return self._smp_map(at)
        return super().weight_map(library, at)

    def _smp_map(self, at: str) -> dict[str, str] | str:
        """``at`` is where smp keeps its ASPP. DeepLabV3's ``decoder.aspp`` is followed by a
        plain conv ``decoder.conv`` and ``decoder.bn``; DeepLabV3Plus's ``decoder.aspp.0`` by
        a separable conv ``decoder.aspp.1`` (depthwise, pointwise) and ``decoder.aspp.2`` (BN)."""
        if at.endswith(".0"):
            seq = at[:-2]
            if not self.style.separable or self.style.depthwise_norm:
                return ("smp's DeepLabV3Plus has a separable extra conv with nothing between "
                        "depthwise and pointwise (aspp.extra_conv.style: {conv: separable, "
                        "depthwise_norm: false})")
            return {"depthwise": f"{seq}.1.0", "pointwise": f"{seq}.1.1",
                    "bn_pointwise": f"{seq}.2"}
        if self.style.separable or self.kernel_size != 3:
            return "smp's DeepLabV3 has a plain 3×3 extra conv"
        decoder = at.rpartition(".")[0]
        return {"conv": f"{decoder}.conv", "bn": f"{decoder}.bn"}

    @classmethod
    def lower(cls, hc: HeadContext, y: Feature) -> tuple[ExtraConv | None, Feature]:
        if hc.spec.aspp is None or hc.spec.aspp.extra_conv is None:
            return None, y
        ec = hc.spec.aspp.extra_conv
        style = separable(ec.style)
        if style.separable:
            out = hc.lg.conv3x3("extra", y, ec.channels, 1, style, spec_key="aspp.extra_conv")
        else:
            out = hc.lg.conv("extra", y, ec.channels, kernel=ec.kernel,
                             spec_key="aspp.extra_conv")
        return cls(spec_key="aspp.extra_conv", out=out, eps=hc.eps, in_channels=y.channels,
                   out_channels=ec.channels, kernel_size=ec.kernel, style=style), out


@register
@dataclass(frozen=True, kw_only=True)
class FCN(Head):
    """An FCN head in place of ASPP: 3×3 conv → BN → ReLU → dropout on the backbone output,
    before the classifier (torchvision's ``FCNHead``, whose last layer is our classifier)."""

    kind = "fcn"
    code = "fcn_head"
    attr = "fcn"
    reads_backbone = True

    in_channels: int
    channels: int
    dropout: float

    def init(self) -> list[Line]:
        code = call("FCNHead", [self.in_channels, self.channels],
                    [("dropout", self.dropout, ALWAYS), ("eps", self.eps, 1e-5)])
        return [Line(f"self.fcn = {code}", self.spec_key)]

    def forward(self) -> list[Line]:
        return [Line('y = self.fcn(features["out"])',
                     shape_text(self.out.channels, self.out.reduction))]

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library == "torchvision":  # classifier = [3×3 conv, BN, ReLU, dropout, 1×1 conv]
            return {"conv.conv": f"{at}classifier.0", "conv.bn": f"{at}classifier.1"}
        return super().weight_map(library, at)

    @classmethod
    def lower(cls, hc: HeadContext, y: Feature) -> tuple[FCN | None, Feature]:
        fcn = hc.spec.fcn
        if fcn is None:
            return None, y
        if hc.spec.aspp is not None:
            raise SpecError("expected aspp: null with an FCN head (it takes ASPP's place), "
                            "found an aspp section", path="fcn")
        out = hc.lg.conv("fcn.conv", y, fcn.channels, kernel=3, spec_key="fcn.channels")
        hc.lg.g.nodes[out.node]["dropout"] = fcn.dropout
        return cls(spec_key="fcn", out=out, eps=hc.eps, in_channels=y.channels,
                   channels=fcn.channels, dropout=fcn.dropout), out


@register
@dataclass(frozen=True, kw_only=True)
class LiteRASPP(Head):
    """Lite R-ASPP in place of ASPP: it reads the backbone output and a low-level tap and makes
    the class logits (the classifier then only resizes them; MobileNetV3 §6.4)."""

    kind = "lraspp"
    code = "lraspp"
    attr = "lraspp"
    reads_backbone = True

    low_channels: int
    high_channels: int
    channels: int
    num_classes: int
    upsample: Upsample

    def init(self) -> list[Line]:
        code = call("LRASPP", [self.low_channels, self.high_channels, self.channels,
                               Code("num_classes")],
                    [("mode", self.upsample.mode, "bilinear"),
                     ("align_corners", self.upsample.align_corners, False),
                     ("eps", self.eps, 1e-5)])
        return [Line(f"self.lraspp = {code}", self.spec_key)]

    def forward(self) -> list[Line]:
        return [Line('y = self.lraspp(features["low_level"], features["out"])',
                     shape_text("num_classes", self.out.reduction))]

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library != "torchvision":
            return super().weight_map(library, at)
        src = f"{at}classifier"
        return {"cbr.conv": f"{src}.cbr.0", "cbr.bn": f"{src}.cbr.1", "scale": f"{src}.scale.1",
                "low_classifier": f"{src}.low_classifier",
                "high_classifier": f"{src}.high_classifier"}

    @classmethod
    def lower(cls, hc: HeadContext, y: Feature) -> tuple[LiteRASPP | None, Feature]:
        spec = hc.spec.lraspp
        if spec is None:
            return None, y
        others = [k for k in ("aspp", "fcn", "decoder") if getattr(hc.spec, k) is not None]
        if others:
            raise SpecError(f"expected aspp: null and no fcn or decoder with a Lite R-ASPP head "
                            f"(it makes the logits itself), found {', '.join(others)}",
                            path="lraspp")
        lg, n = hc.lg, hc.spec.num_classes
        tap = resolve_tap(hc, "low_level", spec.low_level, None, "lraspp.low_level")
        hc.taps[tap.port] = tap
        low = lg.feature(tap.node)
        branch = lg.conv("lraspp.cbr", y, spec.channels, spec_key="lraspp.channels")
        pooled = lg.global_pool("lraspp.pool", y, kernel=None, mode="adaptive",
                                spec_key="lraspp")
        gate = lg.conv("lraspp.scale", pooled, spec.channels, norm=False, act="sigmoid",
                       spec_key="lraspp.channels")
        gated = lg.add("lraspp.gate", "mul", [branch, gate],
                       replace(branch, rf=None), spec_key="lraspp")
        how = Upsample(spec.upsample.mode, spec.upsample.align_corners)
        up = lg.upsample("lraspp.upsample", gated, low, how, spec_key="lraspp.upsample",
                         rf_global=True)
        low_logits = lg.conv("lraspp.low_classifier", low, n, act=None, norm=False, bias=True,
                             spec_key="lraspp.low_level")
        high_logits = lg.conv("lraspp.high_classifier", up, n, act=None, norm=False, bias=True,
                              spec_key="lraspp")
        out = lg.merge("lraspp.sum", "add", [low_logits, high_logits], spec_key="lraspp")
        hc.logits = True
        return cls(spec_key="lraspp", out=out, eps=hc.eps, low_channels=low.channels,
                   high_channels=y.channels, channels=spec.channels, num_classes=n,
                   upsample=how), out


@register
@dataclass(frozen=True, kw_only=True)
class FCASPP(Head):
    """DeepLab v1/v2's head in place of ASPP: per rate fc6 (3×3 atrous) → fc7 (1×1) → a 1×1
    classifier, the logits summed (LargeFOV with one rate, ASPP-L with four); the classifier
    then only resizes them."""

    kind = "fc_aspp"
    code = "fc_aspp"
    attr = "fc_aspp"
    reads_backbone = True

    in_channels: int
    #: Channels of fc6 and fc7; 0: each branch is one 3×3 conv to the classes.
    channels: int
    num_classes: int
    rates: tuple[int, ...]
    dropout: float

    def shared(self) -> tuple[str, ...]:
        return ()

    def init(self) -> list[Line]:
        code = call("FCASPP", [self.in_channels, self.channels, Code("num_classes")],
                    [("rates", list(self.rates), ALWAYS), ("dropout", self.dropout, ALWAYS)])
        return [Line(f"self.fc_aspp = {code}", self.spec_key)]

    def forward(self) -> list[Line]:
        return [Line('y = self.fc_aspp(features["out"])',
                     shape_text("num_classes", self.out.reduction))]

    @classmethod
    def lower(cls, hc: HeadContext, y: Feature) -> tuple[FCASPP | None, Feature]:
        spec = hc.spec.fc_aspp
        if spec is None:
            return None, y
        others = [k for k in ("aspp", "fcn", "lraspp", "decoder")
                  if getattr(hc.spec, k) is not None]
        if others:
            raise SpecError("expected aspp: null and no fcn, lraspp or decoder with fc_aspp (it "
                            f"makes the logits itself), found {', '.join(others)}",
                            path="fc_aspp")
        lg, n = hc.lg, hc.spec.num_classes
        channels = spec.channels or 0
        logits, atrous = [], []
        for i, rate in enumerate(spec.rates):
            key, b = f"fc_aspp.rates[{i}]", f"fc_aspp.branch{i}"
            if channels:
                z = lg.conv(f"{b}.fc6", y, channels, kernel=3, dilation=rate, norm=False,
                            bias=True, spec_key=key)
                lg.g.nodes[z.node]["dropout"] = spec.dropout
                z = lg.conv(f"{b}.fc7", z, channels, norm=False, bias=True,
                            spec_key="fc_aspp.channels")
                lg.g.nodes[z.node]["dropout"] = spec.dropout
                z = lg.conv(f"{b}.fc8", z, n, act=None, norm=False, bias=True, spec_key=key)
                atrous.append(AtrousConv(f"{b}.fc6", rate, (y.h, y.w), key))
            else:
                z = lg.conv(f"{b}.fc8", y, n, kernel=3, dilation=rate, act=None, norm=False,
                            bias=True, spec_key=key)
                atrous.append(AtrousConv(f"{b}.fc8", rate, (y.h, y.w), key))
            logits.append(z)
        out = logits[0] if len(logits) == 1 else lg.merge("fc_aspp.sum", "add", logits,
                                                          spec_key="fc_aspp")
        hc.logits = True
        return cls(spec_key="fc_aspp", out=out, atrous=tuple(atrous), in_channels=y.channels,
                   channels=channels, num_classes=n, rates=tuple(spec.rates),
                   dropout=spec.dropout), out


@register
@dataclass(frozen=True, kw_only=True)
class Decoder(Head):
    """The DeepLabv3+ decoder: upsample the encoder output to the low-level feature, concat it
    with the projected low-level feature, refine with 3×3 convs (DeepLabv3+ §3.1)."""

    kind = "decoder"
    code = "decoder"
    attr = "decoder"

    low_level_channels: int
    encoder_channels: int
    projection: int
    convs: int
    channels: int
    style: Separable
    upsample: Upsample

    def shared(self) -> tuple[str, ...]:
        return ("conv_bn_act", "separable_conv") if self.style.separable else ("conv_bn_act",)

    def init(self) -> list[Line]:
        code = call("Decoder", [self.encoder_channels, self.low_level_channels], [
            ("projection", self.projection, ALWAYS), ("convs", self.convs, ALWAYS),
            ("channels", self.channels, ALWAYS), ("separable", self.style.separable, ALWAYS),
            ("depthwise_norm", self.style.depthwise_norm, ALWAYS),
            ("mode", self.upsample.mode, ALWAYS),
            ("align_corners", self.upsample.align_corners, ALWAYS), ("eps", self.eps, 1e-5)])
        return [Line(f"self.decoder = {code}", self.spec_key)]

    def forward(self) -> list[Line]:
        return [Line('y = self.decoder(y, features["low_level"])',
                     shape_text(self.out.channels, self.out.reduction))]

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library == "torchvision":
            return "torchvision's DeepLabV3 has no decoder (DeepLabv3+)"
        if library == "smp":
            return self._smp_map(at)
        if library == "mmseg":
            return self._mmseg_map(at)
        return super().weight_map(library, at)

    def _mmseg_map(self, at: str) -> dict[str, str] | str:
        """MMSegmentation's ``DepthwiseSeparableASPPHead`` at ``at``: ``c1_bottleneck`` (the
        low-level projection) and ``sep_bottleneck.{i}``, separable convs with BN + ReLU after
        the depthwise and the pointwise conv."""
        if not self.style.separable or not self.style.depthwise_norm:
            return ("MMSegmentation's decoder convs are separable with BN + ReLU after the "
                    "depthwise conv (decoder.style: {conv: separable, depthwise_norm: true})")
        out = {"project.conv": f"{at}.c1_bottleneck.conv", "project.bn": f"{at}.c1_bottleneck.bn"}
        for i in range(self.convs):
            m = f"{at}.sep_bottleneck.{i}"
            out.update({f"fuse.{i}.depthwise": f"{m}.depthwise_conv.conv",
                        f"fuse.{i}.bn_depthwise": f"{m}.depthwise_conv.bn",
                        f"fuse.{i}.pointwise": f"{m}.pointwise_conv.conv",
                        f"fuse.{i}.bn_pointwise": f"{m}.pointwise_conv.bn"})
        return out

    def _smp_map(self, at: str) -> dict[str, str] | str:
        """smp's DeepLabV3Plus decoder (``at``: its ASPP, ``decoder.aspp.0``): ``block1`` (1×1 conv, BN, ReLU) projects the
        low-level feature, ``block2`` is one separable conv (depthwise, pointwise), BN, ReLU."""
        if self.convs != 1 or not self.style.separable or self.style.depthwise_norm:
            return ("smp's decoder has one separable 3×3 conv with nothing between depthwise "
                    "and pointwise (decoder.convs: 1, decoder.style: {conv: separable, "
                    "depthwise_norm: false})")
        dec = at.rpartition(".aspp")[0]
        return {"project.conv": f"{dec}.block1.0", "project.bn": f"{dec}.block1.1",
                "fuse.0.depthwise": f"{dec}.block2.0.0", "fuse.0.pointwise": f"{dec}.block2.0.1",
                "fuse.0.bn_pointwise": f"{dec}.block2.1"}

    @classmethod
    def lower(cls, hc: HeadContext, y: Feature) -> tuple[Decoder | None, Feature]:
        dec = hc.spec.decoder
        if dec is None:
            return None, y
        lg = hc.lg
        tap = resolve_tap(hc, "low_level", dec.low_level, dec.low_level_reduction, "decoder.low_level")
        hc.taps[tap.port] = tap
        low = lg.feature(tap.node)
        how = Upsample(dec.upsample.mode, dec.upsample.align_corners)
        up = lg.upsample("decoder.upsample", y, low, how, spec_key="decoder.upsample")
        proj = lg.conv("decoder.project", low, dec.projection, spec_key="decoder.projection")
        out = lg.merge("decoder.concat", "concat", [up, proj], spec_key="decoder")
        style = separable(dec.style)
        for i in range(dec.convs):
            out = lg.conv3x3(f"decoder.fuse{i + 1}", out, dec.channels, 1, style,
                             spec_key="decoder.convs")
        return cls(spec_key="decoder", out=out, eps=hc.eps, low_level_channels=low.channels,
                   encoder_channels=y.channels, projection=dec.projection, convs=dec.convs,
                   channels=dec.channels, style=style, upsample=how), out


@register
@dataclass(frozen=True, kw_only=True)
class Classifier(Head):
    """The 1×1 conv to class logits, resized to the input: the ``out`` output."""

    kind = "classifier"
    attr = "classifier"

    in_channels: int
    num_classes: int
    upsample: Upsample
    #: False when a head before it made the logits (Lite R-ASPP): no conv, only the resizing.
    conv: bool = True

    def shared(self) -> tuple[str, ...]:
        return ()

    def init(self) -> list[Line]:
        if not self.conv:
            return []
        return [Line(f"self.classifier = nn.Conv2d({self.in_channels}, num_classes, 1)",
                     self.spec_key)]

    def forward(self) -> list[Line]:
        conv = [Line("y = self.classifier(y)", shape_text("num_classes", self.out.reduction))]
        return [*(conv if self.conv else []),
                Line("result: Dict[str, Tensor] = {}"),
                Line('result["out"] = ' + interpolate("y", self.upsample),
                     shape_text("num_classes", 1))]

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library == "torchvision":
            return {"": f"{at}classifier.4"} if self.conv else {}
        if not self.conv:
            return {}
        if library == "smp":  # ``at``: smp's ASPP; the classifier sits at the model's top
            return {"": "segmentation_head.0"}
        if library == "mmseg":
            return {"": f"{at}.conv_seg"}
        return super().weight_map(library, at)

    @classmethod
    def lower(cls, hc: HeadContext, y: Feature) -> tuple[Classifier, Feature]:
        n = hc.spec.num_classes
        logits = y
        if not hc.logits:
            logits = hc.lg.conv("classifier", y, n, act=None, norm=False, bias=True,
                                spec_key="num_classes")
        hc.outputs["out"] = hc.lg.upsample("upsample", logits, hc.image, hc.upsample,
                                           spec_key="output.upsample")
        return cls(spec_key="num_classes", out=logits, in_channels=y.channels, num_classes=n,
                   upsample=hc.upsample, conv=not hc.logits), logits


@register
@dataclass(frozen=True, kw_only=True)
class AuxHead(Head):
    """The auxiliary FCN head on a backbone tap: the ``aux`` output (a training-time loss)."""

    kind = "aux"
    code = "aux_head"
    attr = "aux"

    in_channels: int
    channels: int
    num_classes: int
    dropout: float
    upsample: Upsample

    def init(self) -> list[Line]:
        code = call("AuxHead", [self.in_channels, self.channels, Code("num_classes")],
                    [("dropout", self.dropout, ALWAYS), ("eps", self.eps, 1e-5)])
        return [Line(f"self.aux = {code}", self.spec_key)]

    def forward(self) -> list[Line]:
        # An inference artifact sets ``aux`` to None (specc.passes.inference_only): the head's
        # work is then skipped, in eager code, TorchScript and torch.export alike.
        return [Line("if self.aux is not None:"),
                Line('a = self.aux(features["aux"])', nested=True),
                Line('result["aux"] = ' + interpolate("a", self.upsample),
                     shape_text("num_classes", 1), nested=True)]

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library == "torchvision":
            return {"conv.conv": f"{at}aux_classifier.0", "conv.bn": f"{at}aux_classifier.1",
                    "classifier": f"{at}aux_classifier.4"}
        if library == "mmseg":  # FCNHead with num_convs=1, concat_input=False
            return {"conv.conv": f"{at}.convs.0.conv", "conv.bn": f"{at}.convs.0.bn",
                    "classifier": f"{at}.conv_seg"}
        return super().weight_map(library, at)

    @classmethod
    def lower(cls, hc: HeadContext, y: Feature) -> tuple[AuxHead | None, Feature]:
        aux = hc.spec.aux
        if aux is None:
            return None, y
        lg = hc.lg
        tap = resolve_tap(hc, "aux", aux.tap, None, "aux.tap")
        hc.taps[tap.port] = tap
        a = lg.feature(tap.node)
        in_channels = a.channels
        a = lg.conv("aux.conv", a, aux.channels, kernel=3, spec_key="aux.channels")
        lg.g.nodes[a.node]["dropout"] = aux.dropout
        a = lg.conv("aux.classifier", a, hc.spec.num_classes, act=None, norm=False, bias=True,
                    spec_key="aux")
        a = lg.upsample("aux.upsample", a, hc.image, hc.upsample, spec_key="aux")
        hc.outputs["aux"] = a
        return cls(spec_key="aux", out=a, eps=hc.eps, in_channels=in_channels,
                   channels=aux.channels, num_classes=hc.spec.num_classes, dropout=aux.dropout,
                   upsample=hc.upsample), y


# ------------------------------------------------------------------------------------------------
# All heads


def lower_heads(hc: HeadContext) -> tuple[Head, ...]:
    """Lower every head the spec has, in registration order, then the ``output`` node."""
    heads: list[Head] = []
    y = hc.backbone
    for kind in kinds(Head):
        assert issubclass(kind, Head)
        block, y = kind.lower(hc, y)
        if block is not None:
            heads.append(block)
    outputs = list(hc.outputs.values())
    first = outputs[0]
    result = hc.lg.add("output", "output", outputs,
                       Feature("", hc.spec.num_classes, hc.image.h, hc.image.w, 1, first.rf),
                       spec_key="")
    for port, src in hc.outputs.items():
        hc.lg.g.edges[src.node, result.node]["port"] = port
    return tuple(heads)
