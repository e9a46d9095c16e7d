"""Stage 2 — validate: the spec language as frozen pydantic models.

Every field has a description (it becomes the JSON Schema and an editor's tooltip). Where public
DeepLab implementations disagree (docs/deeplab.md, "Where implementations disagree"), the choice is a field here, defaulting to the
papers' TensorFlow behaviour. Cross-field rules that need the derived schedule or the graph
(a reachable output stride, a decoder tap at the right stride) are checked by later stages.
"""

from __future__ import annotations

import keyword
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from specc.spec_train import MAX_SIZE, DataSpec, TrainSpec

Identifier = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$"),
    Field(description="A lower-case identifier: letters, digits and '_', starting with a letter."),
]
#: Most classes a model may predict (a 16-bit label image holds 65536 values).
MAX_CLASSES = 65535
#: Largest kernel a conv may have (DeepLab uses 1 and 3; 7 in the ResNet stem).
MAX_KERNEL = 63

#: A whole number 1 .. MAX_SIZE (channels, sizes, strides, rates); strict, so that YAML's
#: ``true``/``yes`` is not read as 1.
Positive = Annotated[int, Strict(), Field(gt=0, le=MAX_SIZE)]


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"expected an odd kernel size, found {value}")
    return value


#: A kernel size: odd, so that "same" padding keeps the feature map centred.
OddKernel = Annotated[int, Strict(), Field(gt=0, le=MAX_KERNEL), AfterValidator(_odd)]

NodeName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$"),
    Field(description="A graph node name, e.g. 'backbone.entry2.unit1.sep2' (see `specc info`)."),
]

KeyPath = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_]*(\[[0-9]+\])*(\.[a-z][a-z0-9_]*(\[[0-9]+\])*)*$"),
    Field(description="A spec key path as warnings name it, e.g. 'aspp.rates[2]'."),
]

#: A timm model name as ``timm.list_models`` spells it (``resnet18``, ``convnext_atto``,
#: ``efficientnet_b0``, ``tf_efficientnet_b0.ns_jft_in1k``).
TimmModelName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.]*$", max_length=100),
    Field(description="A timm model name."),
]

BACKBONE_PRESETS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "xception41", "xception65", "xception71", "mobilenetv2", "mobilenetv3_large", "vgg16",
    "resnext50_32x4d", "resnext101_32x8d",
)
BOTTLENECK_PRESETS = ("resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d")


class Base(BaseModel):
    """Closed, immutable, strict: unknown keys are errors, nothing is silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False, populate_by_name=False,
                              allow_inf_nan=False)


# --------------------------------------------------------------------------------------------
# Backbone


class StemConv(Base):
    channels: Positive = Field(description="Output channels of this stem convolution.")
    kernel: OddKernel = Field(3, description="Kernel size (odd).")
    stride: Positive = Field(1, description="Stride of this convolution.")


class StemSpec(Base):
    """The layers before the first stage: convolutions (each + BN + activation), then a pool."""

    convs: list[StemConv] = Field(min_length=1, description="Stem convolutions, in order.")
    pool: Literal["max", "none"] = Field(
        "none", description="'max': a 3×3 stride-2 max-pool after the convolutions (ResNet).")


class _UnitBase(Base):
    name: Identifier | None = Field(
        None, description="Unit name in the graph; defaults to unit1, unit2, ... within the stage.")
    stride: Positive = Field(1, description="Stride of the unit before the output-stride rule "
                             "turns it into dilation.")
    repeat: Positive = Field(
        1, description="Repeat this unit N times; the stride goes to one copy, the first or the "
        "last per backbone.stride_placement.")


class TimmStageUnit(_UnitBase):
    """One stage of a timm encoder, read from the encoder's feature info (never written in a
    spec: ``backbone.timm`` makes these)."""

    type: Literal["timm_stage"] = "timm_stage"
    module: str = Field(description="The timm module whose output the stage is.")


class BasicUnit(_UnitBase):
    """ResNet basic block: two 3×3 convs; stride on the first."""

    type: Literal["basic"] = Field(description="Unit type: a ResNet basic block.")
    channels: Positive = Field(description="Output channels.")


class BottleneckUnit(_UnitBase):
    """ResNet bottleneck: 1×1 → 3×3 (stride, dilation) → 1×1; 1×1 conv shortcut when channels
    change, strided subsampling when only the stride does, identity otherwise."""

    type: Literal["bottleneck"] = Field(description="Unit type: a ResNet bottleneck.")
    channels: Positive = Field(description="Output channels (4 × mid_channels in ResNet).")
    mid_channels: Positive = Field(description="Channels of the 1×1 reduction and the 3×3 conv.")
    groups: Positive = Field(1, description="Groups of the 3×3 conv (ResNeXt's cardinality: 32); "
                             "must divide mid_channels.")
    downsample: Literal["conv", "avgpool"] = Field(
        "conv", description="A conv shortcut: 'conv', a strided 1×1 conv + BN; 'avgpool', an "
        "average pool by the stride (ceil mode), then a 1×1 conv + BN (ResNet-D, "
        "MMSegmentation's ResNetV1d).")

    @model_validator(mode="after")
    def _groups_divide(self) -> BottleneckUnit:
        if self.mid_channels % self.groups != 0:
            raise ValueError(f"groups must divide mid_channels: found groups {self.groups}, "
                             f"mid_channels {self.mid_channels}")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_groups(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The resolved spec leaves out ``groups: 1`` and ``downsample: conv``, so specs and
        checkpoints made before the keys existed keep their hashes."""
        data = handler(self)
        if data.get("groups") == 1:
            del data["groups"]
        if data.get("downsample") == "conv":
            del data["downsample"]
        return data


class XceptionUnit(_UnitBase):
    """Aligned-Xception unit: three 3×3 separable convs, the stride on the third."""

    type: Literal["xception"] = Field(description="Unit type: an aligned-Xception unit.")
    channels: tuple[Positive, Positive, Positive] = Field(
        description="Output channels of the three separable convs.")
    shortcut: Literal["conv", "identity", "none"] = Field(
        "conv", description="'conv': 1×1 conv + BN (with the unit's stride); 'identity'; 'none' "
        "(the exit flow's last unit).")
    relu: Literal["pre", "inside"] = Field(
        "pre", description="'pre': ReLU before each separable conv, none between depthwise and "
        "pointwise (TF/timm entry and middle flow); 'inside': BN + ReLU after the depthwise and "
        "after the pointwise conv.")


class InvertedResidualUnit(_UnitBase):
    """MobileNetV2 inverted residual: 1×1 expand → 3×3 depthwise (stride, dilation) → 1×1 linear."""

    type: Literal["inverted_residual"] = Field(description="Unit type: a MobileNetV2 inverted residual.")
    channels: Positive = Field(description="Output channels.")
    expansion: Positive = Field(6, description="Expansion ratio t of the MobileNetV2 table.")


class MobileNetV3Unit(_UnitBase):
    """MobileNetV3 inverted residual: 1×1 expand → k×k depthwise (stride, dilation) →
    [squeeze-excitation] → 1×1 linear projection; residual when the shape is kept."""

    type: Literal["mobilenetv3"] = Field(description="Unit type: a MobileNetV3 inverted residual.")
    channels: Positive = Field(description="Output channels.")
    expanded: Positive = Field(description="Channels of the expansion (the tables' 'exp size'); "
                               "equal to the input channels: no expansion conv.")
    kernel: OddKernel = Field(3, description="Kernel of the depthwise conv (3 or 5).")
    se: bool = Field(False, description="Squeeze-excitation after the depthwise conv (ReLU, "
                     "hard sigmoid; squeeze to expanded/4 rounded to a multiple of 8).")
    activation: Literal["relu", "hardswish"] = Field(
        "relu", description="Activation of the expansion and depthwise convs.")


class ConvUnit(_UnitBase):
    """One conv → BN → activation (MobileNetV3's last 1×1 conv to 960 channels)."""

    type: Literal["conv_layer"] = Field(
        description="Unit type: a single convolution (conv → BN → activation).")
    channels: Positive = Field(description="Output channels.")
    kernel: OddKernel = Field(1, description="Kernel size (odd).")
    activation: Literal["relu", "relu6", "hardswish", "none"] = Field(
        "relu", description="Activation after the batch norm.")


class VGGUnit(_UnitBase):
    """A VGG stage as DeepLab v1/v2 use it: 3×3 convs with bias and ReLU (no norm), then a 3×3
    max-pool padded by 1 carrying the stride."""

    type: Literal["vgg"] = Field(description="Unit type: VGG convs and a max-pool.")
    channels: Positive = Field(description="Output channels of every conv.")
    convs: int = Field(2, ge=1, le=8, description="Number of 3×3 convs (VGG-16: 2, 2, 3, 3, 3).")
    pool: bool = Field(True, description="The 3×3 max-pool (padding 1, the unit's stride) after "
                       "the convs.")


Unit = Annotated[
    BasicUnit | BottleneckUnit | XceptionUnit | InvertedResidualUnit | MobileNetV3Unit | ConvUnit
    | VGGUnit,
    Field(discriminator="type"),
]


class StageSpec(Base):
    name: Identifier = Field(description="Stage name, e.g. block1; nodes are named "
                             "backbone.<stage>.<unit>.")
    units: list[Unit] = Field(min_length=1, description="The stage's units, in order.")


class NormSpec(Base):
    eps: float = Field(1e-5, gt=0, description="Batch-norm epsilon (timm's Xception uses 1e-3).")
    head_eps: float | None = Field(
        None, gt=0, description="Batch-norm epsilon of the heads; null: the backbone's "
        "(torchvision's MobileNetV3 models: 1e-3 in the backbone, 1e-5 in the heads).")

    @model_serializer(mode="wrap")
    def _omit_unset_head_eps(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The resolved spec leaves out ``head_eps: null``, so older specs keep their hashes."""
        data = handler(self)
        if data.get("head_eps", 0) is None:
            del data["head_eps"]
        return data


class BackboneSpec(Base):
    """A backbone given by a preset (expanded to explicit stages) or by explicit stages."""

    preset: Literal[BACKBONE_PRESETS] | None = Field(  # type: ignore[valid-type]
        None, description="A named backbone; expands to explicit stem and stages.")
    timm: TimmModelName | None = Field(
        None, description="A timm model name (e.g. convnext_atto): its features-only encoder is "
        "the backbone, one stage per feature it hands out (stage0, stage1, ...), at "
        "backbone.output_stride 8, 16 or 32. Instead of preset or stages.")
    stem: Literal["conv7", "deep"] | StemSpec | None = Field(
        None, description="ResNet presets: 'conv7' (7×7 conv + max-pool, torchvision) or 'deep' "
        "(three 3×3 convs 64, 64, 128 + max-pool, the TF 'beta' ResNets). Or an explicit stem.")
    stages: list[StageSpec] | None = Field(
        None, description="Explicit stages (instead of a preset).")
    width_multiplier: float = Field(1.0, gt=0, le=16, description="MobileNetV2/V3 width "
                                    "multiplier.")
    activation: Literal["relu", "relu6", "hardswish"] | None = Field(
        None, description="Activation; defaults to relu6 for MobileNetV2, hardswish for "
        "MobileNetV3 (its stem; each unit names its own), relu otherwise.")
    norm: NormSpec = Field(default_factory=NormSpec, description="Batch norm settings.")
    output_stride: Positive = Field(
        16, description="Input size / final feature size (8, 16 or 32). Strides past it become "
        "dilation (DeepLabv3 §3.1).")
    multi_grid: list[Positive] | None = Field(
        None, description="Unit rates for the last stage and its cascaded copies (DeepLabv3 "
        "§3.2), one per unit; for a single-unit stage, one per 3×3 conv of that unit.")
    multi_grid_mode: Literal["multiply", "absolute"] = Field(
        "multiply", description="'multiply': rate = stage rate × multi_grid[i] (the paper); "
        "'absolute': multi_grid values are the rates.")
    stride_placement: Literal["first", "last"] | None = Field(
        None, description="Where a repeated unit's stride sits: 'last' unit (TF ResNet, the "
        "paper) or 'first' (torchvision, MobileNetV2). Default: the preset's own ('last' for "
        "ResNet, 'first' for MobileNetV2 and explicit stages).")
    destrided_rate: Literal["previous", "new"] = Field(
        "previous", description="Rate of the unit whose stride the output-stride rule removed: "
        "'previous' (TF and torchvision) or 'new' (every unit of the stage at the new rate).")
    cascade: int = Field(
        0, ge=0, le=8, description="Copies of the last stage appended after it, each with stride "
        "2 (DeepLabv3 §3.2 block5–block7).")
    downsample: Literal["conv", "avgpool"] = Field(
        "conv", description="Bottleneck ResNet presets: a conv shortcut is a strided 1×1 conv "
        "('conv') or an average pool then a 1×1 conv ('avgpool': ResNet-D, MMSegmentation's "
        "ResNetV1d).")

    @model_serializer(mode="wrap")
    def _omit_default_downsample(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The resolved spec leaves out ``downsample: conv``, so specs and checkpoints made
        before the key existed keep their hashes."""
        data = handler(self)
        if data.get("downsample") == "conv":
            del data["downsample"]
        if data.get("timm", 0) is None:  # likewise for specs without a timm encoder
            del data["timm"]
        return data

    @model_validator(mode="after")
    def _preset_or_stages(self) -> BackboneSpec:
        if self.timm is not None:
            return self._timm_alone()
        if self.preset is None and self.stages is None:
            raise ValueError("expected a preset (one of " + ", ".join(BACKBONE_PRESETS)
                             + "), explicit stages or a timm model name")
        if self.preset is not None and self.stages is not None:
            raise ValueError("give either a preset or explicit stages, not both")
        if self.stages is not None and not isinstance(self.stem, StemSpec):
            raise ValueError("explicit stages need an explicit stem (convs, pool)")
        if isinstance(self.stem, str) and not (self.preset or "").startswith(("resnet",
                                                                              "resnext")):
            raise ValueError(f"stem '{self.stem}' applies to ResNet presets only")
        if self.downsample != "conv" and self.preset not in BOTTLENECK_PRESETS:
            raise ValueError("downsample: avgpool applies to bottleneck ResNet presets only ("
                             + ", ".join(BOTTLENECK_PRESETS) + ")")
        return self

    def _timm_alone(self) -> BackboneSpec:
        """A timm encoder is built by timm: the keys that shape specc's own backbones do not
        apply to it, and it reaches output strides 8, 16 and 32 only."""
        ours = [key for key in ("preset", "stem", "stages", "activation", "multi_grid",
                                "stride_placement") if getattr(self, key) is not None]
        ours += [key for key, default in (("width_multiplier", 1.0), ("cascade", 0),
                                          ("downsample", "conv"), ("destrided_rate", "previous"))
                 if getattr(self, key) != default]
        if ours:
            raise ValueError(f"timm: {self.timm} builds the whole encoder; remove "
                             + ", ".join(ours) + " (they shape specc's own backbones only)")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"a timm encoder runs at output stride 8, 16 or 32, found "
                             f"{self.output_stride}")
        return self


# --------------------------------------------------------------------------------------------
# Heads


class SeparableStyle(Base):
    """How a 3×3 conv in ASPP or the decoder is built."""

    conv: Literal["plain", "separable"] = Field(
        "plain", description="'separable': depthwise 3×3 (dilated) + pointwise 1×1 (v3+ §3.2).")
    depthwise_norm: bool = Field(
        True, description="Separable only: BN + ReLU between depthwise and pointwise (the paper); "
        "false leaves nothing between them.")


class ImagePoolingSpec(Base):
    enabled: bool = Field(True, description="The image-level feature branch (DeepLabv3 §3.3).")
    kernel: Literal["fixed", "adaptive"] = Field(
        "fixed", description="'fixed': average-pool with the kernel of the feature map at the "
        "input.size (TF code; clamped to smaller maps); 'adaptive': global pooling at any size.")
    align_corners: bool = Field(True, description="Bilinear upsampling of the pooled feature.")
    norm: Literal["batch", "group", "none"] = Field(
        "batch", description="Norm after the branch's 1×1 conv: 'batch' (the papers, torchvision; "
        "needs at least 2 images per process to train), 'group' (GroupNorm) or 'none' (a conv "
        "with bias); both train at any batch size.")
    position: Literal["last", "first"] = Field(
        "last", description="Where the pooled branch sits in the concat before the projection: "
        "'last' (TF code, torchvision, smp) or 'first' (MMSegmentation's ASPPHead).")

    @model_serializer(mode="wrap")
    def _omit_default_norm(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The resolved spec leaves out ``norm: batch`` and ``position: last``, so specs,
        generated files and checkpoints made before the keys existed keep their hashes (and
        resume)."""
        data = handler(self)
        if data.get("norm") == "batch":
            del data["norm"]
        if data.get("position") == "last":
            del data["position"]
        return data


class ProjectionSpec(Base):
    channels: Positive = Field(256, description="Channels after the concat projection.")
    kernel: OddKernel = Field(1, description="Kernel of the projection conv (odd: 1 or 3).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout after the projection.")


class ExtraConvSpec(Base):
    channels: Positive = Field(256, description="Channels of the extra conv before the classifier.")
    kernel: OddKernel = Field(3, description="Kernel size of the extra conv (odd; torchvision: 3).")
    style: SeparableStyle = Field(
        default_factory=SeparableStyle,
        description="Plain (torchvision) or separable 3×3 conv; smp's DeepLabV3Plus: "
        "{conv: separable, depthwise_norm: false} (depthwise, pointwise, then BN + ReLU).")

    @model_validator(mode="after")
    def _separable_is_3x3(self) -> ExtraConvSpec:
        if self.style.conv == "separable" and self.kernel != 3:
            raise ValueError(f"a separable extra conv is 3×3: expected kernel 3, found "
                             f"{self.kernel}")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_style(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The resolved spec leaves out the default plain style, so specs, generated files and
        checkpoints made before the key existed keep their hashes."""
        data = handler(self)
        if data.get("style") == SeparableStyle().model_dump():
            del data["style"]
        return data


class ASPPSpec(Base):
    channels: Positive = Field(256, description="Channels of every branch.")
    rates: list[Positive] = Field(
        default_factory=lambda: [6, 12, 18], description="Rates of the 3×3 atrous branches.")
    rates_output_stride: Positive | None = Field(
        16, description="The output stride the rates are written for; they are scaled to the "
        "actual one (6,12,18 at 16 → 12,24,36 at 8). null: the rates are absolute.")
    style: SeparableStyle = Field(default_factory=SeparableStyle,
                                  description="Plain or separable 3×3 branches.")
    image_pooling: ImagePoolingSpec = Field(default_factory=ImagePoolingSpec,
                                            description="Image-level features.")
    projection: ProjectionSpec = Field(default_factory=ProjectionSpec,
                                       description="1×1 conv after the concat.")
    extra_conv: ExtraConvSpec | None = Field(
        None, description="A conv + BN + ReLU after ASPP, before the classifier (torchvision).")


class UpsampleSpec(Base):
    mode: Literal["bilinear", "nearest"] = Field("bilinear", description="Interpolation mode.")
    align_corners: bool = Field(True, description="Bilinear only (TF: true, torchvision: false).")


class DecoderSpec(Base):
    """DeepLabv3+ decoder (v3+ §3.1)."""

    low_level: NodeName = Field(description="Graph node whose output is the low-level feature.")
    low_level_reduction: Positive = Field(
        4, description="Input size / size of the low-level feature (4 in the paper; the TF "
        "code's decoder_output_stride); checked against the graph.")
    projection: Positive = Field(48, description="1×1 reduction of the low-level feature (48).")
    convs: int = Field(2, ge=0, le=8, description="3×3 convs after the concat (2 in the paper).")
    channels: Positive = Field(256, description="Channels of those convs.")
    style: SeparableStyle = Field(default_factory=SeparableStyle,
                                  description="Plain or separable 3×3 convs.")
    upsample: UpsampleSpec = Field(default_factory=UpsampleSpec,
                                   description="Upsampling of the encoder output to the low level.")


class AuxSpec(Base):
    """Auxiliary FCN head on an intermediate feature (torchvision's aux_classifier)."""

    tap: NodeName = Field(description="Graph node feeding the head, e.g. backbone.block3.")
    channels: Positive = Field(256, description="Channels of the 3×3 conv.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the classifier.")


class FCNSpec(Base):
    """An FCN head (torchvision's ``FCNHead``): a 3×3 conv → BN → ReLU → dropout between the
    backbone output and the classifier, in place of ASPP."""

    channels: Positive = Field(512, description="Channels of the 3×3 conv (torchvision: "
                               "input channels / 4, 512 on a ResNet-50/101).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the classifier.")


class LRASPPSpec(Base):
    """The Lite R-ASPP head (MobileNetV3 §6.4, torchvision's ``LRASPPHead``): it makes the
    class logits itself, from the backbone output and a low-level feature."""

    low_level: NodeName = Field(description="Graph node whose output is the low-level feature "
                                "(torchvision: features[4], 1/8 of the input).")
    channels: Positive = Field(128, description="Channels of the high-level branch.")
    upsample: UpsampleSpec = Field(
        default_factory=UpsampleSpec,
        description="Resizing of the high-level branch to the low-level feature "
        "(torchvision: bilinear, align_corners false).")


class FCASPPSpec(Base):
    """DeepLab v1/v2's heads: one branch per rate — fc6 (3×3 atrous conv) → ReLU → dropout →
    fc7 (1×1) → ReLU → dropout → a 1×1 classifier — and the branches' logits summed. One rate
    is v1's LargeFOV, rates (6, 12, 18, 24) v2's ASPP-L."""

    rates: list[Positive] = Field(
        default_factory=lambda: [12], min_length=1,
        description="Rate of each branch's fc6 (LargeFOV: [12]; ASPP-L: [6, 12, 18, 24]); "
        "absolute, not scaled with the output stride.")
    channels: Positive | None = Field(
        1024, description="Channels of fc6 and fc7; null: each branch is one 3×3 atrous conv "
        "to the classes (DeepLab v2 on ResNet-101).")
    dropout: float = Field(0.5, ge=0, lt=1, description="Dropout after fc6 and after fc7.")


class InputSpec(Base):
    size: tuple[Positive, Positive] = Field(
        (513, 513), description="Input size (H, W) the network's shapes are derived for: the "
        "training crop unless data.crop says otherwise; 513 in the papers.")
    mean: tuple[float, float, float] = Field(
        (0.485, 0.456, 0.406), description="Per-channel mean of images scaled to [0, 1].")
    std: tuple[float, float, float] = Field(
        (0.229, 0.224, 0.225), description="Per-channel std of images scaled to [0, 1].")

    @field_validator("mean")
    @classmethod
    def _unit_range(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not 0 <= m <= 1 for m in v):
            hint = "; a mean on the 0..255 scale? divide it by 255" if max(v) > 1 else ""
            raise ValueError(f"expected values in 0..1 (images are scaled to [0, 1]), found "
                             f"{list(v)}{hint}")
        return v

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError(f"expected positive values, found {list(v)}")
        if max(v) > 1:
            raise ValueError(f"expected values of at most 1 (images are scaled to [0, 1]), found "
                             f"{list(v)}; a std on the 0..255 scale? divide it by 255")
        return v


class OutputSpec(Base):
    upsample: UpsampleSpec = Field(
        default_factory=UpsampleSpec,
        description="Upsampling of the logits to the input size (TF: align_corners true).")


class Spec(Base):
    """A DeepLabv3 / DeepLabv3+ model, and how to train it."""

    name: Identifier = Field(description="Model name; also the output folder and class prefix.")
    num_classes: Annotated[int, Strict(), Field(gt=0, le=MAX_CLASSES)] = Field(description="Number of classes (VOC: 21).")
    input: InputSpec = Field(default_factory=InputSpec, description="Input size and normalization.")
    backbone: BackboneSpec = Field(description="The feature extractor.")
    aspp: ASPPSpec | None = Field(
        default_factory=ASPPSpec,
        description="Atrous spatial pyramid pooling; null for none (the cascade models of "
        "DeepLabv3 §3.2 classify the backbone output directly).")
    decoder: DecoderSpec | None = Field(None, description="DeepLabv3+ decoder; null for v3.")
    fcn: FCNSpec | None = Field(
        None, description="FCN head before the classifier (torchvision's fcn_resnet50/101); "
        "needs aspp: null. null for none.")
    lraspp: LRASPPSpec | None = Field(
        None, description="Lite R-ASPP head (torchvision's lraspp_mobilenet_v3_large); needs "
        "aspp: null. null for none.")
    fc_aspp: FCASPPSpec | None = Field(
        None, description="DeepLab v1/v2 head (LargeFOV or ASPP-L); needs aspp: null. null for "
        "none.")
    aux: AuxSpec | None = Field(None, description="Auxiliary head; null for none.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Final upsampling.")
    accepted_warnings: list[KeyPath] = Field(
        default_factory=list, description="Spec keys whose warnings are intended and not shown "
        "(a zoo spec reproducing another library's choice, e.g. torchvision's ASPP rates "
        "12, 24, 36 at output stride 16). A key that draws no warning is itself warned about.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training protocol.")
    data: DataSpec = Field(default_factory=DataSpec, description="Data set and augmentation.")

    @field_validator("name")
    @classmethod
    def _not_keyword(cls, v: str) -> str:
        if keyword.iskeyword(v):
            raise ValueError(f"{v!r} is a Python keyword")
        return v

    @model_serializer(mode="wrap")
    def _omit_unset_heads(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The resolved spec leaves out heads added to the language later while they are null
        (:data:`LATER_HEADS`), and an empty ``accepted_warnings``, so specs, generated files and checkpoints made before they
        existed keep their hashes (and resume)."""
        data = handler(self)
        for key in LATER_HEADS:
            if data.get(key, 0) is None:
                del data[key]
        if data.get("accepted_warnings") == []:
            del data["accepted_warnings"]
        return data


#: Optional top-level heads added after the first release; left out of resolved specs when null.
LATER_HEADS = ("fcn", "lraspp", "fc_aspp")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the spec language (for editor completion).

    A variant (a file with ``extends:``) states only what differs from its base, so it is checked
    against a copy of the schema without required keys in mappings (which merge with the base's);
    a list replaces the base's whole, so its items keep theirs. A file without ``extends:`` is
    checked against the whole schema as well (``else``).
    """
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "specc spec"
    schema.setdefault("properties", {})["extends"] = {
        "type": "string", "description": "A base spec (path relative to this file) to start from."}
    whole = {"required": schema.pop("required"), "properties": schema["properties"]}
    defs = schema["$defs"]
    schema["$defs"] = {**defs, **{PARTIAL + name: _partial(d) for name, d in defs.items()}}
    schema["properties"] = _partial(whole["properties"])
    schema["if"] = {"required": ["extends"]}
    schema["else"] = whole
    return schema


#: Prefix of the schema definitions a variant's mappings are checked against (:func:`_partial`).
PARTIAL = "Partial"


def _partial(node: Any) -> Any:
    """A copy of a schema node whose mappings require no key and refer to the partial
    definitions; list items are left whole (a variant's list replaces the base's)."""
    if isinstance(node, list):
        return [_partial(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "required" and isinstance(value, list):
            continue
        if key == "$ref":
            value = value.replace("#/$defs/", f"#/$defs/{PARTIAL}")
        elif key not in ("items", "prefixItems"):
            value = _partial(value)
        out[key] = value
    return out
