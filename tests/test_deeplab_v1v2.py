"""DeepLab v1/v2 (VGG-16 LargeFOV and ASPP-L, ResNet-101 ASPP-L): costs against a hand count
made from the papers' layer lists, and the generated modules against the same layers by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from specc.api import build, load_spec

ROOT = Path(__file__).resolve().parents[1]
V1 = ROOT / "specs/deeplabv1_largefov_vgg16.yaml"
V2_VGG = ROOT / "specs/deeplabv2_aspp_vgg16.yaml"
V2_RESNET = ROOT / "specs/deeplabv2_aspp_resnet101.yaml"
SIDE = 65
#: VGG-16's convs per stage: (channels, convs); every stage ends in a 3×3 max-pool, padding 1.
VGG16 = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def pooled(side: int, stride: int) -> int:
    """Side after a 3×3 max-pool with padding 1."""
    return (side + 2 - 3) // stride + 1


def vgg_hand_count(side: int, rates: list[int], classes: int = 21) -> tuple[int, int]:
    """(parameters, multiply-adds) of DeepLab's VGG-16 at output stride 8 with fc6 → fc7 → fc8
    branches at ``rates``, counted layer by layer: a k×k conv from c to d channels on an s×s map
    costs k²·c·d·s² multiply-adds and has k²·c·d + d parameters (bias, no norm)."""
    params = macs = 0
    c = 3
    for i, (d, convs) in enumerate(VGG16):
        for _ in range(convs):
            params += 9 * c * d + d
            macs += 9 * c * d * side * side
            c = d
        side = pooled(side, 2 if i < 3 else 1)  # pool4 and pool5 de-strided
    for _ in rates:
        for k, cin, cout in ((3, c, 1024), (1, 1024, 1024), (1, 1024, classes)):
            params += k * k * cin * cout + cout
            macs += k * k * cin * cout * side * side
    return params, macs


def totals(path: Path, *overrides: str) -> tuple[int, int]:
    graph = build(load_spec(path, list(overrides))).network.graph
    return (sum(d["params"] for _, d in graph.nodes(data=True)),
            sum(d["macs"] for _, d in graph.nodes(data=True)))


@pytest.mark.parametrize(("path", "rates"), [(V1, [12]), (V2_VGG, [6, 12, 18, 24])],
                         ids=["v1_largefov", "v2_aspp_vgg16"])
@pytest.mark.parametrize("side", [SIDE, 513])
def test_vgg_costs_match_the_hand_count(path: Path, rates: list[int], side: int) -> None:
    assert totals(path, f"input.size=[{side}, {side}]") == vgg_hand_count(side, rates)


def test_largefov_has_the_papers_parameter_count() -> None:
    """DeepLab v1 §4.1: DeepLab-LargeFOV has 20.5M parameters."""
    params, _ = totals(V1)
    assert round(params / 1e6, 1) == 20.5


def test_resnet101_aspp_head_costs_match_the_hand_count() -> None:
    """Four 3×3 convs 2048 → 21 at rates 6, 12, 18, 24 on the 1/8 map, with bias."""
    graph = build(load_spec(V2_RESNET, [f"input.size=[{SIDE}, {SIDE}]"])).network.graph
    head = [d for n, d in graph.nodes(data=True) if n.startswith("fc_aspp.")]
    side = 9  # 65 → 33 (conv 7×7/2) → 17 (max-pool) → 9 (layer2); layers 3 and 4 dilated
    assert sum(d["params"] for d in head) == 4 * (9 * 2048 * 21 + 21)
    assert sum(d["macs"] for d in head) == 4 * 9 * 2048 * 21 * side * side


def test_vgg_v2_module_is_the_papers_layers(tmp_path: Path) -> None:
    """The compiled ASPP-L VGG-16 against the same layers written as functional calls."""
    torch.manual_seed(0)
    module = build(load_spec(V2_VGG, [f"input.size=[{SIDE}, {SIDE}]"])).module.eval()
    x = torch.randn(1, 3, SIDE, SIDE + 8)
    with torch.no_grad():
        y = x
        stages = [module.backbone.conv1, module.backbone.conv2, module.backbone.conv3,
                  module.backbone.conv4, module.backbone.conv5]
        for i, stage in enumerate(stages):
            convs = [m for m in stage[0].convs if isinstance(m, torch.nn.Conv2d)]
            for conv in convs:
                rate = 2 if i == 4 else 1
                y = F.relu(F.conv2d(y, conv.weight, conv.bias, padding=rate, dilation=rate))
            y = F.max_pool2d(y, 3, stride=2 if i < 3 else 1, padding=1)
        logits = 0
        for branch, rate in zip(module.fc_aspp.branches, [6, 12, 18, 24], strict=True):
            z = F.relu(F.conv2d(y, branch.fc6.weight, branch.fc6.bias, padding=rate,
                                dilation=rate))
            z = F.relu(F.conv2d(z, branch.fc7.weight, branch.fc7.bias))
            logits = logits + F.conv2d(z, branch.fc8.weight, branch.fc8.bias)
        want = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)
        got = module(x)["out"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
