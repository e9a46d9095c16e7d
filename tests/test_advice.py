"""Analysis of atrous designs: the valid-tap figures (DeepLabv3 Fig. 4) and each warning, both
triggered and not triggered."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from specc.advice import (
    MIN_VALID_TAPS,
    atrous_branches,
    implied_output_stride,
    paper_rates,
    stage_receptive_fields,
    tap_counts_1d,
    valid_taps,
    valid_taps_1d,
)
from specc.api import compile_spec, load_spec
from specc.cli import main
from specc.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").rglob("*.yaml"))
V3 = ROOT / "specs" / "deeplabv3_resnet101.yaml"
V3PLUS = ROOT / "specs" / "deeplabv3plus_resnet101.yaml"
XCEPTION = ROOT / "specs" / "deeplabv3plus_xception.yaml"
TORCHVISION = ROOT / "specs" / "zoo" / "torchvision_deeplabv3_resnet101.yaml"
WARNING = re.compile(r"^(?P<loc>[^:]+(:\d+:\d+)?): warning: (?P<key>[a-z_.\[\]0-9]+): (?P<msg>.+)$")


def warnings_for(path: Path, *overrides: str) -> dict[str, str]:
    doc = load_spec(path, list(overrides))
    notes = compile_spec(doc).warnings
    out = {}
    for note in notes:
        m = WARNING.match(note)
        assert m, f"not file:line:col: warning: key: message: {note!r}"
        out[m.group("key")] = note
    return out


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


# ------------------------------------------------------------------------------------------------
# Valid taps against a direct count


def brute_1d(n: int, r: int) -> float:
    return sum(1 for i in range(n) for k in (-1, 0, 1) if 0 <= i + k * r < n) / n


def brute_2d(h: int, w: int, r: int) -> tuple[float, dict[int, float]]:
    """Every output position, every one of the 9 taps: is its input inside the map?"""
    counts: dict[int, int] = {}
    total = 0
    for y, x in itertools.product(range(h), range(w)):
        c = sum(1 for dy, dx in itertools.product((-r, 0, r), repeat=2)
                if 0 <= y + dy < h and 0 <= x + dx < w)
        counts[c] = counts.get(c, 0) + 1
        total += c
    return total / (h * w), {k: v / (h * w) for k, v in counts.items()}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 33, 40])
def test_valid_taps_1d_matches_a_direct_count(n):
    for r in range(1, 2 * n + 3):
        assert valid_taps_1d(n, r) == pytest.approx(brute_1d(n, r), abs=1e-12), (n, r)
        counts = tap_counts_1d(n, r)
        direct = {c: sum(1 for i in range(n)
                         if sum(1 for k in (-1, 0, 1) if 0 <= i + k * r < n) == c)
                  for c in (1, 2, 3)}
        assert counts == direct, (n, r)


@pytest.mark.parametrize("h, w, r", [(33, 33, 6), (33, 33, 12), (33, 33, 18), (33, 33, 24),
                                     (33, 33, 36), (17, 17, 12), (65, 33, 24), (20, 45, 19),
                                     (1, 9, 1), (9, 9, 4)])
def test_valid_taps_2d_matches_a_direct_count(h, w, r):
    mean, hist = brute_2d(h, w, r)
    figures = valid_taps((h, w), r)
    assert figures["valid_taps"] == pytest.approx(mean, abs=1e-12)
    assert {int(k): v for k, v in figures["histogram"].items()} == pytest.approx(hist)
    assert figures["all_taps"] == pytest.approx(hist.get(9, 0.0))
    assert figures["center_only"] == pytest.approx(hist.get(1, 0.0))


def test_general_kernel_sizes():
    # A 5-tap kernel at rate 2 on 9 positions: offsets -4, -2, 0, 2, 4.
    direct = sum(1 for i in range(9) for k in (-2, -1, 0, 1, 2) if 0 <= i + 2 * k < 9) / 9
    assert valid_taps_1d(9, 2, kernel=5) == pytest.approx(direct)
    with pytest.raises(ValueError):
        valid_taps_1d(0, 1)


def test_fig4_trend_on_a_65x65_map():
    """DeepLabv3 Fig. 4: as the rate grows on a 65×65 map, fewer taps are valid; from rate 64 on
    only the centre tap is (almost everywhere), i.e. the 3×3 filter is a 1×1."""
    figures = [valid_taps((65, 65), r) for r in range(1, 80)]
    taps = [f["valid_taps"] for f in figures]
    assert taps[0] == pytest.approx((1 + 2 * 64 / 65) ** 2)
    assert all(a > b for a, b in itertools.pairwise(taps[:65]))  # strictly falling
    assert taps[63] < 1.07  # rate 64
    assert all(t == 1.0 for t in taps[64:])  # rate ≥ 65: exactly one valid tap everywhere
    assert figures[63]["center_only"] > 0.93
    assert figures[64]["center_only"] == 1.0 and figures[64]["effective_kernel"] == "1×1"
    # The fraction with all 9 taps valid falls to 0 once 2·rate ≥ 65; "1 valid" rises to 1.
    all9 = [f["all_taps"] for f in figures]
    assert all9[31] > 0 and all(a == 0 for a in all9[32:])
    one = [f["center_only"] for f in figures]
    assert all(a <= b for a, b in itertools.pairwise(one))


def test_threshold_keeps_the_papers_own_settings():
    """The papers' rates at a 513 crop stay well above MIN_VALID_TAPS; rates written for output
    stride 8 used at 16 do not."""
    assert valid_taps((33, 33), 18)["valid_taps"] > 3.5  # OS 16, rate 18
    assert valid_taps((65, 65), 36)["valid_taps"] > 3.5  # OS 8, rate 36
    assert valid_taps((33, 33), 36)["valid_taps"] < MIN_VALID_TAPS


# ------------------------------------------------------------------------------------------------
# atrous_branches and specc info


def test_atrous_branches_of_the_paper_model():
    doc = load_spec(V3)
    branches = atrous_branches(compile_spec(doc))
    assert [b["rate"] for b in branches] == [6, 12, 18]
    assert [b["spec_key"] for b in branches] == ["aspp.rates[0]", "aspp.rates[1]", "aspp.rates[2]"]
    for b in branches:
        assert b["feature_size"] == [33, 33]
        assert b["valid_taps"] == pytest.approx(brute_2d(33, 33, b["rate"])[0])
        assert b["degenerate"] is False


def test_atrous_branches_follow_output_stride_and_input_size():
    doc = load_spec(V3, ["backbone.output_stride=8"])
    branches = atrous_branches(compile_spec(doc))
    assert [(b["rate"], b["feature_size"]) for b in branches] == [
        (12, [65, 65]), (24, [65, 65]), (36, [65, 65])]
    doc = load_spec(XCEPTION, ["input.size=[321, 257]"])  # separable branches, non-square
    branches = atrous_branches(compile_spec(doc))
    assert [b["feature_size"] for b in branches] == [[21, 17]] * 3
    assert branches[2]["valid_taps"] == pytest.approx(brute_2d(21, 17, 18)[0])
    assert branches[2]["effective_kernel"] == "3×1"
    doc = load_spec(V3, ["aspp=null", "name=noaspp"])
    assert atrous_branches(compile_spec(doc)) == []


def test_info_json_lists_atrous_branches(capsys):
    code, out, _ = run(capsys, "info", V3, "--json")
    assert code == 0
    data = json.loads(out)
    assert [b["rate"] for b in data["atrous_branches"]] == [6, 12, 18]
    for b in data["atrous_branches"]:
        assert set(b) >= {"rate", "feature_size", "valid_taps"}
        assert b["feature_size"] == [33, 33]
    code, out, _ = run(capsys, "info", V3)
    assert "of 9 taps on valid positions" in out


def test_stage_receptive_fields_match_the_schedule():
    doc = load_spec(V3)
    comp = compile_spec(doc)
    graph = comp.graph
    rows = stage_receptive_fields(comp)
    assert [r["stage"] for r in rows] == ["stem", "block1", "block2", "block3", "block4"]
    from specc.analysis import schedule_rows

    last = {r["stage"]: r for r in schedule_rows(comp)}
    for r in rows[1:]:
        assert r["receptive_field"] == last[r["stage"]]["receptive_field"]
        assert r["feature_size"] == last[r["stage"]]["feature_size"]
    rfs = [r["receptive_field"] for r in rows]
    assert rfs == sorted(rfs)
    assert rows[-1]["rates"] == [2, 4, 8]
    assert rows[-1]["receptive_field"] == graph.nodes[comp.network.aliases["backbone"]][
        "receptive_field"]


# ------------------------------------------------------------------------------------------------
# Warnings: each triggered and not triggered


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_have_no_warnings(path):
    assert warnings_for(path) == {}


def test_rates_for_output_stride_8_used_at_16_as_absolute_rates():
    """torchvision's fixed (12, 24, 36) are right at its output stride 8, wrong at 16."""
    assert "aspp.rates" not in warnings_for(TORCHVISION)
    notes = warnings_for(TORCHVISION, "backbone.output_stride=16")
    note = notes["aspp.rates"]
    assert "look written for output stride 8" in note and "(6, 12, 18)" in note
    # Placed where the rates were written: the base spec torchvision_deeplabv3_resnet101 extends.
    assert note.startswith(str(ROOT / "specs" / "zoo" / "torchvision_deeplabv3_resnet50.yaml"))
    # At a 520 crop and output stride 16 the map is 33×33: rate 36 degenerates too.
    assert "aspp.rates[2]" in notes and "aspp.rates[1]" not in notes


def test_accepted_warnings_hide_exactly_the_keys_they_name():
    """torchvision's MobileNetV3 DeepLabV3 runs (12, 24, 36) at output stride 16 on purpose;
    its zoo spec accepts those two warnings, and an acceptance with nothing to accept is told."""
    mobilenet = ROOT / "specs" / "zoo" / "torchvision_deeplabv3_mobilenet_v3_large.yaml"
    assert warnings_for(mobilenet) == {}
    notes = warnings_for(mobilenet, "accepted_warnings=[]")
    assert set(notes) == {"aspp.rates", "aspp.rates[2]"}
    notes = warnings_for(mobilenet, "accepted_warnings=[aspp.rates, decoder]")
    assert set(notes) == {"aspp.rates[2]", "accepted_warnings[1]"}
    assert "'decoder' draws no warning" in notes["accepted_warnings[1]"]


def test_rates_for_output_stride_8_declared_for_16():
    notes = warnings_for(V3, "aspp.rates=[12, 24, 36]")
    assert "aspp.rates_output_stride declares them for output stride 16" in notes["aspp.rates"]
    assert "aspp.rates_output_stride: 8" in notes["aspp.rates"]
    # Declared for 8, they are scaled to (6, 12, 18) at 16: nothing to say.
    assert warnings_for(V3, "aspp.rates=[12, 24, 36]", "aspp.rates_output_stride=8") == {}
    # Written for 16 and scaled to 8 on purpose: nothing to say.
    assert warnings_for(V3, "backbone.output_stride=8") == {}
    # Rates that are not the paper's set scaled are the user's own choice.
    assert "aspp.rates" not in warnings_for(V3, "aspp.rates=[4, 8, 12]")


def test_rates_for_output_stride_32_at_16():
    notes = warnings_for(V3, "aspp.rates=[3, 6, 9]", "aspp.rates_output_stride=null")
    assert "look written for output stride 32" in notes["aspp.rates"]


def test_no_rates_or_one_rate_twice_is_warned():
    assert "no atrous branches" in warnings_for(V3, "aspp.rates=[]")["aspp.rates"]
    note = warnings_for(V3, "aspp.rates=[6, 12, 6]")["aspp.rates"]
    assert note.startswith("--set aspp.rates=[6, 12, 6]: warning: aspp.rates: branches at the "
                           "same rate (6 ×2, as run at output stride 16)")
    # Written for output stride 16 and run at 8, (3, 6, 6) runs twice at 12
    assert "(12 ×2, as run at output stride 8)" in warnings_for(
        V3, "aspp.rates=[3, 6, 6]", "backbone.output_stride=8")["aspp.rates"]
    assert "aspp.rates" not in warnings_for(V3, "aspp.rates=[4, 8, 12]")


def test_implied_and_paper_rates():
    assert implied_output_stride([6, 12, 18]) == 16
    assert implied_output_stride((12, 24, 36)) == 8
    assert implied_output_stride([24, 48, 72]) == 4
    assert implied_output_stride([3, 6, 9]) == 32
    assert implied_output_stride([4, 8, 12]) is None  # 96 / 4 = 24 is no output stride
    assert implied_output_stride([6, 12, 24]) is None
    assert implied_output_stride([6, 12]) is None
    assert paper_rates(8) == (12, 24, 36) and paper_rates(16) == (6, 12, 18)
    assert paper_rates(64) is None


def test_degenerate_branch_warning():
    notes = warnings_for(V3, "input.size=[257, 257]")  # 17×17 at output stride 16
    assert set(notes) == {"aspp.rates[2]"}
    note = notes["aspp.rates[2]"]
    assert "rate 18 on the 17×17 feature map" in note and "1×1" in note
    assert "1.00 of the 9 taps" in note
    assert ":18:" in note.split(": warning")[0]  # the line of `rates: [6, 12, 18]`
    # Just above the threshold: no warning (rate 12 on 17×17 keeps 2.52 taps).
    doc = load_spec(V3, ["input.size=[257, 257]"])
    rate12 = atrous_branches(compile_spec(doc))[1]
    assert rate12["valid_taps"] > MIN_VALID_TAPS and not rate12["degenerate"]


def test_degenerate_at_the_small_crop_the_paper_found_worse():
    """DeepLabv3 §4.1: a 321 crop cost accuracy; rate 18 on its 21×21 map keeps 1.65 taps."""
    note = warnings_for(V3, "input.size=[321, 321]")["aspp.rates[2]"]
    assert "1.65 of the 9 taps" in note and "close to a 1×1" in note


def test_degenerate_when_rate_reaches_one_side():
    notes = warnings_for(V3, "input.size=[513, 257]")  # 33×17: rate 18 covers the width
    note = notes["aspp.rates[2]"]
    assert "3×1 filter" in note


def test_misaligned_input_size_with_align_corners():
    notes = warnings_for(V3, "input.size=[512, 512]")
    note = notes["output.upsample.align_corners"]
    assert "k·16+1" in note and "497 or 513" in note
    assert set(notes) == {"output.upsample.align_corners"}
    plus = warnings_for(XCEPTION, "input.size=[512, 512]")
    assert {"decoder.upsample.align_corners", "output.upsample.align_corners"} <= set(plus)
    # k·16+1 crops, and align_corners: false at any crop, are fine.
    assert warnings_for(V3, "input.size=[385, 385]") == {}
    assert warnings_for(V3, "input.size=[512, 512]", "output.upsample.align_corners=false") == {}
    assert warnings_for(TORCHVISION) == {}  # 520 with align_corners false
    # Output stride 8 needs k·8+1: 505 = 63·8+1 is aligned at 8 but not at 16.
    assert warnings_for(V3, "input.size=[505, 505]", "backbone.output_stride=8") == {}
    assert "output.upsample.align_corners" in warnings_for(V3, "input.size=[505, 505]")


# ------------------------------------------------------------------------------------------------
# The decoder tap at the wrong stride is an error, not a warning


def test_decoder_tap_at_the_wrong_stride_is_an_error(capsys):
    with pytest.raises(SpecError) as exc:
        load_and_compile = load_spec(V3PLUS, ["decoder.low_level=backbone.block2.unit3"])
        _ = compile_spec(load_and_compile).network
    message = str(exc.value)
    assert "decoder.low_level" in message
    assert "at 1/8 of the input" in message and "expects 1/4" in message
    assert "deeplabv3plus_resnet101.yaml" in message or "--set" in message
    code, _, err = run(capsys, "validate", V3PLUS, "--set", "decoder.low_level=backbone.block2.unit3")
    assert code == 2 and "expects 1/4" in err


def test_decoder_tap_at_the_right_stride_is_accepted():
    doc = load_spec(V3PLUS, ["decoder.low_level=backbone.block2.unit3", "decoder.low_level_reduction=8"])
    _ = compile_spec(doc).network


# ------------------------------------------------------------------------------------------------
# validate / build print the warnings; --strict turns them into errors


def test_validate_prints_warnings_and_strict_fails(capsys):
    code, out, err = run(capsys, "validate", V3, "--set", "input.size=[257, 257]")
    assert code == 0 and "warning: aspp.rates[2]" in err and "ok:" in out
    code, _, err = run(capsys, "validate", V3, "--set", "input.size=[257, 257]", "--strict")
    assert code == 2 and "--strict" in err
    code, _, err = run(capsys, "validate", V3, "--strict")
    assert code == 0 and "warning" not in err


def test_build_strict_fails_before_writing(capsys, tmp_path):
    code, _, err = run(capsys, "build", V3, "--set", "aspp.rates=[12, 24, 36]", "--strict",
                       "--out", tmp_path)
    assert code == 2
    assert "warning: aspp.rates" in err
    assert not any(tmp_path.iterdir())
