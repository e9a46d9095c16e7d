"""``specc diff``: exit codes, each section, and the variants users compare most."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specc.api import build, load_spec, manifest_json
from specc.cli import main
from specc.cli.render import compact_names, diff_markdown
from specc.diff import compare, load_side, spec_changes

ROOT = Path(__file__).resolve().parents[1]
V3 = ROOT / "specs" / "deeplabv3_resnet101.yaml"
V3_OS8 = ROOT / "specs" / "deeplabv3_resnet101_os8.yaml"
V3PLUS = ROOT / "specs" / "deeplabv3plus_resnet101.yaml"
TORCHVISION = ROOT / "specs" / "zoo" / "torchvision_deeplabv3_resnet101.yaml"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


def diff_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code, out, err = run(capsys, "diff", *args, "--format", "json")
    assert code in (0, 1), err
    return code, json.loads(out)


_SIDES: dict[tuple[str, tuple[str, ...]], object] = {}


def side(path: Path, *overrides: str):
    """Sides are cached: each spec is compiled once for the whole module."""
    key = (str(path), overrides)
    if key not in _SIDES:
        _SIDES[key] = load_side(path, list(overrides), "a")
    return _SIDES[key]


# ------------------------------------------------------------------------------------------------
# Exit codes and formats


def test_spec_against_itself_is_identical(capsys):
    code, result = diff_json(capsys, V3, V3)
    assert code == 0
    assert result["identical"] is True
    assert result["spec_changes"] == []
    assert result["schedule"] == {}
    assert result["cost"] == []
    assert result["weights_compatible"] is True
    assert result["weight_mismatches"] == {"missing": [], "unexpected": [], "reshaped": []}
    assert result["params"]["a"] == result["params"]["b"]
    assert not any(result["graph"].values())


def test_identical_table_and_markdown(capsys):
    code, out, _ = run(capsys, "diff", V3, V3)
    assert code == 0 and "identical" in out
    code, out, _ = run(capsys, "diff", V3, V3, "--format", "markdown")
    assert code == 0 and out.startswith("## specc diff") and "Identical" in out


def test_differ_exits_1_in_every_format(capsys):
    for fmt in ("table", "json", "markdown"):
        code, out, err = run(capsys, "diff", V3, V3_OS8, "--format", fmt)
        assert code == 1, err
        assert "output_stride" in out or "output stride" in out


@pytest.mark.parametrize("args, message", [
    (["nope.yaml", str(V3)], "no such file"),
    ([str(V3), str(V3), "--set-b", "backbone.output_stride=7"], "backbone.output_stride"),
    ([str(V3), str(V3), "--set-a", "no_equals_sign"], "key.path=value"),
])
def test_errors_exit_2(capsys, args, message):
    code, _, err = run(capsys, "diff", *args)
    assert code == 2
    assert message in err


def test_folder_without_manifest_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "diff", tmp_path, V3)
    assert code == 2
    assert "manifest.json" in err


def test_overrides_on_a_build_exit_2(capsys, tmp_path):
    folder = _write_build(tmp_path, V3)
    code, _, err = run(capsys, "diff", folder, V3, "--set-a", "backbone.output_stride=8")
    assert code == 2
    assert "--set-a" in err and "spec files" in err


def _write_build(tmp_path: Path, spec: Path, *, state: bool = True) -> Path:
    """A build folder as ``specc build`` writes it (the manifest is what diff reads)."""
    built = build(load_spec(spec))
    man = dict(built.manifest)
    if not state:
        man.pop("state_dict")
    folder = tmp_path / man["name"]
    folder.mkdir()
    (folder / "manifest.json").write_text(manifest_json(man))
    return folder


def test_build_folder_against_its_spec_is_identical(capsys, tmp_path):
    folder = _write_build(tmp_path, V3)
    code, result = diff_json(capsys, folder, V3)
    assert code == 0, result
    assert result["identical"] is True
    code, result = diff_json(capsys, folder / "manifest.json", V3_OS8)
    assert code == 1
    assert result["weights_compatible"] is True


def test_run_folder_reads_its_spec_record(capsys, tmp_path):
    """A training run (or checkpoint) folder holds spec.json, the resolved spec it trained."""
    from specc.artifacts import spec_info

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(json.dumps(spec_info(load_spec(V3))))
    code, result = diff_json(capsys, run_dir, V3)
    assert code == 0 and result["identical"] is True
    code, result = diff_json(capsys, run_dir, V3_OS8)
    assert code == 1 and result["weights_compatible"] is True
    code, _, err = run(capsys, "diff", run_dir, V3, "--set-a", "backbone.output_stride=8")
    assert code == 2 and f"{run_dir} is a run (give the spec file instead)" in err


def test_two_runs_of_one_spec_are_not_said_to_have_the_same_weights(capsys, tmp_path):
    """Runs are compared by the spec they trained: two runs of one spec are identical here, and
    the report says that their trained weights were not compared (once, for both sides)."""
    from specc.artifacts import spec_info

    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        run_dir.mkdir()
        (run_dir / "spec.json").write_text(json.dumps(spec_info(load_spec(V3))))
    code, out, _ = run(capsys, "diff", *runs)
    assert code == 0 and "weight shapes" in out
    assert out.count("values of its trained weights are not compared") == 1
    code, out, _ = run(capsys, "diff", *runs, "--format", "markdown")
    assert code == 0 and "Identical: same spec, schedule, cost, graph and weight shapes." in out
    assert "trained weights are not compared" in out


def test_build_folder_without_state_dict_still_checks_weights(tmp_path):
    folder = _write_build(tmp_path, V3, state=False)
    result = compare(load_side(folder, [], "a"), side(V3PLUS))
    assert result["weights_compatible"] is False
    assert result["weight_mismatches"]["missing"]
    assert result["graph"]["added"]


def test_manifest_whose_spec_no_longer_compiles(tmp_path):
    """An old build: its figures and state_dict are still compared, its graph is not."""
    folder = _write_build(tmp_path, V3)
    man = json.loads((folder / "manifest.json").read_text())
    man["spec"]["backbone"]["retired_option"] = True
    (folder / "manifest.json").write_text(json.dumps(man))
    result = compare(load_side(folder, [], "a"), side(V3_OS8))
    assert result["graph"] is None
    assert any("no longer compiles" in n for n in result["notes"])
    assert result["weights_compatible"] is True
    assert result["schedule"]["output_stride"] == {"a": 16, "b": 8}
    assert "no longer compiles" in diff_markdown(result)


# ------------------------------------------------------------------------------------------------
# Output stride 16 vs 8: same weights, different schedule and cost


def test_os16_vs_os8(capsys):
    code, result = diff_json(capsys, V3, V3_OS8)
    assert code == 1
    assert result["identical"] is False
    changes = {c["path"]: (c["a"], c["b"]) for c in result["spec_changes"]}
    assert changes == {"name": ("deeplabv3_resnet101", "deeplabv3_resnet101_os8"),
                       "backbone.output_stride": (16, 8)}
    sch = result["schedule"]
    assert sch["output_stride"] == {"a": 16, "b": 8}
    assert sch["aspp_rates"] == {"a": [6, 12, 18], "b": [12, 24, 36]}
    units = {(u["stage"], u["unit"]): u["changes"] for u in sch["units"]}
    # block2's strided unit loses its stride; block3 runs at rate 2; block4 at 4·(1, 2, 4).
    assert units[("block2", "unit4")]["stride"] == {"a": 2, "b": 1}
    assert units[("block3", "unit5")]["rates"] == {"a": [1], "b": [2]}
    assert [units[("block4", f"unit{i}")]["rates"]["b"] for i in (1, 2, 3)] == [[4], [8], [16]]
    assert units[("block4", "unit3")]["feature_size"] == {"a": [33, 33], "b": [65, 65]}
    assert ("block1", "unit1") not in units
    # Same parameters, about 3.3× the multiply-adds.
    assert result["params"]["diff"] == 0
    assert result["macs"]["b"] > 3 * result["macs"]["a"]
    groups = {c["group"] for c in result["cost"]}
    assert {"backbone.block3", "backbone.block4", "aspp"} <= groups
    assert "backbone.stem" not in groups and "backbone.block1" not in groups
    # The graph: the strided shortcut's subsampling disappears, dilations change.
    graph = result["graph"]
    assert [n["node"] for n in graph["removed"]] == ["backbone.block2.unit4.subsample"]
    assert graph["added"] == []
    changed = {c["node"]: c["changes"] for c in graph["changed"]}
    assert changed["aspp.branch3"]["dilation"] == {"a": 18, "b": 36}
    assert changed["backbone.block3.unit1.conv2"]["dilation"] == {"a": 1, "b": 2}
    # A checkpoint trained at OS 16 loads at OS 8 (the paper evaluates that way, +1.3 %).
    assert result["weights_compatible"] is True
    assert result["weight_mismatches"] == {"missing": [], "unexpected": [], "reshaped": []}


def test_overrides_give_the_same_answer_as_the_os8_file():
    by_file = compare(side(V3), side(V3_OS8))
    by_set = compare(side(V3), side(V3, "backbone.output_stride=8"))
    assert [c for c in by_set["spec_changes"]] == [
        {"path": "backbone.output_stride", "a": 16, "b": 8}]
    for key in ("schedule", "cost", "params", "macs", "weights_compatible", "graph"):
        assert by_set[key] == by_file[key], key


def test_markdown_for_a_pull_request():
    text = diff_markdown(compare(side(V3), side(V3_OS8)))
    assert "| backbone.output_stride | 16 | 8 |" in text
    assert "### schedule" in text and "### cost" in text and "### weights" in text
    assert "| block3 unit1–unit23 | dilation rates | [1] | [2] |" in text
    assert "| a checkpoint of A loads into B | yes" in text


# ------------------------------------------------------------------------------------------------
# DeepLabv3 vs v3+: the decoder's parameters are missing from a v3 checkpoint


def test_v3_vs_v3plus():
    a, b = side(V3), side(V3PLUS)
    result = compare(a, b)
    assert result["identical"] is False
    paths = [c["path"] for c in result["spec_changes"]]
    assert "decoder" in paths
    decoder = next(c for c in result["spec_changes"] if c["path"] == "decoder")
    assert decoder["a"] is None and decoder["b"]["low_level"] == "backbone.block1.unit2"
    assert result["weights_compatible"] is False
    m = result["weight_mismatches"]
    expected = sorted(k for k in b.state() if k.startswith("decoder."))
    assert m["missing"] == expected
    assert m["unexpected"] == [] and m["reshaped"] == []
    added = [n["node"] for n in result["graph"]["added"]]
    assert added == ["decoder.upsample", "decoder.project", "decoder.concat", "decoder.fuse1",
                     "decoder.fuse2"]
    assert ["aspp.project", "classifier"] in result["graph"]["edges_removed"]
    decoder_cost = next(c for c in result["cost"] if c["group"] == "decoder")
    assert decoder_cost["params"]["a"] == 0 and decoder_cost["params"]["ratio"] is None
    assert result["params"]["diff"] == decoder_cost["params"]["b"]
    # The other way round, the decoder's parameters are unexpected, and its cost has no ratio
    # either (not "×0": it is not in B at all).
    back = compare(b, a)
    assert back["weight_mismatches"]["unexpected"] == expected
    assert back["weight_mismatches"]["missing"] == []
    back_cost = next(c for c in back["cost"] if c["group"] == "decoder")
    assert back_cost["params"]["b"] == 0 and back_cost["params"]["ratio"] is None


def test_v3plus_weights_listed_compactly():
    text = diff_markdown(compare(side(V3), side(V3PLUS)))
    assert "decoder.project.bn.{bias, num_batches_tracked, running_mean, running_var, weight}" \
        in text
    assert "18 missing" in text


# ------------------------------------------------------------------------------------------------
# Separable vs plain ASPP


def test_separable_vs_plain_aspp():
    result = compare(side(V3), side(V3, "aspp.style.conv=separable"))
    assert result["spec_changes"] == [{"path": "aspp.style.conv", "a": "plain", "b": "separable"}]
    assert result["schedule"] == {}  # the backbone is untouched
    assert [c["group"] for c in result["cost"]] == ["aspp"]
    assert result["params"]["ratio"] < 0.8  # separable 3×3 branches are ~9× smaller
    changed = {c["node"]: c["changes"] for c in result["graph"]["changed"]}
    assert sorted(changed) == ["aspp.branch1", "aspp.branch2", "aspp.branch3"]
    assert changed["aspp.branch1"]["op"] == {"a": "conv", "b": "sepconv"}
    assert changed["aspp.branch1"]["groups"] == {"a": 1, "b": 2048}
    assert result["weights_compatible"] is False
    m = result["weight_mismatches"]
    assert "aspp.convs.1.depthwise.weight" in m["missing"]
    assert "aspp.convs.1.conv.weight" in m["unexpected"]
    assert all(k.startswith("aspp.convs.") for k in m["missing"] + m["unexpected"])


# ------------------------------------------------------------------------------------------------
# torchvision's DeepLabv3 vs the paper's


def test_torchvision_vs_paper():
    result = compare(side(V3), side(TORCHVISION))
    changes = {c["path"]: (c["a"], c["b"]) for c in result["spec_changes"]}
    assert changes["backbone.stem"] == ("deep", "conv7")
    assert changes["backbone.stride_placement"] == ("last", "first")
    assert changes["backbone.multi_grid"] == ([1, 2, 4], None)
    assert changes["aspp.rates_output_stride"] == (16, None)
    assert changes["aspp.image_pooling.align_corners"] == (True, False)
    assert changes["aux"][0] is None
    assert result["params"]["b"] == 60_996_202  # torchvision's count with the aux head
    sch = result["schedule"]
    assert sch["output_stride"] == {"a": 16, "b": 8}
    assert sch["input_size"] == {"a": [513, 513], "b": [520, 520]}
    units = {(u["stage"], u["unit"]): u["changes"] for u in sch["units"]}
    # Where the stride sits: the last unit (TF) vs the first (torchvision).
    assert units[("block2", "unit1")]["nominal_stride"] == {"a": 1, "b": 2}
    assert units[("block2", "unit4")]["nominal_stride"] == {"a": 2, "b": 1}
    m = result["weight_mismatches"]
    assert result["weights_compatible"] is False
    assert "backbone.stem.1.conv.weight" in m["unexpected"]  # the deep stem's second conv
    assert "aux.conv.conv.weight" in m["missing"] and "extra.conv.weight" in m["missing"]
    reshaped = {k: (a, b) for k, a, b in m["reshaped"]}
    assert reshaped["backbone.stem.0.conv.weight"] == ([64, 3, 3, 3], [64, 3, 7, 7])
    added = {n["node"] for n in result["graph"]["added"]}
    assert {"extra", "aux.conv", "aux.classifier"} <= added
    removed = {n["node"] for n in result["graph"]["removed"]}
    assert {"backbone.stem.conv2", "backbone.stem.conv3"} <= removed


def test_table_output_names_every_section(capsys):
    code, out, _ = run(capsys, "diff", V3, TORCHVISION)
    assert code == 1
    for title in ("spec", "schedule", "cost", "graph", "weights"):
        assert f"\n{title}" in out
    assert "backbone.stem" in out and "conv7" in out


# ------------------------------------------------------------------------------------------------
# Pieces


def test_spec_changes_walks_mappings_and_lists_of_mappings():
    a = {"x": 1, "rates": [6, 12, 18], "stages": [{"n": 1}, {"n": 2}], "gone": {"k": 1}}
    b = {"x": 1, "rates": [12, 24, 36], "stages": [{"n": 1}, {"n": 3}], "gone": None, "new": 5}
    assert spec_changes(a, b) == [
        {"path": "rates", "a": [6, 12, 18], "b": [12, 24, 36]},
        {"path": "stages[1].n", "a": 2, "b": 3},
        {"path": "gone", "a": {"k": 1}, "b": None},
        {"path": "new", "a": None, "b": 5},
    ]
    # Lists of different lengths are one value.
    assert spec_changes({"s": [{"n": 1}]}, {"s": [{"n": 1}, {"n": 2}]}) == [
        {"path": "s", "a": [{"n": 1}], "b": [{"n": 1}, {"n": 2}]}]


def test_compact_names():
    assert compact_names(["a.bn.bias", "a.bn.weight", "a.conv.weight", "top"]) == [
        "a.bn.{bias, weight}", "a.conv.weight", "top"]
