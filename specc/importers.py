"""``specc import-weights``: foreign state dicts (torchvision, timm) renamed onto a spec's tensors.

Nothing is ever downloaded: the source is a file the user already has (``torch.save``'d state dict
or ``.safetensors``). The renaming is derived from the spec's module plan
(``graph.graph["modules"]``), not written out for one spec: the k-th stage of a ResNet preset is
torchvision's ``layer{k}``, unit j of it ``layer{k}.{j}``; the n-th Xception unit is timm's
``blocks.{n}``. Every tensor of the spec must come from the source and every tensor of the source
must land somewhere, with the same shape, except the classification head of an ImageNet network
(``fc``, ``head.fc``), which is dropped.

``--backbone-only`` writes just the ``backbone.*`` tensors (the heads stay at their
initialisation); such a file says so in its metadata (``specc.contents: backbone``). It cannot go
to ``specc build --weights``, which wants the whole model; :func:`load_partial` loads it into a
fresh model for training and returns what it left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specc.errors import SpeccError, WeightsError
from specc.weights import mismatches, read_state_dict

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from specc.api import Built
    from specc.derive import Schedule

#: Values of ``--from``.
SOURCES = ("torchvision", "timm")

#: What ``specc.contents`` in a written file's metadata says.
FULL, BACKBONE = "full", "backbone"

_LIMIT = 20  # names shown per list in an error


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


def _units(modules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in modules if m["kind"] in ("bottleneck", "basic", "xception",
                                                "inverted_residual")]


def _conv_bn(plan: Plan, ours: str, conv: str, bn: str) -> None:
    plan.prefixes[f"{ours}.conv"] = conv
    plan.prefixes[f"{ours}.bn"] = bn


def torchvision_plan(modules: list[dict[str, Any]], stages: list[str], source: dict[str, Tensor]
                     ) -> Plan:
    """Map a torchvision ResNet: a DeepLabV3 segmentation model, or an ImageNet classifier.

    Raises:
        WeightsError: the source is neither.
    """
    keys = list(source)
    if any(k.startswith("backbone.") for k in keys):
        plan = Plan("torchvision DeepLabV3", heads=("classifier.", "aux_classifier."))
        pre = "backbone."
    elif "conv1.weight" in source and any(k.startswith("layer1.") for k in keys):
        plan, pre = Plan("torchvision ResNet (ImageNet)", drop=("fc.",)), ""
    else:
        raise WeightsError("not a torchvision ResNet or DeepLabV3 state dict (expected "
                           "'conv1.weight' and 'layer1.*', or 'backbone.*'); its first names: "
                           + ", ".join(keys[:5]))
    stem = next(m for m in modules if m["kind"] == "stem")
    if len(stem["convs"]) == 1:
        _conv_bn(plan, "backbone.stem.0", f"{pre}conv1", f"{pre}bn1")
    else:
        plan.notes.append(f"torchvision ResNets have one 7×7 stem conv; the spec's stem has "
                          f"{len(stem['convs'])}")
    layer = {stage: f"{pre}layer{i + 1}" for i, stage in enumerate(stages)}
    if len(stages) > 4:
        plan.notes.append(f"torchvision ResNets have 4 stages; the spec's {', '.join(stages[4:])} "
                          "have no counterpart")
    foreign: dict[str, list[str]] = {}
    for m in _units(modules):
        ours, theirs = f"backbone.{m['stage']}.{m['index']}", f"{layer[m['stage']]}.{m['index']}"
        if m["kind"] not in ("bottleneck", "basic"):
            foreign.setdefault(m["kind"], []).append(ours)
            continue
        for k in range(1, 4 if m["kind"] == "bottleneck" else 3):
            _conv_bn(plan, f"{ours}.conv{k}", f"{theirs}.conv{k}", f"{theirs}.bn{k}")
        if m["shortcut"] == "conv":
            _conv_bn(plan, f"{ours}.shortcut", f"{theirs}.downsample.0", f"{theirs}.downsample.1")
    _note_foreign(plan, "torchvision's ResNet", foreign)
    if not pre:
        return plan
    # torchvision's DeepLabHead: classifier = [ASPP, 3×3 conv, BN, ReLU, 1×1 conv]; FCNHead aux.
    for m in modules:
        if m["kind"] == "aspp":
            if m["separable"]:
                plan.notes.append("torchvision's ASPP has plain 3×3 convs, the spec's are "
                                  "separable")
                continue
            n = len(m["rates"])
            for i in range(n + 1):
                _conv_bn(plan, f"aspp.convs.{i}", f"classifier.0.convs.{i}.0",
                         f"classifier.0.convs.{i}.1")
            if m["pooling"] != "none":
                _conv_bn(plan, f"aspp.convs.{n + 1}.conv", f"classifier.0.convs.{n + 1}.1",
                         f"classifier.0.convs.{n + 1}.2")
            _conv_bn(plan, "aspp.project", "classifier.0.project.0", "classifier.0.project.1")
        elif m["kind"] == "extra":
            _conv_bn(plan, "extra", "classifier.1", "classifier.2")
        elif m["kind"] == "classifier":
            plan.prefixes["classifier"] = "classifier.4"
        elif m["kind"] == "aux":
            _conv_bn(plan, "aux.conv", "aux_classifier.0", "aux_classifier.1")
            plan.prefixes["aux.classifier"] = "aux_classifier.4"
        elif m["kind"] == "decoder":
            plan.notes.append("torchvision's DeepLabV3 has no decoder (DeepLabv3+)")
    return plan


def timm_plan(modules: list[dict[str, Any]], stages: list[str], source: dict[str, Tensor]) -> Plan:
    """Map timm's aligned Xception (``xception41/65/71``); its classifier ``head.*`` is dropped.

    Raises:
        WeightsError: the source is not one (a pre-activation ``xception*p`` included).
    """
    del stages  # timm numbers the blocks through the whole network
    if "stem.0.conv.weight" not in source or not any(k.startswith("blocks.") for k in source):
        raise WeightsError("not a timm aligned-Xception state dict (expected 'stem.0.conv.weight' "
                           "and 'blocks.*'); its first names: " + ", ".join(list(source)[:5]))
    if any(".norm." in k for k in source):
        raise WeightsError("a pre-activation Xception (timm's xception41p/65p): its units "
                           "normalize before each conv, which specc's Xception units do not")
    plan = Plan("timm aligned Xception", drop=("head.",))
    stem = next(m for m in modules if m["kind"] == "stem")
    for i in range(len(stem["convs"])):
        _conv_bn(plan, f"backbone.stem.{i}", f"stem.{i}.conv", f"stem.{i}.bn")
    foreign: dict[str, list[str]] = {}
    for n, m in enumerate(_units(modules)):
        ours, theirs = f"backbone.{m['stage']}.{m['index']}", f"blocks.{n}"
        if m["kind"] != "xception":
            foreign.setdefault(m["kind"], []).append(ours)
            continue
        for k in range(1, 4):
            sep, conv = f"{ours}.sep{k}", f"{theirs}.stack.conv{k}"
            plan.prefixes.update({f"{sep}.depthwise": f"{conv}.conv_dw",
                                  f"{sep}.bn_depthwise": f"{conv}.bn_dw",
                                  f"{sep}.pointwise": f"{conv}.conv_pw",
                                  f"{sep}.bn_pointwise": f"{conv}.bn_pw"})
        if m["shortcut"] == "conv":
            _conv_bn(plan, f"{ours}.shortcut", f"{theirs}.shortcut.conv", f"{theirs}.shortcut.bn")
    _note_foreign(plan, "timm's aligned Xception", foreign)
    return plan


def _note_foreign(plan: Plan, source: str, foreign: dict[str, list[str]]) -> None:
    for kind, units in foreign.items():
        plan.notes.append(f"{source} has no {kind} units; the spec has {len(units)} "
                          f"({units[0]}{', …' if len(units) > 1 else ''})")


_PLANS = {"torchvision": torchvision_plan, "timm": timm_plan}


# -- converting -----------------------------------------------------------------------------------


def _shown(items: list[str]) -> str:
    """Up to _LIMIT names; a longer list first says how many fall in each top-level module."""
    if len(items) <= _LIMIT:
        return ", ".join(items)
    parts: dict[str, int] = {}
    for item in items:
        names = item.split(".")
        part = ".".join(names[:2] if names[0] == "backbone" else names[:1])
        parts[part] = parts.get(part, 0) + 1
    where = ", ".join(f"{p} {n}" for p, n in parts.items())
    return f"[{where}] " + ", ".join(items[:_LIMIT]) + f", … ({len(items) - _LIMIT} more)"


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
                         + _shown(missing))
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected (the source has them, the spec does "
                         "not): " + _shown(unexpected))
        if reshaped:
            lines.append(f"  {len(reshaped)} of the wrong shape: " + _shown(reshaped))
        notes = list(plan.notes)
        heads = sorted({k.split(".")[0] for k in missing if not k.startswith("backbone.")})
        if heads:
            notes.append(f"the source has nothing for the spec's {', '.join(heads)}: pass "
                         "--backbone-only to import the backbone alone")
        lines += [f"  note: {n}" for n in dict.fromkeys(notes)]
        raise WeightsError("\n".join(lines))
    return Imported(state=state, kind=plan.kind, dropped=sorted(dropped),
                    backbone_only=backbone_only)


def import_state(built: Built, source: dict[str, Tensor], from_: str, *,
                 backbone_only: bool = False, what: str = "the source") -> Imported:
    """The tensors of ``built`` (a :class:`specc.api.Built` with its module) from ``source``.

    Raises:
        SpeccError: an unknown ``from_``.
        WeightsError: the source is not of that kind, or does not fit.
    """
    if from_ not in _PLANS:
        raise SpeccError(f"--from: expected one of {', '.join(SOURCES)}, found {from_!r}")
    g = built.graph
    plan = _PLANS[from_](g.graph["modules"], list(g.graph["stages"]), source)
    expected = {k: v.shape for k, v in built.module.state_dict().items()}
    imported = convert(expected, source, plan, backbone_only=backbone_only, what=what,
                       target=f"spec {built.doc.spec.name!r}")
    return replace(imported, warnings=tuple(differences(built.schedule, from_)))


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
    if from_ == "timm" and schedule.multi_grid and any(r != 1 for r in schedule.multi_grid):
        notes.append(f"the spec's multi-grid {tuple(schedule.multi_grid)} is not in timm's "
                     "Xception (one rate per block): the weights fit, the features differ "
                     "(--set backbone.multi_grid=null for timm's network)")
    return notes


def save_imported(imported: Imported, out: Path, *, metadata: dict[str, str]) -> None:
    """Write the tensors to ``out`` (``.safetensors``) atomically, with specc's metadata."""
    from safetensors.torch import save

    from specc.fsutil import atomic_write_bytes

    meta = {"specc.contents": BACKBONE if imported.backbone_only else FULL,
            "specc.source_kind": imported.kind, **metadata}
    tensors: dict[str, Tensor] = {}
    storages: set[int] = set()
    for k, v in imported.state.items():
        v = v.detach().to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr()
        tensors[k] = v.clone() if ptr in storages else v  # safetensors refuses shared storage
        storages.add(ptr)
    atomic_write_bytes(out, save(tensors, metadata=meta))


def contents(path: str | Path) -> str | None:
    """``"full"`` or ``"backbone"`` for a file this module wrote; None for any other file."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return (f.metadata() or {}).get("specc.contents")
    except (SafetensorError, OSError):
        return None


def load_partial(module: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Load a partial state dict (e.g. backbone-only) into ``module``; the rest keeps its init.

    Every tensor of ``state`` must exist in ``module`` with the same shape.

    Returns:
        The sorted state-dict names of ``module`` that ``state`` did not fill.

    Raises:
        WeightsError: ``state`` has names the module lacks, shapes that differ, or nothing at all.
    """
    expected = {k: list(v.shape) for k, v in module.state_dict().items()}
    m = mismatches(expected, {k: list(v.shape) for k, v in state.items()})
    if m["unexpected"] or m["reshaped"] or not state:
        parts = []
        if not state:
            parts.append("  the file holds no tensors")
        if m["unexpected"]:
            parts.append(f"  {len(m['unexpected'])} unexpected: " + _shown(m["unexpected"]))
        if m["reshaped"]:
            parts.append(f"  {len(m['reshaped'])} of the wrong shape: " + _shown(
                [f"{k} {tuple(a)}, expected {tuple(b)}" for k, a, b in m["reshaped"]]))
        raise WeightsError("the partial weights do not fit this model:\n" + "\n".join(parts))
    module.load_state_dict(state, strict=False)
    return m["missing"]


# -- file in, file out ----------------------------------------------------------------------------


def import_weights(spec: Path, src: Path, from_: str, out: Path, *,
                   overrides: list[str] | tuple[str, ...] = (),
                   backbone_only: bool = False) -> Imported:
    """Read ``src``, map it onto the spec's tensors and write ``out`` (``.safetensors``).

    Raises:
        SpecError: an invalid spec. WeightsError: an unreadable or ill-fitting source.
        SpeccError: a bad ``--from`` or ``--out``.
    """
    from specc.api import build, load_spec

    if from_ not in SOURCES:
        raise SpeccError(f"--from: expected one of {', '.join(SOURCES)}, found {from_!r}")
    if out.suffix != ".safetensors":
        raise SpeccError(f"--out: expected a .safetensors file, found {out}")
    doc = load_spec(spec, list(overrides))
    source = read_state_dict(src)
    import torch

    with torch.device("meta"):  # only the names and shapes are needed: skip initialising
        built = build(doc)
    imported = import_state(built, source, from_, backbone_only=backbone_only, what=str(src))
    save_imported(imported, out, metadata={
        "specc.spec": doc.spec.name, "specc.architecture_sha256": doc.architecture_sha256,
        "specc.from": from_, "specc.source": Path(src).name})
    return imported



def shown(items: list[str]) -> str:
    """Names as an error or a report lists them: up to 20, a longer list grouped by module."""
    return _shown(items)
