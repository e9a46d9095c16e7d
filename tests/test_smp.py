"""specc against segmentation_models_pytorch's DeepLabV3 and DeepLabV3Plus.

smp's models are built with ``encoder_weights=None`` (nothing is downloaded), their weights and
batch-norm statistics randomized, saved as a state dict and brought over with
``specc import-weights --from smp``, as a user would; the outputs are compared in eval mode.
smp refuses an input whose sides are not multiples of the encoder's output stride, so the input
is the smallest odd-looking size it takes: sides that are odd multiples of the output stride
(48×80 at output stride 16, 40×56 at 8), neither a power of two nor square.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_equivalence import compare, import_weights, n_params, randomize

from specc.api import build, load_spec
from specc.artifacts import load_weights, read_weights
from specc.presets import RESNET_STEMS, resnet

smp = pytest.importorskip("segmentation_models_pytorch")

ROOT = Path(__file__).resolve().parents[1]
V3 = ROOT / "specs/zoo/smp_deeplabv3_resnet34.yaml"
V3PLUS = ROOT / "specs/zoo/smp_deeplabv3plus_resnet50_os8.yaml"
SIZES = {8: (40, 56), 16: (48, 80)}
CLASSES = 5


def smp_model(kind: str, seed: int, **options: Any) -> torch.nn.Module:
    """An smp model with random weights and non-trivial batch-norm statistics, in eval mode."""
    model = getattr(smp, kind)(encoder_weights=None, classes=CLASSES, **options)
    return randomize(model, seed, size=SIZES[model.encoder.output_stride])


def three_stages(tmp_path: Path) -> Path:
    """smp's DeepLabV3 with ``encoder_depth=4`` as explicit stages: ResNet-34 without layer4."""
    stem = RESNET_STEMS["conv7"].model_dump(mode="json")
    stages = [s.model_dump(mode="json", exclude_none=True)
              for s in resnet(34, "first", "conv7")[1][:3]]
    doc = yaml.safe_load(V3.read_text(encoding="utf-8"))
    doc["name"] = "smp_deeplabv3_resnet34_depth4"
    doc["backbone"] = {"stem": stem, "stages": stages, "stride_placement": "first",
                       "destrided_rate": "new", "output_stride": 8}
    path = tmp_path / "depth4.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


#: id → (smp class, its options, our spec, --set overrides)
CASES: dict[str, tuple[str, dict[str, Any], Path | None, list[str]]] = {
    "v3-defaults": ("DeepLabV3", {}, V3, []),
    "v3-os16-separable-rates-channels": (
        "DeepLabV3", {"encoder_output_stride": 16, "decoder_aspp_separable": True,
                      "decoder_channels": 64, "decoder_atrous_rates": (6, 12, 18),
                      "decoder_aspp_dropout": 0.2},
        V3, ["backbone.output_stride=16", "aspp.style={conv: separable, depthwise_norm: false}",
             "aspp.channels=64", "aspp.projection={channels: 64, dropout: 0.2}",
             "aspp.extra_conv.channels=64", "aspp.rates=[6, 12, 18]"]),
    "v3-encoder-depth-4": ("DeepLabV3", {"encoder_depth": 4}, None, []),
    "v3plus-defaults": ("DeepLabV3Plus", {"encoder_name": "resnet50"}, V3PLUS,
                        ["backbone.output_stride=16"]),
    "v3plus-os8": ("DeepLabV3Plus", {"encoder_name": "resnet50", "encoder_output_stride": 8},
                   V3PLUS, []),
    "v3plus-resnext-os8-plain-aspp": (
        "DeepLabV3Plus", {"encoder_name": "resnext50_32x4d", "encoder_output_stride": 8,
                          "decoder_aspp_separable": False, "decoder_channels": 64},
        V3PLUS, ["backbone.preset=resnext50_32x4d",
                 "aspp.style.conv=plain", "aspp.channels=64", "aspp.projection.channels=64",
                 "aspp.extra_conv.channels=64", "decoder.channels=64"]),
    "v3plus-resnet34-upsampling-4": (
        "DeepLabV3Plus", {"encoder_name": "resnet34", "upsampling": 4}, V3PLUS,
        ["backbone.preset=resnet34", "backbone.output_stride=16"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_smp_equivalence(case: str, tmp_path: Path) -> None:
    kind, options, spec, overrides = CASES[case]
    ref = smp_model(kind, seed=len(case), **options)
    src = tmp_path / "smp.pth"
    torch.save(ref.state_dict(), src)
    spec = spec or three_stages(tmp_path)
    sets = [f"num_classes={CLASSES}", *overrides]
    out = import_weights(spec, src, "smp", tmp_path / "w.safetensors",
                         *[a for s in sets for a in ("--set", s)])
    module = build(load_spec(spec, sets)).module
    unused = n_params(ref.encoder.layer4) if options.get("encoder_depth", 5) < 5 else 0
    assert n_params(module) == n_params(ref) - unused  # smp keeps a shallower encoder's layer4
    load_weights(module, read_weights(out))
    module.eval()
    h, w = SIZES[ref.encoder.output_stride]
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = ref(x), module(x)
    assert set(got) == {"out"}
    compare(f"smp {case}", got["out"], expected)


def test_diff_torchvision_and_smp_deeplabv3_shows_exactly_what_differs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """torchvision's deeplabv3_resnet50 and smp's DeepLabV3 on a ResNet-50 at the same input
    size differ in three architectural choices only: smp dilates the de-strided unit at the
    stage's new rate, has no auxiliary head and upsamples with align_corners=True."""
    import json

    from test_equivalence import specc_cli

    tv = ROOT / "specs/zoo/torchvision_deeplabv3_resnet50.yaml"
    code = specc_cli("diff", tv, V3, "--set-b", "backbone.preset=resnet50", "--set-b",
                     "input.size=[520,520]", "--format", "json")  # the same input size
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    changes = {c["path"]: (c["a"], c["b"]) for c in report["spec_changes"]}
    assert changes.pop("name") == ("torchvision_deeplabv3_resnet50", "smp_deeplabv3_resnet34")
    assert changes == {
        "backbone.destrided_rate": ("previous", "new"),
        "aux": ({"tap": "backbone.block3", "channels": 256, "dropout": 0.1}, None),
        "output.upsample.align_corners": (False, True),
    }
    graph = report["graph"]
    assert not graph["added"]
    assert {n["node"] for n in graph["removed"]} == {"aux.conv", "aux.classifier", "aux.upsample"}
    dilated = {c["node"]: c["changes"]["dilation"] for c in graph["changed"]
               if "dilation" in c["changes"]}
    assert dilated == {"backbone.block3.unit1.conv2": {"a": 1, "b": 2},
                       "backbone.block4.unit1.conv2": {"a": 2, "b": 4}}
    upsample = next(c for c in graph["changed"] if c["node"] == "upsample")
    assert upsample["changes"] == {"align_corners": {"a": False, "b": True}}


def test_smp_classification_head_is_reported(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """smp's optional classification head (aux_params) has no counterpart: the import names it
    and suggests --backbone-only, which then succeeds."""
    from test_equivalence import specc_cli

    ref = smp.DeepLabV3(encoder_name="resnet34", encoder_weights=None, classes=CLASSES,
                        aux_params={"classes": 3})
    src = tmp_path / "smp.pth"
    torch.save(ref.state_dict(), src)
    args = ["import-weights", V3, src, "--from", "smp", "--set", f"num_classes={CLASSES}"]
    assert specc_cli(*args, "--out", tmp_path / "w.safetensors") == 2
    err = capsys.readouterr().err
    assert "2 unexpected" in err and "classification_head.3.weight" in err
    assert "smp's classification head (aux_params) has no counterpart" in err
    assert specc_cli(*args, "--backbone-only", "--out", tmp_path / "b.safetensors") == 0
