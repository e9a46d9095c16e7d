"""Starting a run from another model's weights, and which parameters learn how fast.

``specc train SPEC --init WEIGHTS`` accepts weights of the same network, of a network with another
``num_classes`` (fine-tuning to a new label set), a backbone-only file (``specc import-weights
--backbone-only``), or a torchvision state dict (a DeepLabV3, or an ImageNet ResNet) read with the
names ``specc import-weights --from torchvision`` maps. Every tensor that fits is loaded. Tensors
whose shape follows the class count (the classifier convs of the main and the auxiliary head)
and that do not fit start from the model's own initialization, and the run says which. Anything
else that does not fit is refused: a network that differs is not fine-tuned by accident.

The classifier tensors are found without naming any head: they are the tensors whose shape
changes when the generated model is built for one more class (:func:`class_tensors`).

:func:`lr_groups` makes the optimizer's parameter groups: the two weight-decay groups of the
papers' protocol, each split by the learning-rate multiplier of ``train.lr_mult``; and
:class:`LrGroups` holds the backbone's parameters, which ``train.freeze_backbone_iters`` keeps
from updating at the start of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from specc.api import Compilation
from specc.artifacts import (
    BACKBONE,
    Weights,
    aux_note,
    describe_mismatches,
    mismatches,
    shown,
    with_batch_counts,
)
from specc.compile import load_source
from specc.errors import TrainingError, WeightsError
from specc.importers import torchvision_plan

#: Top-level module of every backbone tensor.
BACKBONE_PREFIX = "backbone."
#: Top-level module of the auxiliary head's tensors (a training-only head).
AUX_PREFIX = "aux."
#: The ``train.lr_mult`` key meaning every module after the backbone.
HEADS = "heads"


@dataclass(frozen=True)
class InitReport:
    """What ``--init`` loaded, and what starts from the model's own initialization."""

    file: str
    #: Whose names the file used: ``specc`` or the recognized library model.
    kind: str
    loaded: int
    #: Classifier tensors of another class count, freshly initialized.
    fresh_classes: list[str] = field(default_factory=list)
    #: The class count the weights were trained for, when their classifier says so.
    source_classes: int | None = None
    #: Tensors the file does not hold at all (a backbone-only file: the heads).
    fresh_heads: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The record kept in the run folder (``run.json``)."""
        return {"file": self.file, "kind": self.kind, "loaded": self.loaded,
                "fresh_classifier": self.fresh_classes, "source_classes": self.source_classes,
                "fresh_heads": self.fresh_heads}

    def lines(self, num_classes: int) -> list[str]:
        """What the run prints about its start."""
        out = [f"initialized from {self.file} ({self.kind} names): {self.loaded} tensors loaded"]
        if self.fresh_classes:
            was = f" instead of {self.source_classes}" if self.source_classes else ""
            out.append(f"  freshly initialized for {num_classes} classes{was}: "
                       + ", ".join(self.fresh_classes))
        if self.fresh_heads:
            out.append(f"  not in the file, starting fresh: {len(self.fresh_heads)} head tensors ("
                       + shown(self.fresh_heads, 6) + ")")
        return out


def class_tensors(comp: Compilation) -> set[str]:
    """The state-dict names whose shape follows ``num_classes``: the model built for one more
    class (on the meta device, no memory) differs from the spec's exactly there."""
    with torch.device("meta"):
        spec_model = load_source(comp.source).build()
        other = type(spec_model)(num_classes=comp.spec.num_classes + 1)
    more = {k: v.shape for k, v in other.state_dict().items()}
    return {k for k, v in spec_model.state_dict().items() if more.get(k) != v.shape}


def in_our_names(weights: Weights, comp: Compilation, expected: set[str]
                 ) -> tuple[dict[str, torch.Tensor], str, bool]:
    """The file's tensors under the model's names; whose names they were; whether the file
    holds a backbone only. specc's own files are taken as they are, other state dicts are mapped
    with torchvision's names (as ``specc import-weights --from torchvision`` does).

    Raises:
        WeightsError: neither specc's names nor a torchvision ResNet or DeepLabV3, or tensors of
            the file that have no place in the model.
    """
    state = weights.state
    ours = sum(k in expected for k in state)
    if weights.spec_info or weights.contents or 2 * ours > len(state):
        return dict(state), "specc", weights.contents == BACKBONE
    try:
        plan = torchvision_plan(comp.network, state)
    except WeightsError as err:
        raise WeightsError(f"{weights.file}: not this model's tensor names, and {err}"
                           ) from None
    renamed: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name in expected:
        prefix, _, leaf = name.rpartition(".")
        theirs = f"{plan.prefixes[prefix]}.{leaf}" if prefix in plan.prefixes else None
        if theirs is not None and theirs in state:
            renamed[name] = state[theirs]
            used.add(theirs)
    unused = [k for k in state if k not in used and not k.startswith(plan.drop)]
    if unused:
        raise WeightsError(f"{weights.file} ({plan.kind}): {len(unused)} tensors have no place "
                           "in this model: " + shown(unused)
                           + "".join(f"\n  note: {n}" for n in plan.notes))
    backbone_only = not plan.heads  # an ImageNet classifier: its backbone only
    return renamed, plan.kind, backbone_only


def fit_weights(model: nn.Module, comp: Compilation, weights: Weights) -> InitReport:
    """Load every tensor of ``weights`` that fits ``model``; classifier tensors of another class
    count (and, from a backbone-only file, the heads) keep the model's initialization.

    Raises:
        WeightsError: any other tensor missing, unexpected or of another shape, listed.
    """
    own = model.state_dict()
    expected = {k: list(v.shape) for k, v in own.items()}
    state, kind, backbone_only = in_our_names(weights, comp, set(expected))
    state = with_batch_counts(state, own)
    m = mismatches(expected, {k: list(v.shape) for k, v in state.items()})
    classes = class_tensors(comp)
    fresh_classes = sorted(k for k, _, _ in m["reshaped"] if k in classes)
    # a file without an auxiliary head (a model made without one): it is a training-only head,
    # so it starts fresh as the heads of a backbone-only file do
    no_aux = not any(k.startswith(AUX_PREFIX) for k in state)
    fresh_heads = [k for k in m["missing"]
                   if (backbone_only and not k.startswith(BACKBONE_PREFIX))
                   or (no_aux and k.startswith(AUX_PREFIX))]
    refused = {"missing": [k for k in m["missing"] if k not in fresh_heads],
               "unexpected": m["unexpected"],
               "reshaped": [r for r in m["reshaped"] if r[0] not in classes]}
    if any(refused.values()) or not state:
        hint = ("\n  (only the classifier layers may differ, for another num_classes: "
                + ", ".join(sorted(classes)) + ")")
        note = aux_note(refused)
        raise WeightsError(f"{weights.file}: the weights do not fit this model:\n"
                           + (describe_mismatches(refused) or "  the file holds no tensors")
                           + (f"\n  note: {note}" if note else hint))
    loadable = {k: v for k, v in state.items() if k not in fresh_classes}
    model.load_state_dict(loadable, strict=False)
    source_classes = next((state[k].shape[0] for k in fresh_classes
                           if state[k].ndim and k.endswith("weight")), None)
    return InitReport(file=str(weights.file), kind=kind, loaded=len(loadable),
                      fresh_classes=fresh_classes, source_classes=source_classes,
                      fresh_heads=fresh_heads)


# -- learning rates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LrGroups:
    """The optimizer's parameter groups with their learning-rate multipliers."""

    groups: list[dict[str, Any]]
    #: ``lr_mult`` of each group, in order (the schedule's lr times this).
    multipliers: list[float]
    #: The backbone's parameters (held still while the backbone is frozen).
    backbone: list[nn.Parameter]
    #: What the run records: per group its multiplier, weight decay, modules and tensor count.
    record: list[dict[str, Any]]


def lr_multiplier(name: str, lr_mult: dict[str, float]) -> float:
    """The multiplier of parameter ``name``: the most specific key of ``lr_mult`` that names a
    module holding it (``heads`` is every top-level module but the backbone), else 1."""
    best, depth = 1.0, -1.0
    for key, mult in lr_mult.items():
        if key == HEADS:
            hit, key_depth = not name.startswith(BACKBONE_PREFIX), 0.5
        else:
            hit, key_depth = name.startswith(key + "."), float(key.count(".") + 1)
        if hit and key_depth > depth:
            best, depth = mult, key_depth
    return best


def check_lr_mult(model: nn.Module, lr_mult: dict[str, float]) -> None:
    """Refuse a ``train.lr_mult`` key that names no module of the model.

    Raises:
        TrainingError: naming the key and the model's top-level modules.
    """
    names = [n for n, _ in model.named_parameters()]
    tops = sorted({n.split(".")[0] for n in names})
    for key in lr_mult:
        if key != HEADS and not any(n.startswith(key + ".") for n in names):
            raise TrainingError(
                f"train.lr_mult.{key}: expected a module of the model ({HEADS}, "
                f"{', '.join(tops)}, or a path under one such as backbone.<stage>), found "
                f"{key!r}")


def lr_groups(model: nn.Module, weight_decay: float, lr_mult: dict[str, float]) -> LrGroups:
    """SGD groups: weight decay on conv/linear weights only (as ``train.param_groups``), each
    split by learning-rate multiplier. With no multipliers: the two groups, both at 1.

    Raises:
        TrainingError: a ``train.lr_mult`` key that names no module.
    """
    check_lr_mult(model, lr_mult)
    keyed: dict[tuple[float, bool], list[tuple[str, nn.Parameter]]] = {}
    if not lr_mult:  # the papers' two groups, even when one of them is empty
        keyed = {(1.0, True): [], (1.0, False): []}
    for with_decay in (True, False):
        for name, p in model.named_parameters():
            if p.requires_grad and (p.ndim > 1) == with_decay:
                keyed.setdefault((lr_multiplier(name, lr_mult), with_decay), []).append((name, p))
    groups, mults, record = [], [], []
    for (mult, with_decay), members in keyed.items():
        decay = weight_decay if with_decay else 0.0
        groups.append({"params": [p for _, p in members], "weight_decay": decay})
        mults.append(mult)
        record.append({"lr_mult": mult, "weight_decay": decay, "tensors": len(members),
                       "modules": sorted({n.split(".")[0] for n, _ in members})})
    backbone = [p for n, p in model.named_parameters()
                if p.requires_grad and n.startswith(BACKBONE_PREFIX)]
    return LrGroups(groups=groups, multipliers=mults, backbone=backbone, record=record)
