"""``specc import-weights``: foreign state dicts (torchvision, timm) renamed onto a spec's tensors.

Nothing is ever downloaded: the source is a file the user already has (``torch.save``'d state dict
or ``.safetensors``). The renaming is derived from the spec's blocks, not written out for one
spec: each block kind knows the names a library gives its tensors (``Block.weight_map``), and this
module knows where the library keeps each block: the k-th stage of a ResNet preset is
torchvision's ``layer{k}``, unit j of it ``layer{k}.{j}``; the n-th Xception unit is timm's
``blocks.{n}``. Every tensor of the spec must come from the source and every tensor of the source
must land somewhere, with the same shape, except the classification head of an ImageNet network
(``fc``, ``head.fc``), which is dropped.

``--backbone-only`` writes just the ``backbone.*`` tensors (the heads stay at their
initialisation); such a file says so in its metadata (``specc.contents: backbone``). It cannot go
to ``specc build --weights``, which wants the whole model;
``specc.artifacts.load_weights(..., partial=True)`` loads it into a fresh model for training and
returns what it left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from specc.api import compile_spec, load_spec
from specc.artifacts import BACKBONE, FULL, read_weights, shown
from specc.errors import SpeccError, WeightsError
from specc.lower_backbone import TimmEncoder
from specc.plan import Network

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from specc.api import Compilation
    from specc.derive import Schedule

#: Values of ``--from``.
SOURCES = ("torchvision", "timm", "smp", "mmseg")



@dataclass
class Plan:
    """How a source's tensors become the spec's: leaf-module prefixes, ours → theirs."""

    #: What the source was recognised as ("torchvision DeepLabV3", ...).
    kind: str
    #: Our leaf module (a conv, a batch norm) → the source's; tensors keep their last name part.
    prefixes: dict[str, str] = field(default_factory=dict)
    #: Source prefixes whose tensors are left out on purpose (an ImageNet classifier, ...).
    drop: tuple[str, ...] = ()
    #: Source prefixes of heads, left out too with ``--backbone-only``.
    heads: tuple[str, ...] = ()
    #: Why parts of the spec have no counterpart in the source (shown with an error).
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Imported:
    """The spec's tensors made from a source, and what was left out."""

    state: dict[str, Tensor]
    kind: str
    #: Source tensors left out on purpose (``fc.*``; the heads with ``--backbone-only``).
    dropped: list[str]
    backbone_only: bool
    #: Where the spec's network differs from the source's although the weights fit.
    warnings: tuple[str, ...] = ()


# -- plans ----------------------------------------------------------------------------------------


def _add(plan: Plan, ours: str, mapped: dict[str, str] | str, foreign: dict[str, list[str]]) -> None:
    """Add a block's weight map under our prefix ``ours``; a note when it has no counterpart."""
    if isinstance(mapped, str):
        foreign.setdefault(mapped, []).append(ours)
        return
    for rel, theirs in mapped.items():
        plan.prefixes[f"{ours}.{rel}" if rel else ours] = theirs


def _notes(plan: Plan, foreign: dict[str, list[str]]) -> None:
    """One note per reason; for units, how many the spec has and the first of them."""
    for note, where in foreign.items():
        units = [w for w in where if w.startswith("backbone.") and w != "backbone.stem"]
        more = ", …" if len(units) > 1 else ""
        plan.notes.append(f"{note}; the spec has {len(units)} ({units[0]}{more})" if units
                          else note)


def segmentation_kind(source: dict[str, Tensor]) -> str:
    """Which torchvision segmentation model a state dict is, by its classifier's names."""
    if "classifier.0.project.0.weight" in source:
        return "torchvision DeepLabV3"
    if "classifier.low_classifier.weight" in source:
        return "torchvision LR-ASPP"
    return "torchvision FCN"


def torchvision_plan(net: Network, source: dict[str, Tensor]) -> Plan:
    """Map a torchvision segmentation model (DeepLabV3, FCN, LR-ASPP) or an ImageNet ResNet or
    MobileNetV3 classifier.

    Stage k of a ResNet spec is torchvision's ``layer{k}``, unit j of it ``layer{k}.{j}``; the
    n-th unit of a MobileNetV3 spec is ``features.{n}`` (the stem is ``features.0``); a
    segmentation model keeps either under ``backbone`` and its heads under ``classifier`` and
    ``aux_classifier``.

    Raises:
        WeightsError: the source is neither.
    """
    keys = list(source)
    if any(k.startswith("backbone.") for k in keys):
        plan = Plan(segmentation_kind(source), heads=("classifier.", "aux_classifier."))
        pre = "backbone."
    elif "conv1.weight" in source and any(k.startswith("layer1.") for k in keys):
        plan, pre = Plan("torchvision ResNet (ImageNet)", drop=("fc.",)), ""
    elif "features.0.0.weight" in source and any(k.startswith("classifier.") for k in keys):
        plan, pre = Plan("torchvision MobileNetV3 (ImageNet)", drop=("classifier.",)), "features."
    else:
        raise WeightsError("not a torchvision ResNet, MobileNetV3 or segmentation model's state "
                           "dict (expected 'conv1.weight' and 'layer1.*', 'features.*', or "
                           "'backbone.*'); its first names: "
                           + ", ".join(keys[:5]))
    foreign: dict[str, list[str]] = {}
    _add(plan, "backbone.stem", net.stem.weight_map("torchvision", pre), foreign)
    if f"{pre}0.0.weight" in source:  # MobileNetV3's features: [stem, unit, unit, ..., conv]
        for n, u in enumerate(net.units()):
            _add(plan, u.module, u.weight_map("torchvision", f"{pre}{n + 1}"), foreign)
    else:
        _resnet_layers(plan, net, "torchvision", pre, foreign, "torchvision ResNets")
    if pre:  # a segmentation model's heads: classifier and aux_classifier
        for head in net.heads:
            _add(plan, head.attr, head.weight_map("torchvision", ""), foreign)
    _notes(plan, foreign)
    return plan


def _resnet_layers(plan: Plan, net: Network, library: str, pre: str,
                   foreign: dict[str, list[str]], owner: str) -> None:
    """Stage k of the spec is ``{pre}layer{k}`` of ``library``'s ResNet, unit j
    ``{pre}layer{k}.{j}``, as torchvision names them; ``owner`` names those ResNets in the
    note that stages past the fourth (a cascade's block5-7) have no counterpart."""
    if len(net.stages) > 4:
        plan.notes.append(f"{owner} have 4 stages; the spec's "
                          f"{', '.join(s.name for s in net.stages[4:])} have no counterpart")
    for k, stage in enumerate(net.stages):
        for u in stage.units:
            _add(plan, u.module, u.weight_map(library, f"{pre}layer{k + 1}.{u.index}"), foreign)


def timm_resnet_plan(net: Network, source: dict[str, Tensor]) -> Plan:
    """Map a timm ResNet or ResNeXt (``resnet50``, ``resnet50d``, ``resnext50_32x4d``, …): stage
    k is ``layer{k}`` as in torchvision; the classifier ``fc.*`` is dropped."""
    plan = Plan("timm ResNet", drop=("fc.",))
    foreign: dict[str, list[str]] = {}
    _add(plan, "backbone.stem", net.stem.weight_map("timm", ""), foreign)
    _resnet_layers(plan, net, "timm", "", foreign, "timm's ResNets")
    _notes(plan, foreign)
    return plan


def timm_encoder_plan(encoder: TimmEncoder) -> Plan:
    """Map timm's whole ``backbone.timm`` model (or its features-only encoder) onto the
    generated ``backbone.encoder``: the names are the whole model's, read from timm; what the
    encoder does not use (the classifier, a final conv or norm) is dropped."""
    from specc.timm_encoder import weight_names

    mapped, unused = weight_names(encoder.model, encoder.output_stride)
    plan = Plan(f"timm {encoder.model}", drop=unused)
    for ours, theirs in mapped.items():
        plan.prefixes[f"backbone.encoder.{ours}".rpartition(".")[0]] = theirs.rpartition(".")[0]
    return plan


def timm_plan(net: Network, source: dict[str, Tensor]) -> Plan:
    """Map timm's aligned Xception (``xception41/65/71``; its classifier ``head.*`` is dropped),
    a timm ResNet (:func:`timm_resnet_plan`) or, for ``backbone.timm``, that timm model
    (:func:`timm_encoder_plan`).

    timm numbers the Xception units through the whole network: the n-th is ``blocks.{n}``.

    Raises:
        WeightsError: the source is neither (a pre-activation ``xception*p`` included).
    """
    if isinstance(net.stem, TimmEncoder):
        return timm_encoder_plan(net.stem)
    if any(k.startswith("layer1.") for k in source) and any(k.startswith("conv1.")
                                                            for k in source):
        return timm_resnet_plan(net, source)
    if "stem.0.conv.weight" not in source or not any(k.startswith("blocks.") for k in source):
        raise WeightsError("not a timm aligned-Xception or ResNet state dict (expected "
                           "'stem.0.conv.weight' and 'blocks.*', or 'conv1.*' and 'layer1.*'); its "
                           "first names: " + ", ".join(list(source)[:5]))
    if any(".norm." in k for k in source):
        raise WeightsError("a pre-activation Xception (timm's xception41p/65p): its units "
                           "normalize before each conv, which specc's Xception units do not")
    plan = Plan("timm aligned Xception", drop=("head.",))
    foreign: dict[str, list[str]] = {}
    _add(plan, "backbone.stem", net.stem.weight_map("timm", ""), foreign)
    for n, u in enumerate(net.units()):
        _add(plan, u.module, u.weight_map("timm", f"blocks.{n}"), foreign)
    _notes(plan, foreign)
    return plan


def smp_plan(net: Network, source: dict[str, Tensor]) -> Plan:
    """Map segmentation_models_pytorch's ``DeepLabV3`` or ``DeepLabV3Plus`` on a ResNet or
    ResNeXt encoder (smp's ``encoder.*`` is torchvision's ResNet: stage k is
    ``encoder.layer{k}``).

    The heads' maps are given where smp keeps its ASPP (``decoder.aspp`` in DeepLabV3,
    ``decoder.aspp.0`` in DeepLabV3Plus, whose decoder adds ``block1`` and ``block2``); smp's
    optional classification head (``aux_params``) has no counterpart in a spec. A spec with
    fewer than 4 stages is smp's ``encoder_depth`` 3 or 4, whose model keeps the later stages'
    unused tensors: they are left out.

    Raises:
        WeightsError: the source is not such a state dict.
    """
    keys = list(source)
    if "encoder.conv1.weight" not in source or not any(k.startswith("decoder.aspp.")
                                                       for k in keys):
        raise WeightsError("not a segmentation_models_pytorch DeepLabV3 or DeepLabV3Plus state "
                           "dict with a ResNet encoder (expected 'encoder.conv1.weight' and "
                           "'decoder.aspp.*'); its first names: " + ", ".join(keys[:5]))
    plus = any(k.startswith("decoder.block1.") for k in keys)
    # An encoder_depth below 5 leaves smp's later ResNet stages in the state dict, unused.
    unused = tuple(f"encoder.layer{k}." for k in range(len(net.stages) + 1, 5))
    plan = Plan("smp DeepLabV3Plus" if plus else "smp DeepLabV3", drop=unused,
                heads=("decoder.", "segmentation_head.", "classification_head."))
    foreign: dict[str, list[str]] = {}
    _add(plan, "backbone.stem", net.stem.weight_map("smp", "encoder."), foreign)
    _resnet_layers(plan, net, "smp", "encoder.", foreign, "smp's ResNet encoders")
    where_aspp = "decoder.aspp.0" if plus else "decoder.aspp"
    for head in net.heads:
        _add(plan, head.attr, head.weight_map("smp", where_aspp), foreign)
    if any(k.startswith("classification_head.") for k in keys):
        plan.notes.append("smp's classification head (aux_params) has no counterpart in a spec: "
                          "pass --backbone-only to import the encoder alone")
    _notes(plan, foreign)
    return plan


def mmseg_plan(net: Network, source: dict[str, Tensor]) -> Plan:
    """Map an MMSegmentation ``EncoderDecoder`` with a ResNet backbone (``ResNetV1c``,
    ``ResNetV1d``, ``ResNet``): its checkpoint's ``state_dict`` (read from a checkpoint file by
    :func:`specc.artifacts.read_weights`). Stage k is ``backbone.layer{k}``; the heads sit under
    ``decode_head`` (``ASPPHead`` or ``DepthwiseSeparableASPPHead``) and ``auxiliary_head``
    (``FCNHead``).

    Raises:
        WeightsError: the source is not such a state dict.
    """
    keys = list(source)
    if not any(k.startswith("backbone.layer1.") for k in keys) or not any(
            k.startswith("decode_head.") for k in keys):
        raise WeightsError("not an MMSegmentation ResNet segmentor's state dict (expected "
                           "'backbone.layer1.*' and 'decode_head.*'); its first names: "
                           + ", ".join(keys[:5]))
    plan = Plan("MMSegmentation EncoderDecoder", heads=("decode_head.", "auxiliary_head."))
    foreign: dict[str, list[str]] = {}
    _add(plan, "backbone.stem", net.stem.weight_map("mmseg", "backbone."), foreign)
    _resnet_layers(plan, net, "mmseg", "backbone.", foreign, "MMSegmentation's ResNets")
    for head in net.heads:
        at = "auxiliary_head" if head.attr == "aux" else "decode_head"
        _add(plan, head.attr, head.weight_map("mmseg", at), foreign)
    _notes(plan, foreign)
    return plan


_PLANS = {"torchvision": torchvision_plan, "timm": timm_plan, "smp": smp_plan,
          "mmseg": mmseg_plan}


# -- converting -----------------------------------------------------------------------------------


def convert(expected: dict[str, torch.Size | list[int]], source: dict[str, Tensor], plan: Plan, *,
            backbone_only: bool = False, what: str = "the source",
            target: str = "the spec") -> Imported:
    """Rename ``source`` onto ``expected`` (our names → shapes) following ``plan``.

    With ``backbone_only`` only the ``backbone.*`` tensors are wanted, and the source's other
    tensors are dropped.

    Raises:
        WeightsError: listing every missing, unexpected and reshaped tensor, with the names on
            both sides.
    """
    wanted = {k: list(v) for k, v in expected.items()
              if not backbone_only or k.startswith("backbone.")}
    state: dict[str, Tensor] = {}
    missing: list[str] = []
    reshaped: list[str] = []
    used: set[str] = set()
    for name, shape in wanted.items():
        prefix, _, leaf = name.rpartition(".")
        theirs = f"{plan.prefixes[prefix]}.{leaf}" if prefix in plan.prefixes else None
        if theirs is None or theirs not in source:
            missing.append(name + (f" (← {theirs})" if theirs else ""))
            continue
        used.add(theirs)
        tensor = source[theirs]
        if list(tensor.shape) != shape:
            reshaped.append(f"{name} ← {theirs} {tuple(tensor.shape)}, expected {tuple(shape)}")
            continue
        state[name] = tensor
    drop = plan.drop + (plan.heads if backbone_only else ())
    unused = [k for k in source if k not in used]
    dropped = [k for k in unused if k.startswith(drop)]
    unexpected = [k for k in unused if not k.startswith(drop)]
    if missing or unexpected or reshaped:
        lines = [f"{what} ({plan.kind}) does not fit {target}:"]
        if missing:
            lines.append(f"  {len(missing)} missing (the spec has them, the source does not): "
                         + shown(missing))
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected (the source has them, the spec does "
                         "not): " + shown(unexpected))
        if reshaped:
            lines.append(f"  {len(reshaped)} of the wrong shape: " + shown(reshaped))
        notes = list(plan.notes)
        notes += _missing_heads_notes(missing)
        lines += [f"  note: {n}" for n in dict.fromkeys(notes)]
        raise WeightsError("\n".join(lines))
    return Imported(state=state, kind=plan.kind, dropped=sorted(dropped),
                    backbone_only=backbone_only)


def _missing_heads_notes(missing: list[str]) -> list[str]:
    """What to do when the source lacks whole heads of the spec. Only the auxiliary head missing
    is a model saved without one (torchvision's ``aux_loss=False``): the spec without it takes
    every trained tensor, where ``--backbone-only`` would drop the trained heads too."""
    heads = sorted({k.split(".")[0] for k in missing if not k.startswith("backbone.")})
    if heads == ["aux"]:
        return ["the source has no auxiliary head (a model made without one, such as "
                "torchvision's aux_loss=False): --set aux=null imports it onto the spec without "
                "the aux head"]
    if heads:
        return [f"the source has nothing for the spec's {', '.join(heads)}: pass "
                "--backbone-only to import the backbone alone"]
    return []


def import_state(comp: Compilation, source: dict[str, Tensor], from_: str, *,
                 backbone_only: bool = False, what: str = "the source") -> Imported:
    """The tensors of a compiled spec's model from ``source``.

    Raises:
        SpeccError: an unknown ``from_``.
        WeightsError: the source is not of that kind, or does not fit.
    """
    if from_ not in _PLANS:
        raise SpeccError(f"--from: expected one of {', '.join(SOURCES)}, found {from_!r}")
    plan = _PLANS[from_](comp.network, source)
    expected = comp.state_shapes
    imported = convert(expected, source, plan, backbone_only=backbone_only, what=what,
                       target=f"spec {comp.spec.name!r}")
    return replace(imported, warnings=tuple(differences(comp.schedule, from_)))


def differences(schedule: Schedule, from_: str) -> list[str]:
    """Where a spec's network departs from the source's in ways the weights' shapes cannot show."""
    notes = []
    if from_ == "torchvision":
        late = [u.path for u in schedule.units
                if u.nominal_stride != 1 and u is not schedule.stage_units(u.stage)[0]]
        if late:
            notes.append(f"the spec strides the last unit of a stage ({', '.join(late)}), "
                         "torchvision the first: the weights fit, the network is not "
                         "torchvision's")
    if from_ == "smp":
        kept = [u.path for u in schedule.units if u.nominal_stride != 1 and u.stride == 1
                and schedule.stage_units(u.stage)[-1].rates != u.rates]
        if kept:
            notes.append("smp dilates every conv of a de-strided stage at the stage's rate "
                         f"(backbone.destrided_rate: new); the spec's {', '.join(kept)} keep "
                         "the previous rate: the weights fit, the network is not smp's")
    if from_ == "timm" and schedule.multi_grid and any(r != 1 for r in schedule.multi_grid):
        notes.append(f"the spec's multi-grid {tuple(schedule.multi_grid)} is not in timm's "
                     "Xception (one rate per block): the weights fit, the features differ "
                     "(--set backbone.multi_grid=null for timm's network)")
    return notes


def save_imported(imported: Imported, out: Path, *, metadata: dict[str, str]) -> None:
    """Write the tensors to ``out`` (``.safetensors``) atomically, with specc's metadata."""
    from safetensors.torch import save

    from specc.fsutil import atomic_write_bytes, reporting_os_errors

    meta = {"specc.contents": BACKBONE if imported.backbone_only else FULL,
            "specc.source_kind": imported.kind, **metadata}
    tensors: dict[str, Tensor] = {}
    storages: set[int] = set()
    for k, v in imported.state.items():
        v = v.detach().to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr()
        tensors[k] = v.clone() if ptr in storages else v  # safetensors refuses shared storage
        storages.add(ptr)
    with reporting_os_errors(out, "cannot write the imported weights"):
        atomic_write_bytes(out, save(tensors, metadata=meta))


# -- file in, file out ----------------------------------------------------------------------------


def import_weights(spec: Path, src: Path, from_: str, out: Path, *,
                   overrides: list[str] | tuple[str, ...] = (),
                   backbone_only: bool = False) -> Imported:
    """Read ``src``, map it onto the spec's tensors and write ``out`` (``.safetensors``).

    Raises:
        SpecError: an invalid spec. WeightsError: an unreadable or ill-fitting source.
        SpeccError: a bad ``--from`` or ``--out``.
    """
    if from_ not in SOURCES:
        raise SpeccError(f"--from: expected one of {', '.join(SOURCES)}, found {from_!r}")
    if out.suffix != ".safetensors":
        raise SpeccError(f"--out: expected a .safetensors file, found {out}")
    doc = load_spec(spec, list(overrides))
    weights = read_weights(src)
    if weights.spec_info or weights.contents:
        raise WeightsError(f"{src}: already specc's weights (written by specc, for "
                           f"{(weights.spec_info or {}).get('name', 'a spec')}), not {from_}'s; "
                           "give it to specc build --weights or specc train --init as it is")
    try:
        imported = import_state(compile_spec(doc), weights.state, from_,
                                backbone_only=backbone_only, what=str(src))
    except WeightsError as err:
        if str(err).startswith(str(src)):
            raise
        raise WeightsError(f"{src}: {err}") from None
    save_imported(imported, out, metadata={
        "specc.spec": doc.spec.name, "specc.architecture_sha256": doc.architecture_sha256,
        "specc.from": from_, "specc.source": Path(src).name})
    return imported


