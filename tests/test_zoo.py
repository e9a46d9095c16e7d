"""``specc zoo``: every shipped spec listed once with its source, size, cost at 513×513 and the
weights that import into it; figures checked against torchvision's own records and a hand count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_deeplab_v1v2 import vgg_hand_count

from specc.cli import main
from specc.zoo import zoo

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


@pytest.fixture(scope="module")
def entries() -> dict[str, dict]:
    """The zoo's entries as ``specc zoo --json`` prints them, by spec name (made once)."""
    return {e.name: e.as_json() for e in zoo(SPECS)}


def test_every_spec_once_with_its_source(entries: dict[str, dict]) -> None:
    files = sorted(p.relative_to(SPECS).as_posix() for p in SPECS.rglob("*.yaml"))
    assert sorted(e["path"] for e in entries.values()) == files
    for e in entries.values():
        expected = e["path"].split("/")[1].split("_")[0] if e["path"].startswith("zoo/") \
            else "papers"
        assert e["source"] == expected
        assert e["macs_at"] == [513, 513]


def test_torchvision_parameter_counts_match_torchvision_records(entries: dict[str, dict]) -> None:
    """The parameter counts torchvision records with its pretrained weights (read from the
    weights' metadata; nothing is downloaded)."""
    seg = pytest.importorskip("torchvision.models.segmentation")
    records = {
        "torchvision_fcn_resnet50": seg.FCN_ResNet50_Weights,
        "torchvision_fcn_resnet101": seg.FCN_ResNet101_Weights,
        "torchvision_deeplabv3_resnet50": seg.DeepLabV3_ResNet50_Weights,
        "torchvision_deeplabv3_resnet101": seg.DeepLabV3_ResNet101_Weights,
        "torchvision_deeplabv3_mobilenet_v3_large": seg.DeepLabV3_MobileNet_V3_Large_Weights,
        "torchvision_lraspp_mobilenet_v3_large": seg.LRASPP_MobileNet_V3_Large_Weights,
    }
    for name, weights in records.items():
        assert entries[name]["params"] == weights.DEFAULT.meta["num_params"], name
        assert entries[name]["weights"]["torchvision"] == "model", name


def test_costs_and_weights_of_the_papers_models(entries: dict[str, dict]) -> None:
    assert (entries["deeplabv1_largefov_vgg16"]["params"],
            entries["deeplabv1_largefov_vgg16"]["macs"]) == vgg_hand_count(513, [12])
    assert entries["deeplabv1_largefov_vgg16"]["weights"] == {}
    # An ImageNet torchvision ResNet-101 fits its backbone; its heads have no counterpart.
    # ResNet backbones take the ImageNet ResNets of torchvision, timm, smp's encoders and mmseg
    assert entries["deeplabv2_aspp_resnet101"]["weights"] == {
        "torchvision": "backbone", "timm": "backbone", "smp": "backbone", "mmseg": "backbone"}
    assert entries["deeplabv3plus_xception"]["weights"] == {"timm": "backbone"}
    # block5-7 of the cascade exist in no library: no weights to take whole or in part
    assert entries["deeplabv3_resnet101_cascade"]["weights"] == {}
    assert entries["smp_deeplabv3_resnet34"]["weights"]["smp"] == "model"
    assert entries["mmseg_deeplabv3_r50_d8"]["weights"]["mmseg"] == "model"


def test_command_prints_a_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "zoo", "--root", SPECS)
    assert code == 0 and not err
    assert "zoo/torchvision_lraspp_mobilenet_v3_large.yaml" in out and "3.2 M" in out
    code, out, _ = run(capsys, "zoo", "--root", SPECS, "--json")
    assert code == 0
    listed = json.loads(out)
    assert {e["name"] for e in listed} >= {"torchvision_fcn_resnet50", "deeplabv2_aspp_vgg16"}
    assert listed[0]["source"] != "papers"  # the libraries' models first


def test_missing_root_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "zoo", "--root", tmp_path / "nope")
    assert code == 2 and "expected a folder of specs" in err and "Traceback" not in err


def test_the_cascades_extra_stages_are_named_by_every_resnet_importer() -> None:
    """Every library's ResNet has 4 stages; importing one into the cascade says which of the
    spec's stages it leaves without weights, naming the library."""
    import torch

    from specc.api import build, load_spec
    from specc.importers import timm_resnet_plan, torchvision_plan

    net = build(load_spec(SPECS / "deeplabv3_resnet101_cascade.yaml")).network
    extra = ", ".join(stage.name for stage in net.stages[4:])
    assert extra.count(",") == 2  # block5, block6, block7
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(1)}
    for plan, owner in ((torchvision_plan(net, resnet), "torchvision ResNets"),
                        (timm_resnet_plan(net, resnet), "timm's ResNets")):
        assert f"{owner} have 4 stages; the spec's {extra} have no counterpart" in plan.notes
        theirs = set(plan.prefixes.values())
        assert any(name.startswith("layer4.") for name in theirs)  # the 4 stages still map
