"""Backbone presets, as data: each expands to an explicit stem and explicit stages.

A preset is exactly what a user could write by hand under ``backbone.stem`` / ``backbone.stages``
(``specc info`` prints the expansion). Nothing here knows about output stride: the stride of each
unit is the classification network's; :mod:`specc.derive` turns strides into dilation.
"""

from __future__ import annotations

from specc.spec import (
    BackboneSpec,
    BasicUnit,
    BottleneckUnit,
    ConvUnit,
    InvertedResidualUnit,
    MobileNetV3Unit,
    StageSpec,
    StemConv,
    StemSpec,
    VGGUnit,
    XceptionUnit,
)

# depth → (unit type, units per stage); He et al. 2016, Table 1.
RESNET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

RESNET_STEMS: dict[str, StemSpec] = {
    # torchvision: 7×7/2 conv 64, 3×3/2 max-pool.
    "conv7": StemSpec(convs=[StemConv(channels=64, kernel=7, stride=2)], pool="max"),
    # TF "beta" ResNets (DeepLab): three 3×3 convs 64, 64, 128, then the max-pool.
    "deep": StemSpec(convs=[StemConv(channels=64, kernel=3, stride=2), StemConv(channels=64),
                            StemConv(channels=128)], pool="max"),
}

# Middle-flow units per aligned-Xception depth (DeepLabv3+ §3.2: 65 has 16).
XCEPTION_MIDDLE_UNITS = {41: 8, 65: 16, 71: 16}

# MobileNetV2 (Sandler et al. 2018, Table 2): expansion t, channels c, units n, stride s.
# DeepLab drops the final 1×1 conv to 1280 and uses the 320-channel features.
MOBILENETV2_TABLE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                     (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


# MobileNetV3-Large (Howard et al. 2019, Table 1) as torchvision builds it: per stage, units of
# (kernel, expanded channels, output channels, squeeze-excitation, activation, stride). The
# stages end where torchvision's segmentation models cut (a stride follows), and a last 1×1 conv
# to 6× the channels closes the backbone (features[16]).
MOBILENETV3_LARGE_TABLE = (
    ((3, 16, 16, False, "relu", 1),),
    ((3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1)),
    ((5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1),
     (5, 120, 40, True, "relu", 1)),
    ((3, 240, 80, False, "hardswish", 2), (3, 200, 80, False, "hardswish", 1),
     (3, 184, 80, False, "hardswish", 1), (3, 184, 80, False, "hardswish", 1),
     (3, 480, 112, True, "hardswish", 1), (3, 672, 112, True, "hardswish", 1)),
    ((5, 672, 160, True, "hardswish", 2), (5, 960, 160, True, "hardswish", 1),
     (5, 960, 160, True, "hardswish", 1)),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never below 90 % (MobileNetV2's rule)."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if out < 0.9 * value:
        out += divisor
    return out


def default_stride_placement(backbone: BackboneSpec) -> str:
    """The placement used when the spec does not say: the preset family's own convention."""
    if backbone.stride_placement is not None:
        return backbone.stride_placement
    if backbone.preset and backbone.preset.startswith(("resnet", "resnext")):
        return "last"  # TF resnet_v1 (the papers' code): stride in the last unit of a block
    return "first"


def resnet(depth: int, placement: str, stem: str, *, groups: int = 1,
           width_per_group: int = 64, downsample: str = "conv") -> tuple[StemSpec, list[StageSpec]]:
    """ResNet stages; with ``groups`` > 1 a ResNeXt, whose 3×3 convs are grouped and whose
    bottleneck width is ``groups × width_per_group`` at the first stage (torchvision's rule)."""
    kind, counts = RESNET_DEPTHS[depth]
    # 'last': TF resnet_v1 strides (2, 2, 2, 1); 'first': torchvision's (1, 2, 2, 2). Both reach 32.
    strides = (2, 2, 2, 1) if placement == "last" else (1, 2, 2, 2)
    stages = []
    for i, (n, s) in enumerate(zip(counts, strides, strict=True)):
        mid = 64 * 2**i
        width = mid * width_per_group * groups // 64
        unit = (BottleneckUnit(type="bottleneck", channels=4 * mid, mid_channels=width,
                               groups=groups, downsample=downsample, stride=s, repeat=n)
                if kind == "bottleneck" else
                BasicUnit(type="basic", channels=mid, stride=s, repeat=n))
        stages.append(StageSpec(name=f"block{i + 1}", units=[unit]))
    return RESNET_STEMS[stem], stages


def resnet_name(preset: str) -> tuple[int, int, int]:
    """Depth, groups and width per group of ``resnet50`` or ``resnext50_32x4d`` (32 groups of
    4 channels)."""
    if preset.startswith("resnext"):
        depth, shape = preset[7:].split("_")
        groups, width = shape.split("x")
        return int(depth), int(groups), int(width.rstrip("d"))
    return int(preset[6:]), 1, 64


def xception(depth: int) -> tuple[StemSpec, list[StageSpec]]:
    stem = StemSpec(convs=[StemConv(channels=32, stride=2), StemConv(channels=64)])

    def unit(channels: tuple[int, int, int], stride: int, **kw: object) -> XceptionUnit:
        return XceptionUnit(type="xception", channels=channels, stride=stride, **kw)

    entry = [(128, 128, 128), (256, 256, 256), (728, 728, 728)]
    # Every unit but exit2 puts a ReLU before each separable conv and none inside it (the TF
    # code's activation_fn_in_separable_conv=False; timm's start_with_relu=True), entry1 too.
    stages = [StageSpec(name=f"entry{i + 1}", units=[unit(ch, 2)]) for i, ch in enumerate(entry)]
    if depth == 71:
        # Xception-71 splits entry block2 and block3 in two (one strided, one not).
        stages = [
            stages[0],
            StageSpec(name="entry2", units=[unit((256,) * 3, 1), unit((256,) * 3, 2, name="unit2")]),
            StageSpec(name="entry3", units=[unit((728,) * 3, 1), unit((728,) * 3, 2, name="unit2")]),
        ]
    stages.append(StageSpec(name="middle", units=[
        unit((728, 728, 728), 1, shortcut="identity", repeat=XCEPTION_MIDDLE_UNITS[depth])]))
    stages.append(StageSpec(name="exit1", units=[unit((728, 1024, 1024), 2)]))
    stages.append(StageSpec(name="exit2", units=[
        unit((1536, 1536, 2048), 1, shortcut="none", relu="inside")]))
    return stem, stages


def mobilenetv2(width: float) -> tuple[StemSpec, list[StageSpec]]:
    stem = StemSpec(convs=[StemConv(channels=make_divisible(32 * width), stride=2)])
    stages = []
    for i, (t, c, n, s) in enumerate(MOBILENETV2_TABLE):
        stages.append(StageSpec(name=f"layer{i + 1}", units=[InvertedResidualUnit(
            type="inverted_residual", channels=make_divisible(c * width), expansion=t, stride=s,
            repeat=n)]))
    return stem, stages


def mobilenetv3_large(width: float) -> tuple[StemSpec, list[StageSpec]]:
    """MobileNetV3-Large's features: stem conv 16, five stages of units, the last 1×1 conv."""
    stem = StemSpec(convs=[StemConv(channels=make_divisible(16 * width), stride=2)])
    stages = []
    for i, units in enumerate(MOBILENETV3_LARGE_TABLE):
        stages.append(StageSpec(name=f"layer{i + 1}", units=[MobileNetV3Unit(
            type="mobilenetv3", kernel=k, expanded=make_divisible(e * width),
            channels=make_divisible(c * width), se=se, activation=act, stride=s)
            for k, e, c, se, act, s in units]))
    last = make_divisible(MOBILENETV3_LARGE_TABLE[-1][-1][2] * width)
    stages.append(StageSpec(name="last", units=[ConvUnit(
        type="conv_layer", channels=6 * last, kernel=1, activation="hardswish")]))
    return stem, stages


# VGG-16 (Simonyan & Zisserman 2015, configuration D): (channels, convs) per stage.
VGG16_TABLE = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg16() -> tuple[StemSpec, list[StageSpec]]:
    """DeepLab v1/v2's VGG-16: no stem, five stages of 3×3 convs each ending in a 3×3 max-pool
    of stride 2 (the output-stride rule removes the last two and dilates what follows)."""
    stem = StemSpec.model_construct(convs=[], pool="none")  # VGG has no stem: conv1 is a stage
    stages = [StageSpec(name=f"conv{i + 1}", units=[VGGUnit(type="vgg", channels=c, convs=n,
                                                             stride=2)])
              for i, (c, n) in enumerate(VGG16_TABLE)]
    return stem, stages


def expand(backbone: BackboneSpec) -> tuple[StemSpec, list[StageSpec]]:
    """The explicit stem and stages of a backbone (a preset's expansion, or the spec's own)."""
    preset = backbone.preset
    if preset is None:
        assert isinstance(backbone.stem, StemSpec) and backbone.stages is not None
        return backbone.stem, list(backbone.stages)
    if preset.startswith(("resnet", "resnext")):
        named = backbone.stem if isinstance(backbone.stem, str) else "conv7"
        depth, groups, width = resnet_name(preset)
        stem_r, stages = resnet(depth, default_stride_placement(backbone), named, groups=groups,
                                width_per_group=width, downsample=backbone.downsample)
        return (backbone.stem if isinstance(backbone.stem, StemSpec) else stem_r), stages
    if preset.startswith("xception"):
        stem_x, stages = xception(int(preset[8:]))
        return (backbone.stem if isinstance(backbone.stem, StemSpec) else stem_x), stages
    if preset == "vgg16":
        stem_v, stages = vgg16()
        return (backbone.stem if isinstance(backbone.stem, StemSpec) else stem_v), stages
    if preset == "mobilenetv3_large":
        stem_3, stages = mobilenetv3_large(backbone.width_multiplier)
        return (backbone.stem if isinstance(backbone.stem, StemSpec) else stem_3), stages
    stem_m, stages = mobilenetv2(backbone.width_multiplier)
    return (backbone.stem if isinstance(backbone.stem, StemSpec) else stem_m), stages
