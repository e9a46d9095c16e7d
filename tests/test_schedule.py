"""The output-stride rule (specc.derive) against the papers.

Two kinds of check: explicit tables of what DeepLabv3 / DeepLabv3+ and torchvision state
(docs/deeplab.md: "The stride rule", "Multi-grid", "Cascade", "Where implementations disagree"), and an
independent re-implementation of the TensorFlow rule, written from that text and the
papers' layer tables (not from specc.presets), compared with derive() for every combination of
backbone, output stride, multi-grid and policy.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from specc.derive import Schedule, derive
from specc.errors import SpecError
from specc.spec import Spec

# --------------------------------------------------------------------------------------------
# Helpers


def spec(preset: str = "resnet101", **backbone: Any) -> Spec:
    aspp = backbone.pop("aspp", {})
    return Spec.model_validate({"name": "m", "num_classes": 21,
                                "backbone": {"preset": preset, **backbone}, "aspp": aspp})


def rates(schedule: Schedule, stage: str) -> list[tuple[int, ...]]:
    return [u.rates for u in schedule.stage_units(stage)]


def flat_rates(schedule: Schedule, stage: str) -> list[int]:
    """The rate of each unit of a stage whose units have one 3×3 conv (or equal rates)."""
    out = []
    for r in rates(schedule, stage):
        assert len(set(r)) == 1, r
        out.append(r[0])
    return out


def strides(schedule: Schedule, stage: str) -> list[int]:
    return [u.stride for u in schedule.stage_units(stage)]


def error_of(s: Spec) -> str:
    with pytest.raises(SpecError) as info:
        derive(s)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# The papers' statements, as tables


def test_os16_multi_grid_124_gives_block4_rates_2_4_8():
    """v3 §3.2: "at OS 16 with (1, 2, 4) the rates are 2·(1, 2, 4) = (2, 4, 8)"."""
    s = derive(spec(stem="deep", stride_placement="last", output_stride=16, multi_grid=[1, 2, 4]))
    assert rates(s, "block4") == [(2,), (4,), (8,)]
    assert flat_rates(s, "block3") == [1] * 23  # atrous only after block3
    # block3's strided last unit runs with stride 1 at the old rate; everything before is plain.
    assert strides(s, "block1") == [1, 1, 2]
    assert strides(s, "block2") == [1, 1, 1, 2]
    assert strides(s, "block3") == [1] * 23
    assert [u.nominal_stride for u in s.stage_units("block3")][-1] == 2
    assert [u.reduction for u in s.units][-1] == 16
    assert s.stem_stride == 4


def test_os8_block3_at_2_and_block4_at_4_times_multi_grid():
    """v3 §3.2: "At OS 8, block3 runs at rate 2 and block4 at 4·MG"."""
    s = derive(spec(stride_placement="last", output_stride=8, multi_grid=[1, 2, 4]))
    assert flat_rates(s, "block3") == [2] * 23
    assert rates(s, "block4") == [(4,), (8,), (16,)]
    # block2's strided unit is the de-strided one: stride 1 at the previous rate.
    assert strides(s, "block2") == [1, 1, 1, 1]
    assert flat_rates(s, "block2") == [1, 1, 1, 1]
    assert {u.reduction for u in s.units if u.stage != "block1"} == {8}


def test_shipped_tf_specs_follow_the_paper(load):
    s16 = derive(load("specs/deeplabv3_resnet101.yaml").spec)
    s8 = derive(load("specs/deeplabv3_resnet101_os8.yaml").spec)
    assert rates(s16, "block4") == [(2,), (4,), (8,)]
    assert rates(s8, "block4") == [(4,), (8,), (16,)]
    assert flat_rates(s8, "block3") == [2] * 23
    assert s16.aspp_rates == (6, 12, 18)
    assert s8.aspp_rates == (12, 24, 36)


def test_output_stride_32_has_no_dilation():
    for preset in ("resnet50", "xception65", "mobilenetv2"):
        s = derive(spec(preset, output_stride=32))
        assert all(r == 1 for u in s.units for r in u.rates), preset
        assert all(u.stride == u.nominal_stride for u in s.units), preset
        assert s.units[-1].reduction == 32


def test_output_stride_32_keeps_multi_grid_as_unit_rates():
    """TF: the unit rates multiply rate 1 when nothing is de-strided."""
    s = derive(spec(output_stride=32, multi_grid=[1, 2, 4]))
    assert rates(s, "block4") == [(1,), (2,), (4,)]


@pytest.mark.parametrize("placement, expected_block4", [
    # 'last' (TF): block3's last unit de-strided, block4 entirely at 2.
    ("last", [(2,), (4,), (8,)]),
    # 'first': block4's own first unit carries the stride; it keeps the previous rate 1.
    ("first", [(1,), (4,), (8,)]),
])
def test_stride_placement(placement, expected_block4):
    s = derive(spec(stride_placement=placement, output_stride=16, multi_grid=[1, 2, 4]))
    assert rates(s, "block4") == expected_block4
    first_unit_strides = [s.stage_units(b)[0].nominal_stride for b in ("block1", "block2",
                                                                       "block3", "block4")]
    last_unit_strides = [s.stage_units(b)[-1].nominal_stride for b in ("block1", "block2",
                                                                      "block3", "block4")]
    if placement == "last":
        assert first_unit_strides == [1, 1, 1, 1] and last_unit_strides == [2, 2, 2, 1]
    else:
        assert first_unit_strides == [1, 2, 2, 2] and last_unit_strides == [1, 1, 1, 1]


def test_torchvision_layer3_and_layer4_rates_at_os8(load):
    """torchvision replace_stride_with_dilation=[False, True, True]: layer3 1,2,2,…; layer4 2,4,4."""
    s = derive(load("specs/zoo/torchvision_deeplabv3_resnet50.yaml").spec)
    assert s.stride_placement == "first"
    assert flat_rates(s, "block3") == [1, 2, 2, 2, 2, 2]
    assert flat_rates(s, "block4") == [2, 4, 4]
    assert strides(s, "block3") == [1] * 6 and strides(s, "block4") == [1] * 3
    assert strides(s, "block2") == [2, 1, 1, 1]
    s101 = derive(load("specs/zoo/torchvision_deeplabv3_resnet101.yaml").spec)
    assert flat_rates(s101, "block3") == [1] + [2] * 22
    assert flat_rates(s101, "block4") == [2, 4, 4]
    assert s.aspp_rates == (12, 24, 36)  # fixed rates (rates_output_stride: null)


def test_destrided_rate_new_gives_every_unit_the_new_rate():
    s = derive(spec("resnet50", stride_placement="first", output_stride=8,
                    destrided_rate="new"))
    assert flat_rates(s, "block3") == [2] * 6
    assert flat_rates(s, "block4") == [4] * 3
    s = derive(spec("resnet50", stride_placement="last", output_stride=16,
                    destrided_rate="new", multi_grid=[1, 2, 4]))
    # block3's last unit: de-strided, at the new rate 2 instead of the previous 1.
    assert flat_rates(s, "block3") == [1] * 5 + [2]
    assert rates(s, "block4") == [(2,), (4,), (8,)]


def test_multi_grid_absolute_ignores_the_block_rate():
    for os_ in (8, 16, 32):
        s = derive(spec(output_stride=os_, multi_grid=[1, 2, 4], multi_grid_mode="absolute"))
        assert rates(s, "block4") == [(1,), (2,), (4,)], os_


def test_cascade_block5_to_block7_rates(load):
    """v3 §3.2 Fig. 3b: at OS 16 block4…block7 run at rates 2, 4, 8, 16, times multi-grid."""
    s = derive(load("specs/deeplabv3_resnet101_cascade.yaml").spec)  # MG (1, 2, 1), placement last
    assert s.stages[-4:] == ("block4", "block5", "block6", "block7")
    assert rates(s, "block4") == [(2,), (4,), (2,)]
    assert rates(s, "block5") == [(4,), (8,), (4,)]
    assert rates(s, "block6") == [(8,), (16,), (8,)]
    assert rates(s, "block7") == [(16,), (32,), (16,)]
    assert all(u.cascade for u in s.units if u.stage in ("block5", "block6", "block7"))
    assert not any(u.cascade for u in s.units if u.stage == "block4")
    assert s.aspp_rates == ()  # aspp: null
    # "the last convolution contains stride 2 except the one in last block"
    for block in ("block4", "block5", "block6"):
        assert [u.nominal_stride for u in s.stage_units(block)] == [1, 1, 2], block
    assert [u.nominal_stride for u in s.stage_units("block7")] == [1, 1, 1]


def test_cascade_without_atrous_reaches_output_stride_256():
    """v3 §3.2: without atrous convolution block7 would reach OS 256."""
    s = derive(spec(stride_placement="last", cascade=3, output_stride=256, aspp=None))
    assert s.stage_units("block7")[-1].reduction == 256
    assert all(r == 1 for u in s.units for r in u.rates)
    assert [s.stage_units(b)[-1].reduction for b in s.stages] == [8, 16, 32, 64, 128, 256,
                                                                      256]


def test_cascade_with_first_placement():
    s = derive(spec("resnet50", stride_placement="first", cascade=2, output_stride=16, aspp=None))
    assert s.stages[-3:] == ("block4", "block5", "block6")
    assert flat_rates(s, "block4") == [1, 2, 2]
    assert flat_rates(s, "block5") == [2, 4, 4]
    assert flat_rates(s, "block6") == [4, 8, 8]
    assert [u.nominal_stride for u in s.stage_units("block5")] == [2, 1, 1]


def test_unreachable_output_stride_names_the_reachable_values():
    assert error_of(spec("resnet50", output_stride=12)).endswith(
        "backbone.output_stride: expected an output stride this backbone reaches (4, 8, 16 or "
        "32), found 12")
    # 64 exists only with a cascade.
    assert "(4, 8, 16 or 32), found 64" in error_of(spec("resnet50", output_stride=64))
    assert "found 2" in error_of(spec("resnet50", output_stride=2))  # below the stem's stride
    derive(spec("resnet50", output_stride=64, cascade=1, aspp=None))
    assert "(2, 4, 8, 16 or 32), found 64" in error_of(spec("xception65", output_stride=64))


def test_multi_grid_length_mismatch():
    assert error_of(spec("resnet50", multi_grid=[1, 2])).endswith(
        "backbone.multi_grid: expected 3 rates (the last stage 'block4' has 3 units), found 2: "
        "[1, 2]")
    assert error_of(spec("xception65", multi_grid=[1, 2, 4, 8])).endswith(
        "backbone.multi_grid: expected 3 rates (the last stage 'exit2' has one unit with 3 3×3 "
        "convs), found 4: [1, 2, 4, 8]")
    assert "expected 2 rates" in error_of(spec("resnet18", multi_grid=[1, 2, 4]))


@pytest.mark.parametrize("os_, expected", [(16, (6, 12, 18)), (8, (12, 24, 36)), (32, (3, 6, 9)),
                                           (4, (24, 48, 72))])
def test_aspp_rates_scale_with_the_output_stride(os_, expected):
    assert derive(spec("resnet50", output_stride=os_)).aspp_rates == expected


def test_aspp_absolute_rates_do_not_scale():
    for os_ in (8, 16, 32):
        s = derive(spec("resnet50", output_stride=os_,
                        aspp={"rates": [12, 24, 36], "rates_output_stride": None}))
        assert s.aspp_rates == (12, 24, 36)


def test_aspp_rates_that_do_not_scale_to_whole_numbers():
    assert derive(spec("resnet50", output_stride=32, aspp={"rates": [6, 10, 18]})).aspp_rates \
        == (3, 5, 9)
    text = error_of(spec("resnet50", output_stride=32, aspp={"rates": [6, 12, 15]}))
    assert text.endswith("aspp.rates[2]: expected a rate that scales to a whole number ≥ 1 at "
                         "output stride 32, found 15: written for output stride 16, it scales "
                         "to 7.5")
    text = error_of(spec("resnet50", output_stride=16, aspp={"rates": [1, 2],
                                                            "rates_output_stride": 8}))
    assert "aspp.rates[0]" in text and "it scales to 0.5" in text


def test_xception_exit2_multi_grid_per_conv():
    """v3+ §3.2: the exit flow's last block carries the multi-grid rates on its three convs."""
    s = derive(spec("xception65", output_stride=16, multi_grid=[1, 2, 4]))
    assert rates(s, "exit2") == [(2, 4, 8)]
    assert rates(s, "exit1") == [(1, 1, 1)]  # de-strided, keeps the previous rate
    assert strides(s, "exit1") == [1]
    assert s.stem_stride == 2
    s8 = derive(spec("xception65", output_stride=8, multi_grid=[1, 2, 4]))
    assert rates(s8, "exit2") == [(4, 8, 16)]
    assert rates(s8, "exit1") == [(2, 2, 2)]
    assert set(rates(s8, "middle")) == {(2, 2, 2)}
    assert rates(s8, "entry3") == [(1, 1, 1)] and strides(s8, "entry3") == [1]
    plain = derive(spec("xception65", output_stride=16))
    assert rates(plain, "exit2") == [(2, 2, 2)]


def test_mobilenetv2():
    s16 = derive(spec("mobilenetv2", output_stride=16))
    assert flat_rates(s16, "layer6") == [1, 2, 2]
    assert flat_rates(s16, "layer7") == [2]
    assert s16.stride_placement == "first"
    s8 = derive(spec("mobilenetv2", output_stride=8))
    assert flat_rates(s8, "layer4") == [1, 2, 2, 2]
    assert flat_rates(s8, "layer5") == [2, 2, 2]
    assert flat_rates(s8, "layer6") == [2, 4, 4]
    assert flat_rates(s8, "layer7") == [4]
    assert derive(spec("mobilenetv2", output_stride=8, multi_grid=[2])).stage_units(
        "layer7")[0].rates == (8,)


def test_derive_is_pure():
    s = spec(output_stride=8, multi_grid=[1, 2, 4])
    before = s.model_dump()
    assert derive(s) == derive(s)
    assert s.model_dump() == before


# --------------------------------------------------------------------------------------------
# An independent re-implementation of the TensorFlow rule


class Unreachable(Exception):
    pass


#: ResNet units per block (He et al. 2016, Table 1) and whether the block is bottleneck.
RESNET = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
BASIC = {"resnet18"}
#: MobileNetV2 (Sandler et al. 2018, Table 2): units n and stride s per bottleneck row.
MOBILENETV2 = ((1, 1), (2, 2), (3, 2), (4, 2), (3, 1), (3, 2), (1, 1))


def reference_layout(preset: str, placement: str, cascade: int) -> tuple[int, list[tuple[str, int, int]]]:
    """(stem stride, [(stage, nominal stride, 3×3 convs)] per unit) from the papers' tables."""
    units: list[tuple[str, int, int]] = []

    def stage(name: str, n: int, s: int, convs: int, where: str) -> None:
        for k in range(n):
            at = k == 0 if where == "first" else k == n - 1
            units.append((name, s if at else 1, convs))

    if preset in RESNET:
        convs = 2 if preset in BASIC else 1
        # TF resnet_v1: a block's stride 2 sits in its last unit, blocks 1–3; torchvision: first
        # unit of layers 2–4. Both reach 32 after a stride-4 stem.
        block_strides = (2, 2, 2, 1) if placement == "last" else (1, 2, 2, 2)
        for i, (n, s) in enumerate(zip(RESNET[preset], block_strides, strict=True)):
            stage(f"block{i + 1}", n, s, convs, placement)
        stem, last = 4, ("block4", RESNET[preset][3], block_strides[3])
    elif preset == "xception65":
        for name, s in (("entry1", 2), ("entry2", 2), ("entry3", 2)):
            stage(name, 1, s, 3, placement)
        stage("middle", 16, 1, 3, placement)
        stage("exit1", 1, 2, 3, placement)
        stage("exit2", 1, 1, 3, placement)
        stem, last = 2, ("exit2", 1, 1)
    else:
        for i, (n, s) in enumerate(MOBILENETV2):
            stage(f"layer{i + 1}", n, s, 1, placement)
        stem, last = 2, ("layer7", 1, 1)
    # Cascade (v3 §3.2): copies of the last stage, each one stride-2 step deeper. With the stride
    # at the end of a block ("the last convolution contains stride 2 except the one in the last
    # block"), the step into a copy closes the block before it; at the start, it opens the copy.
    name, n, _s = last
    base = "".join(c for c in name if not c.isdigit())
    number = int("".join(c for c in name if c.isdigit()))
    for c in range(1, cascade + 1):
        if placement == "last":
            prev = f"{base}{number + c - 1}"
            idx = max(i for i, u in enumerate(units) if u[0] == prev)
            units[idx] = (units[idx][0], units[idx][1] * 2, units[idx][2])
            copy = [(f"{base}{number + c}", 1, units[idx][2]) for _ in range(n)]
        else:
            copy = [(f"{base}{number + c}", 2 if k == 0 else 1, units[-1][2]) for k in range(n)]
        units += copy
    return stem, units


def reference_schedule(preset: str, output_stride: int, placement: str, destrided: str,
                       multi_grid: tuple[int, ...] | None, mode: str,
                       cascade: int) -> list[tuple[str, int, tuple[int, ...]]]:
    """docs/deeplab.md "The stride rule", literally: [(stage, stride, rates)] per unit, or Unreachable."""
    stem, units = reference_layout(preset, placement, cascade)
    last_stage = units[-1][0] if cascade == 0 else None
    if last_stage is None:
        base = "".join(c for c in units[-1][0] if not c.isdigit())
        number = int("".join(c for c in units[-1][0] if c.isdigit()))
        last_stage = f"{base}{number - cascade}"
    mg_stages = {u[0] for u in units[[u[0] for u in units].index(last_stage):]}
    current_stride, rate = stem, 1  # the stem counts first
    out = []
    seen: dict[str, int] = {}
    for stage, s, convs in units:
        if current_stride == output_stride:
            unit_rate = rate * s if destrided == "new" else rate
            stride = 1
            rate *= s
        else:
            unit_rate, stride = 1, s
            current_stride *= s
        unit_rates = (unit_rate,) * convs
        if multi_grid is not None and stage in mg_stages:
            n_units = sum(1 for u in units if u[0] == stage)
            j = seen.get(stage, 0)
            seen[stage] = j + 1
            grid = (multi_grid[j],) * convs if n_units > 1 else multi_grid
            unit_rates = tuple(g * unit_rate if mode == "multiply" else g for g in grid)
        out.append((stage, stride, unit_rates))
    if current_stride != output_stride:
        raise Unreachable(output_stride)
    return out


GRIDS = {"resnet18": [None, (1, 2), (2, 3)], "resnet50": [None, (1, 2, 4), (1, 2, 1)],
         "resnet101": [None, (1, 2, 4)], "xception65": [None, (1, 2, 4), (1, 1, 1)],
         "mobilenetv2": [None, (2,)]}


@pytest.mark.parametrize("preset", sorted(GRIDS))
def test_derive_matches_the_reference_rule(preset):
    """derive() == the reference for every output stride (reachable or not) and every policy."""
    checked = unreachable = 0
    cascades = (0, 1, 3) if preset != "mobilenetv2" else (0, 2)
    for os_, placement, destrided, mode, grid, cascade in itertools.product(
            (1, 2, 4, 8, 12, 16, 32, 64, 128, 256, 512), ("first", "last"),
            ("previous", "new"), ("multiply", "absolute"), GRIDS[preset], cascades):
        if grid is None and mode == "absolute":
            continue
        s = spec(preset, output_stride=os_, stride_placement=placement,
                 destrided_rate=destrided, multi_grid_mode=mode,
                 multi_grid=list(grid) if grid else None, cascade=cascade,
                 aspp=None)
        where = (os_, placement, destrided, mode, grid, cascade)
        try:
            expected = reference_schedule(preset, os_, placement, destrided, grid, mode, cascade)
        except Unreachable:
            unreachable += 1
            with pytest.raises(SpecError, match="expected an output stride this backbone "
                                                "reaches"):
                derive(s)
            continue
        got = [(u.stage, u.stride, u.rates) for u in derive(s).units]
        assert got == expected, where
        checked += 1
    assert checked > 50 and unreachable > 10


def test_reference_agrees_with_the_paper_tables():
    """The re-implementation itself reproduces the papers' statements (so it is a fair judge)."""
    s16 = reference_schedule("resnet101", 16, "last", "previous", (1, 2, 4), "multiply", 0)
    assert [r for st, _, r in s16 if st == "block4"] == [(2,), (4,), (8,)]
    s8 = reference_schedule("resnet101", 8, "last", "previous", (1, 2, 4), "multiply", 0)
    assert [r for st, _, r in s8 if st == "block4"] == [(4,), (8,), (16,)]
    assert {r for st, _, r in s8 if st == "block3"} == {(2,)}
    tv = reference_schedule("resnet50", 8, "first", "previous", None, "multiply", 0)
    assert [r[0] for st, _, r in tv if st == "block3"] == [1, 2, 2, 2, 2, 2]
    assert [r[0] for st, _, r in tv if st == "block4"] == [2, 4, 4]
    cas = reference_schedule("resnet101", 16, "last", "previous", None, "multiply", 3)
    assert [[r[0] for st, _, r in cas if st == b] for b in ("block4", "block5", "block6",
                                                            "block7")] == [[2] * 3, [4] * 3,
                                                                           [8] * 3, [16] * 3]
