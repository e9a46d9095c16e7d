"""Stage 4 primitives — the typed model plan that lowering builds and every later stage reads.

Lowering (:mod:`specc.lower_backbone`, :mod:`specc.lower_heads`) turns a spec and its schedule
into two views of one network:

* the **layer graph**: a networkx DAG whose nodes are layers (a conv with its batch norm and
  activation is one node), named by where they sit (``backbone.block4.unit2.conv2``), each with
  its op, channels, kernel, stride, dilation, output stride, receptive field, output shape at the
  spec's input size, parameters, multiply-adds and the spec key it came from;
* the **blocks**: one frozen dataclass per generated module (the stem, each backbone unit, the
  ASPP, the decoder, ...). A block kind is a :class:`Block` subclass registered with
  :func:`register`; the class owns everything about its kind: how it is lowered to layers, the
  constructor call :mod:`specc.emit` writes, the parameter names other libraries give its tensors
  (:mod:`specc.importers`), its atrous convolutions (:mod:`specc.advice`) and how it is drawn
  (:mod:`specc.graphviz`). Adding a kind is adding one registered class and its building-block
  module under ``specc/modules/``.

:class:`Network` holds both, with the stages, taps, aliases, input geometry and outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

import networkx as nx

from specc.errors import SpecError

# ------------------------------------------------------------------------------------------------
# Geometry


def conv_out(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Output size of a conv padded by dilation·(kernel−1)/2 ("same" for stride 1)."""
    pad = dilation * (kernel - 1) // 2
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class Feature:
    """A tensor of the network while it is lowered: the layer that makes it and its geometry at
    the spec's input size."""

    node: str
    channels: int
    h: int
    w: int
    #: Input size / feature size: the distance in input pixels between neighbouring positions
    #: (the product of the strides so far; dilation does not change it).
    reduction: int
    #: Receptive field in input pixels; None once image pooling made it global.
    rf: int | None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.h, self.w)


@dataclass(frozen=True)
class Upsample:
    """Resizing to a larger map: ``bilinear`` (with ``align_corners``) or ``nearest``."""

    mode: str
    align_corners: bool


@dataclass(frozen=True)
class AtrousConv:
    """A 3×3 convolution that may be dilated: where it is, its rate and the map it reads."""

    node: str
    rate: int
    #: [h, w] of the feature map it reads, at the spec's input size.
    feature_size: tuple[int, int]
    spec_key: str


@dataclass(frozen=True)
class Separable:
    """How a head's 3×3 convolutions are made (``aspp.style`` / ``decoder.style``)."""

    separable: bool
    depthwise_norm: bool


# ------------------------------------------------------------------------------------------------
# The layer graph


class LayerGraph:
    """Adds layer nodes to a DiGraph, propagating shapes, output stride and receptive field."""

    def __init__(self) -> None:
        self.g = nx.DiGraph()
        #: Names that refer to another node: a unit or stage → the node that makes its output.
        self.aliases: dict[str, str] = {}

    def add(self, name: str, op: str, inputs: list[Feature], out: Feature, **attrs: Any) -> Feature:
        """A node ``name`` computing ``out`` from ``inputs``.

        Raises:
            SpecError: a node of that name exists already.
        """
        if name in self.g:
            raise SpecError(f"two layers are both named {name!r}", path=attrs.get("spec_key", ""))
        attrs.setdefault("params", 0)
        attrs.setdefault("macs", 0)
        self.g.add_node(name, op=op, out_channels=out.channels, shape=out.shape,
                        reduction=out.reduction, receptive_field=out.rf,
                        in_channels=inputs[0].channels if inputs else 0, **attrs)
        for i, src in enumerate(inputs):
            self.g.add_edge(src.node, name, index=i, channels=src.channels)
        return replace(out, node=name)

    def input(self, h: int, w: int) -> Feature:
        """The image: three channels at stride 1."""
        return self.add("input", "input", [], Feature("input", 3, h, w, 1, 1), spec_key="input")

    def feature(self, node: str) -> Feature:
        """The tensor an existing node makes (to branch off it, e.g. for a decoder tap)."""
        d = self.g.nodes[node]
        c, h, w = d["shape"]
        return Feature(node, c, h, w, d["reduction"], d["receptive_field"])

    def conv(self, name: str, x: Feature, out_channels: int, *, kernel: int = 1, stride: int = 1,
             dilation: int = 1, groups: int = 1, norm: bool = True, act: str | None = "relu",
             bias: bool = False, spec_key: str, pre_act: str | None = None) -> Feature:
        """Conv → [BN] → [activation]."""
        h, w = conv_out(x.h, kernel, stride, dilation), conv_out(x.w, kernel, stride, dilation)
        k_eff = dilation * (kernel - 1) + 1
        rf = None if x.rf is None else x.rf + (k_eff - 1) * x.reduction
        params = kernel * kernel * (x.channels // groups) * out_channels
        params += out_channels if bias else 0
        params += 2 * out_channels if norm else 0
        macs = kernel * kernel * (x.channels // groups) * out_channels * h * w
        out = Feature(name, out_channels, h, w, x.reduction * stride, rf)
        return self.add(name, "conv", [x], out, kernel=kernel, stride=stride, dilation=dilation,
                        groups=groups, norm=norm, act=act, pre_act=pre_act, bias=bias,
                        params=params, macs=macs, spec_key=spec_key)

    def sepconv(self, name: str, x: Feature, out_channels: int, *, stride: int = 1,
                dilation: int = 1, depthwise_norm: bool = True, depthwise_act: str | None = "relu",
                act: str | None = "relu", pre_act: str | None = None, spec_key: str) -> Feature:
        """Depthwise 3×3 → [BN → act] → pointwise 1×1 → BN → act."""
        h, w = conv_out(x.h, 3, stride, dilation), conv_out(x.w, 3, stride, dilation)
        rf = None if x.rf is None else x.rf + 2 * dilation * x.reduction
        c = x.channels
        params = 9 * c + (2 * c if depthwise_norm else 0) + c * out_channels + 2 * out_channels
        macs = 9 * c * h * w + c * out_channels * h * w
        out = Feature(name, out_channels, h, w, x.reduction * stride, rf)
        return self.add(name, "sepconv", [x], out, kernel=3, stride=stride, dilation=dilation,
                        groups=c, norm=True, depthwise_norm=depthwise_norm,
                        depthwise_act=depthwise_act if depthwise_norm else None, act=act,
                        pre_act=pre_act, bias=False, params=params, macs=macs, spec_key=spec_key)

    def conv3x3(self, name: str, x: Feature, channels: int, dilation: int, style: Separable,
                spec_key: str) -> Feature:
        """A head's 3×3 convolution, plain or separable as its style says."""
        if style.separable:
            return self.sepconv(name, x, channels, dilation=dilation,
                                depthwise_norm=style.depthwise_norm, spec_key=spec_key)
        return self.conv(name, x, channels, kernel=3, dilation=dilation, spec_key=spec_key)

    def pool(self, name: str, x: Feature, op: str, *, kernel: int, stride: int,
             spec_key: str) -> Feature:
        """A pooling or subsampling layer (``maxpool``, ``subsample``)."""
        h, w = conv_out(x.h, kernel, stride, 1), conv_out(x.w, kernel, stride, 1)
        rf = None if x.rf is None else x.rf + (kernel - 1) * x.reduction
        out = Feature(name, x.channels, h, w, x.reduction * stride, rf)
        return self.add(name, op, [x], out, kernel=kernel, stride=stride, dilation=1,
                        spec_key=spec_key)

    def global_pool(self, name: str, x: Feature, *, kernel: tuple[int, int] | None, mode: str,
                    spec_key: str) -> Feature:
        """Average pooling to one position (image pooling); the receptive field becomes global."""
        out = Feature(name, x.channels, 1, 1, x.reduction, None)
        return self.add(name, "avgpool", [x], out, kernel=kernel, mode=mode, spec_key=spec_key)

    def merge(self, name: str, op: str, xs: list[Feature], *, act: str | None = None,
              spec_key: str) -> Feature:
        """``add`` or ``concat`` of equally sized maps.

        Raises:
            SpecError: the maps' sizes differ.
        """
        ref = xs[0]
        for other in xs[1:]:
            if (other.h, other.w) != (ref.h, ref.w):
                raise SpecError(f"{op} of {ref.node} {ref.h}×{ref.w} and {other.node} "
                                f"{other.h}×{other.w}: sizes differ", path=spec_key)
        channels = sum(x.channels for x in xs) if op == "concat" else ref.channels
        rfs = [x.rf for x in xs]
        rf = None if any(r is None for r in rfs) else max(r for r in rfs if r is not None)
        out = Feature(name, channels, ref.h, ref.w, ref.reduction, rf)
        return self.add(name, op, xs, out, act=act, spec_key=spec_key)

    def upsample(self, name: str, x: Feature, like: Feature, how: Upsample, spec_key: str,
                 rf_global: bool = False) -> Feature:
        """Resize ``x`` to the size of ``like``."""
        out = Feature(name, x.channels, like.h, like.w, like.reduction,
                      None if rf_global else x.rf)
        return self.add(name, "upsample", [x], out, mode=how.mode,
                        align_corners=how.align_corners, spec_key=spec_key)


# ------------------------------------------------------------------------------------------------
# Constructor calls, as generated code writes them


@dataclass(frozen=True)
class Code:
    """Source text written as it is where a constant would go (``num_classes``)."""

    text: str


def literal(value: Any) -> str:
    """Python source for a constant: strings double-quoted, tuples with their trailing comma."""
    if isinstance(value, Code):
        return value.text
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return repr(value)


#: Marks a keyword argument written whatever its value.
ALWAYS = object()


def call(cls: str, positional: list[Any], kwargs: list[tuple[str, Any, Any]]) -> str:
    """``Cls(a, b, key=value)``: positional values, then each (key, value, default) whose value
    differs from the default (pass :data:`ALWAYS` as the default to always write it)."""
    args = [literal(v) for v in positional]
    args += [f"{key}={literal(value)}" for key, value, default in kwargs
             if default is ALWAYS or value != default]
    return f"{cls}({', '.join(args)})"


def shape_text(channels: int | str, reduction: int) -> str:
    """``(N, 256, H/16, W/16)``: a tensor's shape as a code comment."""
    if reduction == 1:
        return f"(N, {channels}, H, W)"
    return f"(N, {channels}, H/{reduction}, W/{reduction})"


@dataclass(frozen=True)
class Line:
    """One line of a generated ``__init__`` or ``forward``, with its trailing comment."""

    code: str
    comment: str = ""
    #: Inside the block the line before opens (an ``if``): indented one level deeper, with no
    #: blank line before it.
    nested: bool = False


# ------------------------------------------------------------------------------------------------
# Blocks and their registry


@dataclass(frozen=True, kw_only=True)
class Block:
    """A generated module: one kind of block, where it sits, and the figures it was built with."""

    #: The kind's name (a unit's is its spec ``type``).
    kind: ClassVar[str]
    #: The kind's own building-block module under ``specc/modules/`` (None: shared layers only).
    code: ClassVar[str | None] = None

    spec_key: str
    #: The tensor the block makes.
    out: Feature
    eps: float = 1e-5
    #: Its 3×3 convolutions that can be dilated, for the atrous analysis.
    atrous: tuple[AtrousConv, ...] = ()

    def shared(self) -> tuple[str, ...]:
        """The shared layers (``specc.modules.SHARED``) its generated code uses."""
        return ("conv_bn_act",)

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        """Where ``library`` keeps this block's tensors: our leaf-module prefix (relative to the
        block) → theirs (``at`` is where the library keeps the block). A string says why the
        library has no counterpart."""
        return f"{library} has no {self.kind} blocks"

    def describe(self) -> str:
        """One line for drawings: the kind with its stride and dilation."""
        return self.kind

    def signature(self) -> tuple[Any, ...]:
        """What makes two blocks the same apart from their name and place (runs of identical
        units are drawn as one)."""
        skip = {"spec_key", "out", "atrous", "index", "name"}
        values = tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip)
        return (self.kind, values, self.out.shape, self.out.reduction)


BLOCKS: dict[str, type[Block]] = {}

B = TypeVar("B", bound=type[Block])


def register(cls: B) -> B:
    """Class decorator: make a block kind known to lowering, emission, import and drawing."""
    if cls.kind in BLOCKS:
        raise ValueError(f"block kind {cls.kind!r} is registered twice")
    BLOCKS[cls.kind] = cls
    return cls


def kinds(base: type[Block] = Block) -> list[type[Block]]:
    """The registered kinds derived from ``base``, in registration order."""
    return [k for k in BLOCKS.values() if issubclass(k, base)]


@dataclass(frozen=True)
class StemConv:
    in_channels: int
    out_channels: int
    kernel: int
    stride: int


@dataclass(frozen=True, kw_only=True)
class Unit(Block):
    """A backbone unit: the ``index``-th module of a stage's ``nn.Sequential``."""

    #: Inner layers ``forward_tap`` can hand out (a decoder or aux tap), numbered from 1.
    taps: ClassVar[tuple[str, ...]] = ()

    stage: str
    index: int
    name: str
    in_channels: int
    stride: int
    #: Dilation of each of its 3×3 convs.
    rates: tuple[int, ...]

    @property
    def path(self) -> str:
        """Its name in the layer graph: ``backbone.<stage>.<name>``."""
        return f"backbone.{self.stage}.{self.name}"

    @property
    def module(self) -> str:
        """Its place in the generated model's state dict: ``backbone.<stage>.<index>``."""
        return f"backbone.{self.stage}.{self.index}"

    @classmethod
    def lower(cls, ctx: Any, u: Any, x: Feature, index: int) -> Unit:
        """Add the unit's layers after ``x`` (``u``: its :class:`specc.derive.ScheduledUnit`,
        ``ctx``: :class:`specc.lower_backbone.Context`) and return the block."""
        raise NotImplementedError

    def constructor(self, tap: int) -> str:
        """The generated constructor call; ``tap`` numbers the inner layer ``forward_tap`` returns."""
        raise NotImplementedError

    def weight_map(self, library: str, at: str) -> dict[str, str] | str:
        return f"{library}'s backbone has no {self.kind} units"

    def describe(self) -> str:
        stride = f" /{self.stride}" if self.stride != 1 else ""
        dil = f" d={','.join(map(str, self.rates))}" if any(r > 1 for r in self.rates) else ""
        return f"{self.kind}{stride}{dil}"


@dataclass(frozen=True, kw_only=True)
class Head(Block):
    """A module of the model after the backbone, held as ``self.<attr>``."""

    #: Its attribute on the generated model (and its state-dict prefix).
    attr: ClassVar[str]
    #: True when its forward reads ``features["out"]`` (the backbone output) itself.
    reads_backbone: ClassVar[bool] = False

    @classmethod
    def lower(cls, hc: Any, y: Feature) -> tuple[Head | None, Feature]:
        """Add the head's layers after ``y`` (``hc``: :class:`specc.lower_heads.HeadContext`);
        None when the spec has no such head. Returns the block and the tensor the next head reads."""
        raise NotImplementedError

    def init(self) -> list[Line]:
        """Lines of the model's ``__init__`` (the comment is the spec key)."""
        raise NotImplementedError

    def forward(self) -> list[Line]:
        """Lines of the model's ``forward``."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# The network record


#: ``Tap.unit`` of a tap on the stem's output.
STEM = "stem"


@dataclass(frozen=True)
class Tap:
    """A backbone feature handed to a head: ``port`` is its key in the backbone's features."""

    port: str
    node: str
    #: The unit that makes it (``backbone.<stage>.<name>``), or ``stem``.
    unit: str
    #: The unit's inner layer it is (``sep2``, ``conv3``), or None for the unit's output.
    inner: str | None


@dataclass(frozen=True)
class Stage:
    name: str
    units: tuple[Unit, ...]


@dataclass(frozen=True)
class InputGeometry:
    """The images the model is built for: its size (fixes shapes, costs, fixed pooling kernels)
    and the normalization its inputs get."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class Network:
    """The lowered model: its blocks, layer graph and what ties them together."""

    name: str
    num_classes: int
    input: InputGeometry
    #: The backbone's output stride (``backbone.output_stride``).
    output_stride: int
    stem: Block
    stages: tuple[Stage, ...]
    heads: tuple[Head, ...]
    taps: Mapping[str, Tap]
    aliases: Mapping[str, str]
    #: The model's output keys: ``out`` and, with an auxiliary head, ``aux``.
    outputs: tuple[str, ...]
    upsample: Upsample
    graph: nx.DiGraph = field(repr=False)
    #: One-line title, a short summary, and the backbone's one-line description.
    title: str = ""
    summary: str = ""
    backbone_description: str = ""

    def units(self) -> Iterator[Unit]:
        for stage in self.stages:
            yield from stage.units

    def blocks(self) -> Iterator[Block]:
        """Every block in network order: stem, units, heads."""
        yield self.stem
        yield from self.units()
        yield from self.heads

    def unit(self, path: str) -> Unit:
        """The unit called ``backbone.<stage>.<name>``."""
        for u in self.units():
            if u.path == path:
                return u
        raise KeyError(path)

    def head(self, kind: str) -> Head | None:
        return next((h for h in self.heads if h.kind == kind), None)

    def resolve(self, name: str) -> str | None:
        """The node a name refers to: a node, a unit, a stage, or None."""
        if name in self.graph:
            return name
        return self.aliases.get(name)
