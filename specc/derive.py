"""Stage 3 — derive: per-unit stride and dilation from ``output_stride`` and ``multi_grid``.

The rule is the DeepLab TensorFlow code's (DeepLabv3 §3.1): walk the units with
``current_stride`` (after the stem) and ``rate = 1``. Once ``current_stride`` equals the output
stride, each unit runs with stride 1 and ``rate`` grows by the unit's stride; before that a unit
runs at rate 1 and multiplies ``current_stride``. The choices public implementations disagree on
(where a repeated unit's stride sits, the rate of the de-strided unit, multi-grid multiplying or
absolute) come from the spec. Nothing here mutates the spec: a new :class:`Schedule` is derived.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from specc.errors import SpecError
from specc.presets import default_stride_placement, expand
from specc.spec import (
    BasicUnit,
    BottleneckUnit,
    ConvUnit,
    InvertedResidualUnit,
    MobileNetV3Unit,
    Spec,
    StageSpec,
    StemSpec,
    TimmStageUnit,
    VGGUnit,
    XceptionUnit,
)

UnitSpec = (BasicUnit | BottleneckUnit | XceptionUnit | InvertedResidualUnit | MobileNetV3Unit
            | ConvUnit | VGGUnit)


def atrous_convs(unit: UnitSpec) -> int:
    """How many 3×3 (possibly dilated) convs a unit has: its multi-grid slots when alone."""
    if isinstance(unit, XceptionUnit):
        return 3
    if isinstance(unit, BasicUnit):
        return 2
    if isinstance(unit, VGGUnit):
        return unit.convs
    return 1


@dataclass(frozen=True)
class ScheduledUnit:
    """One unit of the backbone with its derived stride and rates."""

    stage: str
    name: str
    #: Spec key path of the unit entry this unit came from (for errors and code comments).
    spec_key: str
    unit: UnitSpec
    #: The classification network's stride for this unit (before the output-stride rule).
    nominal_stride: int
    #: The stride it runs with.
    stride: int
    #: The dilation rate of each of its 3×3 convs (multi-grid can make them differ).
    rates: tuple[int, ...]
    #: Input size / size of the unit's input and of its output.
    input_reduction: int
    reduction: int
    #: Set for units of cascaded copies of the last stage (DeepLabv3 §3.2).
    cascade: bool = False

    @property
    def path(self) -> str:
        return f"backbone.{self.stage}.{self.name}"


@dataclass(frozen=True)
class Schedule:
    #: None for a timm encoder (``backbone.timm``), whose stem timm builds.
    stem: StemSpec | None
    stem_stride: int
    units: tuple[ScheduledUnit, ...]
    stages: tuple[str, ...]
    output_stride: int
    #: ASPP rates at the actual output stride.
    aspp_rates: tuple[int, ...]
    stride_placement: str
    multi_grid: tuple[int, ...] | None = None

    def stage_units(self, stage: str) -> list[ScheduledUnit]:
        return [u for u in self.units if u.stage == stage]


def _stem_stride(stem: StemSpec) -> int:
    s = 1
    for conv in stem.convs:
        s *= conv.stride
    return s * (2 if stem.pool == "max" else 1)


def _expand_repeats(stage: StageSpec, key: str, placement: str) -> list[tuple[str, str, UnitSpec]]:
    """(name, spec key, unit with repeat=1) for each unit; a repeated unit's stride goes to one copy."""
    out: list[tuple[str, str, UnitSpec]] = []
    for i, entry in enumerate(stage.units):
        n = entry.repeat
        if entry.name and n > 1:
            raise SpecError(f"expected repeat: 1 for a named unit (a name is one unit's), found "
                            f"repeat: {n}; drop the name or the repeat",
                            path=f"{key}.units[{i}].name")
        for k in range(n):
            placed = (k == 0) if placement == "first" else (k == n - 1)
            stride = entry.stride if placed else 1
            name = entry.name or f"unit{len(out) + 1}"
            unit = entry.model_copy(update={"stride": stride, "repeat": 1, "name": name})
            out.append((name, f"{key}.units[{i}]", unit))
    names = [n for n, _, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecError(f"expected unique unit names in stage {stage.name!r}, found "
                        f"{', '.join(dup)} more than once", path=f"{key}.units")
    return out


def _cascade_name(last: str, i: int, taken: set[str]) -> str:
    m = re.fullmatch(r"(.*?)(\d+)", last)
    name = f"{m.group(1)}{int(m.group(2)) + i}" if m else f"{last}_cascade{i}"
    return name if name not in taken else f"{last}_cascade{i}"


Plan = list[tuple[str, str, str, UnitSpec, bool]]


def _cascade(plan: Plan, last: StageSpec, stage_names: list[str], copies: int,
             placement: str) -> Plan:
    """Append ``copies`` copies of the last stage, each one stride-2 step deeper (v3 §3.2).

    Where the step sits follows the stride placement. 'first': it opens each copy (its first
    unit has stride 2). 'last' (the paper's ResNet): it closes the stage *before* each copy —
    "the last convolution contains stride 2 except the one in the last block" — so the last stage
    and every copy but the final one end with a doubled stride, and the final copy keeps the
    last stage's own strides. With the paper's placement, block4–block7 then run at rates 2, 4,
    8, 16 at output stride 16 (Fig. 3b), and without atrous convolution block7 reaches 256.
    """
    template = _expand_repeats(last, "backbone.cascade", placement)
    n = len(template)

    def stepped(j: int, unit: UnitSpec) -> UnitSpec:
        if placement == "first":
            return unit.model_copy(update={"stride": 2 if j == 0 else 1})
        return unit.model_copy(update={"stride": unit.stride * 2}) if j == n - 1 else unit

    out = list(plan)
    if placement == "last":
        own = [i for i, p in enumerate(out) if p[0] == last.name]
        for j, i in enumerate(own):
            stage, name, key, unit, is_copy = out[i]
            out[i] = (stage, name, key, stepped(j, unit), is_copy)
    for c in range(1, copies + 1):
        copy_name = _cascade_name(last.name, c, set(stage_names))
        stage_names.append(copy_name)
        final = c == copies
        for j, (name, _key, unit) in enumerate(template):
            if placement == "first" or not final:
                unit = stepped(j, unit)
            out.append((copy_name, name, "backbone.cascade", unit, True))
    return out


def derive(spec: Spec) -> Schedule:
    """The stride/dilation schedule of ``spec``'s backbone and the effective ASPP rates.

    Raises:
        SpecError: the output stride cannot be reached exactly, multi_grid does not match the
            last stage, or the ASPP rates do not scale to the output stride.
    """
    bb = spec.backbone
    if bb.timm is not None:
        return derive_timm(spec)
    placement = default_stride_placement(bb)
    stem, stages = expand(bb)
    if not stages:
        raise SpecError("expected at least one stage, found an empty list",
                        path="backbone.stages")
    key_of = (lambda i: f"backbone.stages[{i}]") if bb.preset is None else (lambda i: "backbone.preset")
    plan: Plan = []
    stage_names: list[str] = []
    for i, stage in enumerate(stages):
        if stage.name in stage_names:
            raise SpecError(f"stage names must be unique; {stage.name!r} appears twice",
                            path=f"{key_of(i)}.name")
        stage_names.append(stage.name)
        for name, key, unit in _expand_repeats(stage, key_of(i), placement):
            plan.append((stage.name, name, key if bb.preset is None else "backbone.preset", unit, False))

    last = stages[-1]
    if bb.cascade:
        plan = _cascade(plan, last, stage_names, bb.cascade, placement)

    # Multi-grid slots: the units of the last stage, or the 3×3 convs of its single unit.
    last_units = [p for p in plan if p[0] == last.name]
    mg = tuple(bb.multi_grid) if bb.multi_grid is not None else None
    if mg is not None:
        slots = len(last_units) if len(last_units) > 1 else atrous_convs(last_units[0][3])
        if len(mg) != slots:
            what = (f"{len(last_units)} units" if len(last_units) > 1
                    else f"one unit with {slots} 3×3 convs")
            raise SpecError(f"expected {slots} rates (the last stage {last.name!r} has {what}), "
                            f"found {len(mg)}: {list(mg)}", path="backbone.multi_grid")

    os_target = bb.output_stride
    stem_stride = _stem_stride(stem)
    current, rate = stem_stride, 1
    reachable = [stem_stride]
    for p in plan:
        reachable.append(reachable[-1] * p[3].stride)
    reachable = sorted(set(reachable))
    if os_target not in reachable:
        values = ", ".join(map(str, reachable[:-1])) + f" or {reachable[-1]}" \
            if len(reachable) > 1 else str(reachable[0])
        raise SpecError(f"expected an output stride this backbone reaches ({values}), found "
                        f"{os_target}", path="backbone.output_stride")

    units: list[ScheduledUnit] = []
    mg_stage_index: dict[str, int] = {}
    for stage_name, name, key, unit, is_copy in plan:
        s = unit.stride
        input_stride = current
        if current == os_target:
            unit_rate = rate * s if bb.destrided_rate == "new" else rate
            rate *= s
            stride = 1
        else:
            unit_rate = 1
            stride = s
            current *= s
        n_convs = atrous_convs(unit)
        rates = (unit_rate,) * n_convs
        in_mg_stage = mg is not None and (stage_name == last.name or is_copy)
        if in_mg_stage:
            j = mg_stage_index.get(stage_name, 0)
            mg_stage_index[stage_name] = j + 1
            # One rate per unit of a multi-unit stage, one per 3×3 conv of a single unit.
            factor = (mg[j],) * n_convs if len(last_units) > 1 else mg
            if bb.multi_grid_mode == "multiply":
                rates = tuple(unit_rate * f for f in factor)
            else:
                rates = tuple(factor)
        units.append(ScheduledUnit(stage=stage_name, name=name, spec_key=key, unit=unit,
                                   nominal_stride=s, stride=stride, rates=rates,
                                   input_reduction=input_stride, reduction=current,
                                   cascade=is_copy))

    aspp_rates = _aspp_rates(spec, os_target)

    return Schedule(stem=stem, stem_stride=stem_stride, units=tuple(units),
                    stages=tuple(stage_names), output_stride=os_target, aspp_rates=aspp_rates,
                    stride_placement=placement, multi_grid=mg)


def derive_timm(spec: Spec) -> Schedule:
    """The schedule of a timm encoder: one unit per feature it hands out (stage0, stage1, ...),
    with the strides and dilation timm's output-stride support gives it.

    Raises:
        SpecError: timm is missing, the name is no timm model, or the ASPP rates do not scale.
    """
    from specc.timm_encoder import KEY, encoder_stages

    bb = spec.backbone
    stages = encoder_stages(bb.timm, bb.output_stride, tuple(spec.input.size))
    units = []
    previous, previous_nominal = 1, 1
    for i, st in enumerate(stages):
        unit = TimmStageUnit(name=st.module.replace(".", "_"), module=st.module)
        rate = st.nominal_reduction // st.reduction
        units.append(ScheduledUnit(
            stage=f"stage{i}", name=unit.name, spec_key=KEY, unit=unit,
            nominal_stride=st.nominal_reduction // previous_nominal,
            stride=st.reduction // previous, rates=(rate,), input_reduction=previous,
            reduction=st.reduction))
        previous, previous_nominal = st.reduction, st.nominal_reduction
    return Schedule(stem=None, stem_stride=1, units=tuple(units),
                    stages=tuple(u.stage for u in units), output_stride=bb.output_stride,
                    aspp_rates=_aspp_rates(spec, bb.output_stride), stride_placement="timm")


def _aspp_rates(spec: Spec, os_target: int) -> tuple[int, ...]:
    """The ASPP rates at the output stride (scaled when written for another one).

    Raises:
        SpecError: a rate that does not scale to a whole number ≥ 1.
    """
    aspp = spec.aspp
    if aspp is None:
        aspp_rates: tuple[int, ...] = ()
    elif aspp.rates_output_stride is None:
        aspp_rates = tuple(aspp.rates)
    else:
        scaled = []
        for i, r in enumerate(aspp.rates):
            value = r * aspp.rates_output_stride / os_target
            if value != int(value) or value < 1:
                raise SpecError(
                    f"expected a rate that scales to a whole number ≥ 1 at output stride "
                    f"{os_target}, found {r}: written for output stride "
                    f"{aspp.rates_output_stride}, it scales to {value:g}",
                    path=f"aspp.rates[{i}]")
            scaled.append(int(value))
        aspp_rates = tuple(scaled)
    return aspp_rates
