"""Stage 4a — backbone lowering: the stem and one registered block kind per unit type.

Each unit kind is a :class:`specc.plan.Unit` whose ``lower`` adds its layers to the layer graph
(with the stride and rates the schedule derived) and returns the block; the kind also says how it
is emitted, where torchvision or timm keep its tensors, and which of its layers can be tapped.
A unit kind's name is its spec ``type``.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from typing import ClassVar

from specc.derive import Schedule, ScheduledUnit
from specc.errors import SpecError
from specc.plan import (
    ALWAYS,
    BLOCKS,
    AtrousConv,
    Block,
    Feature,
    LayerGraph,
    Line,
    Stage,
    StemConv,
    Unit,
    call,
    register,
    shape_text,
)
from specc.presets import make_divisible
from specc.spec import Spec


@dataclass(frozen=True)
class Context:
    """What every unit's lowering shares: the graph being built, the activation, BN epsilon."""

    lg: LayerGraph
    act: str
    eps: float
    #: A timm encoder's model name, output stride and input size (None: specc's own backbone).
    timm: tuple[str, int, tuple[int, int]] | None = None


def _atrous(lg: LayerGraph, node: str, rate: int, spec_key: str) -> AtrousConv:
    src = next(iter(lg.g.predecessors(node)))
    _, h, w = lg.g.nodes[src]["shape"]
    return AtrousConv(node, rate, (h, w), spec_key)


# ------------------------------------------------------------------------------------------------
# The stem


@register
@dataclass(frozen=True, kw_only=True)
class Stem(Block):
    """The convolutions (and max-pool) before the first stage, an ``nn.Sequential``."""

    kind = "stem"

    convs: tuple[StemConv, ...]
    pool: str
    act: str

    def layers(self) -> list[Line]:
        """The ``nn.Sequential``'s entries with their shape comments."""
        stride = 1
        out = []
        for c in self.convs:
            stride *= c.stride
            code = call("ConvBNAct", [c.in_channels, c.out_channels],
                        [("kernel_size", c.kernel, 1), ("stride", c.stride, 1),
                         ("act", self.act, "relu"), ("eps", self.eps, 1e-5)])
            out.append(Line(code, shape_text(c.out_channels, stride)))
        if self.pool == "max":
            stride *= 2
            out.append(Line("nn.MaxPool2d(3, stride=2, padding=1)",
                            shape_text(self.convs[-1].out_channels, stride)))
        return out

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library in ("torchvision", "smp"):  # smp's ResNet encoders are torchvision's
            if len(self.convs) != 1:
                return (f"torchvision ResNets have one 7×7 stem conv; the spec's stem has "
                        f"{len(self.convs)}")
            if self.act == "hardswish":  # MobileNetV3: features[0] = conv, BN, hard-swish
                return {"0.conv": f"{at}0.0", "0.bn": f"{at}0.1"}
            return {"0.conv": f"{at}conv1", "0.bn": f"{at}bn1"}
        if library == "timm" and self.pool == "max":
            return self._timm_resnet_map(at)
        if library == "timm":
            return {f"{i}.{part}": f"{at}stem.{i}.{part}"
                    for i in range(len(self.convs)) for part in ("conv", "bn")}
        if library == "mmseg":  # deep stem: Sequential(conv, BN, ReLU) × 3; else conv1/bn1
            if len(self.convs) == 1:
                return {"0.conv": f"{at}conv1", "0.bn": f"{at}bn1"}
            out = {}
            for i in range(len(self.convs)):
                out.update({f"{i}.conv": f"{at}stem.{3 * i}", f"{i}.bn": f"{at}stem.{3 * i + 1}"})
            return out
        return super().weight_map(library, at)

    def _timm_resnet_map(self, at: str) -> dict[str, str]:
        """timm's ResNet stems: ``conv1``/``bn1``, or a deep stem ``conv1`` = Sequential(conv,
        BN, ReLU, conv, BN, ReLU, conv) whose last conv's norm is ``bn1`` (resnet50d, …)."""
        if len(self.convs) == 1:
            return {"0.conv": f"{at}conv1", "0.bn": f"{at}bn1"}
        last = len(self.convs) - 1
        out = {f"{last}.conv": f"{at}conv1.{3 * last}", f"{last}.bn": f"{at}bn1"}
        for i in range(last):
            out.update({f"{i}.conv": f"{at}conv1.{3 * i}", f"{i}.bn": f"{at}conv1.{3 * i + 1}"})
        return out

    @classmethod
    def lower(cls, ctx: Context, schedule: Schedule, x: Feature) -> Stem:
        convs = []
        for i, c in enumerate(schedule.stem.convs):
            in_channels = x.channels
            x = ctx.lg.conv(f"backbone.stem.conv{i + 1}", x, c.channels, kernel=c.kernel,
                            stride=c.stride, act=ctx.act, spec_key="backbone.stem")
            convs.append(StemConv(in_channels, c.channels, c.kernel, c.stride))
        if schedule.stem.pool == "max":
            x = ctx.lg.pool("backbone.stem.pool", x, "maxpool", kernel=3, stride=2,
                            spec_key="backbone.stem.pool")
        return cls(spec_key="backbone.stem", out=x, eps=ctx.eps, convs=tuple(convs),
                   pool=schedule.stem.pool, act=ctx.act)


# ------------------------------------------------------------------------------------------------
# Units


def _shortcut(ctx: Context, u: ScheduledUnit, x: Feature, channels: int,
              downsample: str = "conv") -> tuple[Feature, str]:
    """A ResNet shortcut: a 1×1 conv when channels change (after an average pool by the stride
    with ``downsample="avgpool"``, ResNet-D), a subsampling when only the size does."""
    if x.channels != channels and downsample == "avgpool":
        pooled = x
        if u.stride != 1:  # ceil mode: the size of the strided 3×3 conv beside it
            pooled = ctx.lg.pool(f"{u.path}.shortcut_pool", x, "avgpool", kernel=1,
                                 stride=u.stride, spec_key=u.spec_key)
            ctx.lg.g.nodes[pooled.node]["kernel"] = u.stride
        return ctx.lg.conv(f"{u.path}.shortcut", pooled, channels, act=None,
                           spec_key=u.spec_key), "avgpool_conv"
    if x.channels != channels:
        return ctx.lg.conv(f"{u.path}.shortcut", x, channels, stride=u.stride, act=None,
                           spec_key=u.spec_key), "conv"
    if u.stride != 1:
        return ctx.lg.pool(f"{u.path}.subsample", x, "subsample", kernel=1, stride=u.stride,
                           spec_key=u.spec_key), "subsample"
    return x, "identity"


def _torchvision_resnet(convs: int, shortcut: str, at: str) -> dict[str, str]:
    """torchvision's names for a ResNet unit at ``at``: conv{k}/bn{k}, downsample.0/1 (smp's,
    MMSegmentation's and timm's ResNets use them too; their ResNet-D shortcut is
    downsample.1/2, after its pool)."""
    out = {}
    for k in range(1, convs + 1):
        out[f"conv{k}.conv"] = f"{at}.conv{k}"
        out[f"conv{k}.bn"] = f"{at}.bn{k}"
    if shortcut == "conv":
        out["shortcut.conv"] = f"{at}.downsample.0"
        out["shortcut.bn"] = f"{at}.downsample.1"
    if shortcut == "avgpool_conv":
        out["shortcut.1.conv"] = f"{at}.downsample.1"
        out["shortcut.1.bn"] = f"{at}.downsample.2"
    return out


def _unit_fields(u: ScheduledUnit, x: Feature, ctx: Context) -> dict[str, object]:
    return dict(spec_key=u.spec_key, eps=ctx.eps, stage=u.stage, name=u.name,
                in_channels=x.channels, stride=u.stride, rates=u.rates)


@register
@dataclass(frozen=True, kw_only=True)
class Basic(Unit):
    """ResNet basic block: two 3×3 convs and a shortcut."""

    kind = "basic"
    code = "basic"

    out_channels: int
    shortcut: str

    def constructor(self, tap: int) -> str:
        del tap  # not tappable inside
        return call("BasicBlock", [self.in_channels, self.out_channels],
                    [("stride", self.stride, 1), ("rates", tuple(self.rates), (1, 1)),
                     ("shortcut", self.shortcut, "identity"), ("eps", self.eps, 1e-5)])

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library in ("torchvision", "smp", "mmseg", "timm"):
            return _torchvision_resnet(2, self.shortcut, at)
        return super().weight_map(library, at)

    @classmethod
    def lower(cls, ctx: Context, u: ScheduledUnit, x: Feature, index: int) -> Basic:
        p, unit = u.path, u.unit
        y1 = ctx.lg.conv(f"{p}.conv1", x, unit.channels, kernel=3, stride=u.stride,
                         dilation=u.rates[0], spec_key=u.spec_key)
        y = ctx.lg.conv(f"{p}.conv2", y1, unit.channels, kernel=3, dilation=u.rates[1],
                        act=None, spec_key=u.spec_key)
        skip, shortcut = _shortcut(ctx, u, x, unit.channels)
        out = ctx.lg.merge(p, "add", [y, skip], act="relu", spec_key=u.spec_key)
        atrous = (_atrous(ctx.lg, f"{p}.conv1", u.rates[0], u.spec_key),
                  _atrous(ctx.lg, f"{p}.conv2", u.rates[1], u.spec_key))
        return cls(**_unit_fields(u, x, ctx), index=index, out=out, atrous=atrous,
                   out_channels=unit.channels, shortcut=shortcut)


@register
@dataclass(frozen=True, kw_only=True)
class Bottleneck(Unit):
    """ResNet bottleneck: 1×1 → 3×3 (stride, dilation) → 1×1, and a shortcut."""

    kind = "bottleneck"
    code = "bottleneck"
    taps: ClassVar[tuple[str, ...]] = ("conv1", "conv2", "conv3")

    mid_channels: int
    out_channels: int
    shortcut: str
    groups: int = 1

    def constructor(self, tap: int) -> str:
        return call("Bottleneck", [self.in_channels, self.mid_channels, self.out_channels],
                    [("stride", self.stride, 1), ("dilation", self.rates[0], 1),
                     ("groups", self.groups, 1),
                     ("shortcut", self.shortcut, "identity"), ("tap", tap, 3),
                     ("eps", self.eps, 1e-5)])

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library in ("torchvision", "smp", "mmseg", "timm"):
            return _torchvision_resnet(3, self.shortcut, at)
        return super().weight_map(library, at)

    @classmethod
    def lower(cls, ctx: Context, u: ScheduledUnit, x: Feature, index: int) -> Bottleneck:
        p, unit = u.path, u.unit
        y = ctx.lg.conv(f"{p}.conv1", x, unit.mid_channels, spec_key=u.spec_key)
        y = ctx.lg.conv(f"{p}.conv2", y, unit.mid_channels, kernel=3, stride=u.stride,
                        dilation=u.rates[0], groups=unit.groups, spec_key=u.spec_key)
        y = ctx.lg.conv(f"{p}.conv3", y, unit.channels, act=None, spec_key=u.spec_key)
        skip, shortcut = _shortcut(ctx, u, x, unit.channels, unit.downsample)
        out = ctx.lg.merge(p, "add", [y, skip], act="relu", spec_key=u.spec_key)
        return cls(**_unit_fields(u, x, ctx), index=index, out=out,
                   atrous=(_atrous(ctx.lg, f"{p}.conv2", u.rates[0], u.spec_key),),
                   mid_channels=unit.mid_channels, out_channels=unit.channels,
                   shortcut=shortcut, groups=unit.groups)


@register
@dataclass(frozen=True, kw_only=True)
class Xception(Unit):
    """Aligned-Xception unit: three 3×3 separable convs, the stride on the third, a shortcut."""

    kind = "xception"
    code = "xception"
    taps: ClassVar[tuple[str, ...]] = ("sep1", "sep2", "sep3")

    channels: tuple[int, int, int]
    shortcut: str
    relu: str

    def shared(self) -> tuple[str, ...]:
        return ("conv_bn_act", "separable_conv")

    def constructor(self, tap: int) -> str:
        return call("XceptionUnit", [self.in_channels, tuple(self.channels)],
                    [("stride", self.stride, 1), ("rates", tuple(self.rates), (1, 1, 1)),
                     ("shortcut", self.shortcut, "conv"), ("relu", self.relu, "pre"),
                     ("tap", tap, 3), ("eps", self.eps, 1e-5)])

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library != "timm":
            return super().weight_map(library, at)
        out = {}
        for k in range(1, 4):
            conv = f"{at}.stack.conv{k}"
            out.update({f"sep{k}.depthwise": f"{conv}.conv_dw",
                        f"sep{k}.bn_depthwise": f"{conv}.bn_dw",
                        f"sep{k}.pointwise": f"{conv}.conv_pw",
                        f"sep{k}.bn_pointwise": f"{conv}.bn_pw"})
        if self.shortcut == "conv":
            out.update({"shortcut.conv": f"{at}.shortcut.conv", "shortcut.bn": f"{at}.shortcut.bn"})
        return out

    @classmethod
    def lower(cls, ctx: Context, u: ScheduledUnit, x: Feature, index: int) -> Xception:
        p, unit = u.path, u.unit
        inside = unit.relu == "inside"
        y = x
        atrous = []
        for i, ch in enumerate(unit.channels):
            y = ctx.lg.sepconv(f"{p}.sep{i + 1}", y, ch, stride=u.stride if i == 2 else 1,
                               dilation=u.rates[i], depthwise_act="relu" if inside else None,
                               act="relu" if inside else None,
                               pre_act=None if inside else "relu", spec_key=u.spec_key)
            atrous.append(_atrous(ctx.lg, y.node, u.rates[i], u.spec_key))
        skip = x
        if unit.shortcut == "conv":
            skip = ctx.lg.conv(f"{p}.shortcut", x, unit.channels[2], stride=u.stride, act=None,
                               spec_key=u.spec_key)
        if unit.shortcut == "none":
            out = y
            ctx.lg.aliases[p] = y.node
        else:
            if unit.shortcut == "identity" and (x.channels != unit.channels[2] or u.stride != 1):
                raise SpecError(f"{p}: an identity shortcut needs equal channels and stride 1 "
                                f"(found {x.channels}→{unit.channels[2]}, stride {u.stride}); "
                                "use shortcut: conv", path=u.spec_key)
            out = ctx.lg.merge(p, "add", [y, skip], spec_key=u.spec_key)
        return cls(**_unit_fields(u, x, ctx), index=index, out=out, atrous=tuple(atrous),
                   channels=tuple(unit.channels), shortcut=unit.shortcut, relu=unit.relu)


@register
@dataclass(frozen=True, kw_only=True)
class InvertedResidual(Unit):
    """MobileNetV2 inverted residual: 1×1 expansion → 3×3 depthwise → 1×1 projection."""

    kind = "inverted_residual"
    code = "inverted_residual"

    out_channels: int
    expansion: int
    residual: bool
    act: str

    def constructor(self, tap: int) -> str:
        del tap  # not tappable inside
        return call("InvertedResidual", [self.in_channels, self.out_channels],
                    [("expansion", self.expansion, 6), ("stride", self.stride, 1),
                     ("dilation", self.rates[0], 1), ("act", self.act, "relu6"),
                     ("eps", self.eps, 1e-5)])

    @classmethod
    def lower(cls, ctx: Context, u: ScheduledUnit, x: Feature, index: int) -> InvertedResidual:
        p, unit = u.path, u.unit
        hidden = x.channels * unit.expansion
        y = x
        if unit.expansion != 1:
            y = ctx.lg.conv(f"{p}.expand", y, hidden, act=ctx.act, spec_key=u.spec_key)
        y = ctx.lg.conv(f"{p}.depthwise", y, hidden, kernel=3, stride=u.stride,
                        dilation=u.rates[0], groups=hidden, act=ctx.act, spec_key=u.spec_key)
        atrous = (_atrous(ctx.lg, y.node, u.rates[0], u.spec_key),)
        y = ctx.lg.conv(f"{p}.project", y, unit.channels, act=None, spec_key=u.spec_key)
        residual = u.stride == 1 and x.channels == unit.channels
        if residual:
            out = ctx.lg.merge(p, "add", [y, x], spec_key=u.spec_key)
        else:
            out = y
            ctx.lg.aliases[p] = y.node
        return cls(**_unit_fields(u, x, ctx), index=index, out=out, atrous=atrous,
                   out_channels=unit.channels, expansion=unit.expansion, residual=residual,
                   act=ctx.act)


def _torchvision_conv_norm(at: str) -> dict[str, str]:
    """torchvision's ``Conv2dNormActivation`` at ``at``: conv ``.0``, batch norm ``.1``."""
    return {"conv": f"{at}.0", "bn": f"{at}.1"}


@register
@dataclass(frozen=True, kw_only=True)
class MobileNetV3(Unit):
    """MobileNetV3 inverted residual: 1×1 expansion → k×k depthwise → squeeze-excitation →
    1×1 projection."""

    kind = "mobilenetv3"
    code = "mobilenetv3"

    out_channels: int
    expanded: int
    kernel: int
    #: Squeeze channels of the squeeze-excitation; 0 for none.
    se: int
    residual: bool
    act: str

    def constructor(self, tap: int) -> str:
        del tap  # not tappable inside
        return call("MobileNetV3Unit", [self.in_channels, self.out_channels],
                    [("expanded", self.expanded, ALWAYS), ("kernel", self.kernel, 3),
                     ("se", self.se, 0), ("act", self.act, "relu"),
                     ("stride", self.stride, 1), ("dilation", self.rates[0], 1),
                     ("eps", self.eps, 1e-5)])

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library != "torchvision":
            return super().weight_map(library, at)
        # torchvision's block: [expand], depthwise, [SqueezeExcitation], project
        parts = ["expand"] if self.expanded != self.in_channels else []
        parts += ["depthwise", *(["se"] if self.se else []), "project"]
        out: dict[str, str] = {}
        for i, part in enumerate(parts):
            where = f"{at}.block.{i}"
            if part == "se":
                out.update({"se.fc1": f"{where}.fc1", "se.fc2": f"{where}.fc2"})
            else:
                out.update({f"{part}.{k}": v for k, v in _torchvision_conv_norm(where).items()})
        return out

    @classmethod
    def lower(cls, ctx: Context, u: ScheduledUnit, x: Feature, index: int) -> MobileNetV3:
        p, unit = u.path, u.unit
        act = unit.activation
        y = x
        if unit.expanded != x.channels:
            y = ctx.lg.conv(f"{p}.expand", y, unit.expanded, act=act, spec_key=u.spec_key)
        y = ctx.lg.conv(f"{p}.depthwise", y, unit.expanded, kernel=unit.kernel, stride=u.stride,
                        dilation=u.rates[0], groups=unit.expanded, act=act, spec_key=u.spec_key)
        atrous = (_atrous(ctx.lg, y.node, u.rates[0], u.spec_key),)
        squeeze = make_divisible(unit.expanded // 4) if unit.se else 0
        if squeeze:
            e = unit.expanded
            y = ctx.lg.add(f"{p}.se", "se", [y], y, squeeze=squeeze,
                           params=2 * e * squeeze + e + squeeze, macs=2 * e * squeeze,
                           spec_key=u.spec_key)
        y = ctx.lg.conv(f"{p}.project", y, unit.channels, act=None, spec_key=u.spec_key)
        residual = u.stride == 1 and x.channels == unit.channels
        if residual:
            out = ctx.lg.merge(p, "add", [y, x], spec_key=u.spec_key)
        else:
            out = y
            ctx.lg.aliases[p] = y.node
        return cls(**_unit_fields(u, x, ctx), index=index, out=out, atrous=atrous,
                   out_channels=unit.channels, expanded=unit.expanded, kernel=unit.kernel,
                   se=squeeze, residual=residual, act=act)


@register
@dataclass(frozen=True, kw_only=True)
class ConvLayer(Unit):
    """A single conv → BN → activation (MobileNetV3's last 1×1 conv)."""

    kind = "conv_layer"

    out_channels: int
    kernel: int
    act: str

    def constructor(self, tap: int) -> str:
        del tap  # not tappable inside
        dilation = self.rates[0] if self.kernel > 1 else 1
        return call("ConvBNAct", [self.in_channels, self.out_channels],
                    [("kernel_size", self.kernel, 1), ("stride", self.stride, 1),
                     ("dilation", dilation, 1), ("act", self.act, "relu"),
                     ("eps", self.eps, 1e-5)])

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        if library == "torchvision":
            return _torchvision_conv_norm(at)
        return super().weight_map(library, at)

    @classmethod
    def lower(cls, ctx: Context, u: ScheduledUnit, x: Feature, index: int) -> ConvLayer:
        unit = u.unit
        dilation = u.rates[0] if unit.kernel > 1 else 1
        out = ctx.lg.conv(f"{u.path}.conv", x, unit.channels, kernel=unit.kernel,
                          stride=u.stride, dilation=dilation,
                          act=None if unit.activation == "none" else unit.activation,
                          spec_key=u.spec_key)
        ctx.lg.aliases[u.path] = out.node
        atrous = (_atrous(ctx.lg, out.node, dilation, u.spec_key),) if unit.kernel > 1 else ()
        return cls(**_unit_fields(u, x, ctx), index=index, out=out, atrous=atrous,
                   out_channels=unit.channels, kernel=unit.kernel, act=unit.activation)


@register
@dataclass(frozen=True, kw_only=True)
class VGG(Unit):
    """A VGG stage: 3×3 convs with bias and ReLU, then a 3×3 max-pool with the stride."""

    kind = "vgg"
    code = "vgg"

    out_channels: int
    pool: bool

    def shared(self) -> tuple[str, ...]:
        return ()

    def constructor(self, tap: int) -> str:
        del tap  # not tappable inside
        return call("VGGUnit", [self.in_channels, self.out_channels],
                    [("rates", list(self.rates), ALWAYS), ("stride", self.stride, 1),
                     ("pool", self.pool, True)])

    @classmethod
    def lower(cls, ctx: Context, u: ScheduledUnit, x: Feature, index: int) -> VGG:
        p, unit = u.path, u.unit
        y = x
        atrous = []
        for i, rate in enumerate(u.rates):
            y = ctx.lg.conv(f"{p}.conv{i + 1}", y, unit.channels, kernel=3, dilation=rate,
                            norm=False, bias=True, spec_key=u.spec_key)
            atrous.append(_atrous(ctx.lg, y.node, rate, u.spec_key))
        if unit.pool:
            y = ctx.lg.pool(f"{p}.pool", y, "maxpool", kernel=3, stride=u.stride,
                            spec_key=u.spec_key)
        elif u.stride != 1:
            raise SpecError(f"{p}: a VGG unit without its pool cannot stride (found stride "
                            f"{u.stride}); set pool: true", path=u.spec_key)
        ctx.lg.aliases[p] = y.node
        return cls(**_unit_fields(u, x, ctx), index=index, out=y, atrous=tuple(atrous),
                   out_channels=unit.channels, pool=unit.pool)


# ------------------------------------------------------------------------------------------------
# A timm encoder (backbone.timm): timm builds it, specc sees its stages


@register
@dataclass(frozen=True, kw_only=True)
class TimmEncoder(Block):
    """timm's features-only encoder in place of a stem: it makes every stage, so the block has
    no layers of its own in the graph (its ``out`` is the image)."""

    kind = "timm_encoder"

    model: str
    output_stride: int
    out_indices: tuple[int, ...]

    def shared(self) -> tuple[str, ...]:
        return ()

    def constructor(self) -> str:
        """The generated ``timm.create_model`` call (output_stride only below timm's 32, which
        every features-only model supports)."""
        kwargs = [("features_only", True, None), ("pretrained", False, None),
                  ("out_indices", self.out_indices, None),
                  ("output_stride", self.output_stride, 32)]
        return call("timm.create_model", [self.model], kwargs)


@register
@dataclass(frozen=True, kw_only=True)
class TimmStage(Unit):
    """One feature of a timm encoder: an opaque node with the channels and reduction timm's
    feature info gives and the parameters of the encoder's modules up to it; its multiply-adds
    are unknown (0 in the counts: `specc info` says so)."""

    kind = "timm_stage"

    module_name: str
    #: Position among the features the encoder hands out.
    feature: int
    #: The module making it, in the generated model (``backbone.encoder.stages_0``).
    module_path: str

    def shared(self) -> tuple[str, ...]:
        return ()

    @property
    def module(self) -> str:
        return self.module_path

    def describe(self) -> str:
        return f"timm {self.module_name}" + (f" d={self.rates[0]}" if self.rates[0] > 1 else "")

    @classmethod
    def lower(cls, ctx: Context, u: ScheduledUnit, x: Feature, index: int) -> TimmStage:
        from specc.timm_encoder import encoder_stages

        assert ctx.timm is not None
        feature = int(u.stage.removeprefix("stage"))
        st = encoder_stages(*ctx.timm)[feature]
        out = Feature(u.path, st.channels, st.h, st.w, st.reduction, None)
        y = ctx.lg.add(u.path, "timm_stage", [x], out, params=st.params, macs=0, opaque=True,
                       module=st.module, spec_key=u.spec_key)
        return cls(spec_key=u.spec_key, out=y, stage=u.stage, index=index, name=u.name,
                   in_channels=x.channels, stride=u.stride, rates=u.rates,
                   module_name=st.module, feature=feature,
                   module_path=f"backbone.encoder.{st.path}")


def lower_timm(ctx: Context, schedule: Schedule, x: Feature
               ) -> tuple[TimmEncoder, tuple[Stage, ...], Feature]:
    """One opaque node per stage of the timm encoder, named like specc's stages."""
    assert ctx.timm is not None
    model, output_stride, _size = ctx.timm
    encoder = TimmEncoder(spec_key="backbone.timm", out=x, model=model,
                          output_stride=output_stride,
                          out_indices=tuple(range(len(schedule.units))))
    stages = []
    for u in schedule.units:
        unit = TimmStage.lower(ctx, u, x, 0)
        stages.append(Stage(u.stage, (unit,)))
        ctx.lg.aliases[f"backbone.{u.stage}"] = unit.out.node
        x = unit.out
    ctx.lg.aliases["backbone"] = x.node
    return encoder, tuple(stages), x


# ------------------------------------------------------------------------------------------------
# The whole backbone


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

#: Names a stage may not take: they are attributes of the generated ``Backbone`` module.
RESERVED_STAGE_NAMES = _MODULE_MEMBERS | frozenset(keyword.kwlist) | {"stem", "features"}


def check_stage_names(schedule: Schedule) -> None:
    """Stage names become attributes of the generated backbone; refuse those that clash.

    Raises:
        SpecError: a stage is named like a keyword or an ``nn.Module`` attribute.
    """
    for i, stage in enumerate(schedule.stages):
        if stage in RESERVED_STAGE_NAMES:
            raise SpecError(f"stage name {stage!r} is reserved (a Python keyword or an "
                            "nn.Module attribute); choose another name",
                            path=f"backbone.stages[{i}].name")


def activation(spec: Spec) -> str:
    """The backbone's activation: the spec's, else ReLU6 for MobileNetV2, hard-swish for
    MobileNetV3 and ReLU otherwise."""
    own = {"mobilenetv2": "relu6", "mobilenetv3_large": "hardswish"}
    return spec.backbone.activation or own.get(spec.backbone.preset or "", "relu")


def unit_kind(unit_type: str) -> type[Unit]:
    """The registered unit kind for a spec unit ``type``."""
    kind = BLOCKS.get(unit_type)
    if kind is None or not issubclass(kind, Unit):
        raise SpecError(f"no unit kind {unit_type!r}")
    return kind


def lower_backbone(ctx: Context, schedule: Schedule, x: Feature
                   ) -> tuple[Block, tuple[Stage, ...], Feature]:
    """Add the stem and every unit to the graph; name each stage and the backbone's output.

    Raises:
        SpecError: a reserved stage name, or a unit whose shortcut cannot be built.
    """
    if ctx.timm is not None:
        return lower_timm(ctx, schedule, x)
    check_stage_names(schedule)
    stem = Stem.lower(ctx, schedule, x)
    x = stem.out
    stages: dict[str, list[Unit]] = {name: [] for name in schedule.stages}
    for u in schedule.units:
        members = stages[u.stage]
        unit = unit_kind(u.unit.type).lower(ctx, u, x, len(members))
        members.append(unit)
        x = unit.out
    for name, members in stages.items():
        ctx.lg.aliases[f"backbone.{name}"] = members[-1].out.node
    ctx.lg.aliases["backbone"] = x.node
    return stem, tuple(Stage(name, tuple(m)) for name, m in stages.items()), x
