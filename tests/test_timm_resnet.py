"""specc's ResNet presets against timm's ResNets: ``specc import-weights --from timm`` brings a
timm ResNet's weights (the ImageNet classifier dropped) into a spec's backbone, and the
backbone's output equals timm's ``forward_features`` at the same output stride. timm's models are
built with ``pretrained=False`` and randomized (nothing is downloaded); the input is odd-sized."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_equivalence import compare, import_weights, randomize

from specc.api import build, load_spec
from specc.artifacts import BACKBONE, load_weights, read_weights

timm = pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs/zoo/torchvision_deeplabv3_resnet50.yaml"
SIZE = (65, 73)
DEEP_STEM = ("backbone.stem={convs: [{channels: 32, kernel: 3, stride: 2}, {channels: 32, "
             "kernel: 3}, {channels: 64, kernel: 3}], pool: max}")

#: id → (timm model, its output stride, --set overrides of the torchvision ResNet-50 spec)
CASES = {
    "resnet50-os8": ("resnet50", 8, []),
    "resnet50d-os32": ("resnet50d", 32, [DEEP_STEM, "backbone.downsample=avgpool",
                                         "backbone.output_stride=32"]),
    "resnext50-os16": ("resnext50_32x4d", 16, ["backbone.preset=resnext50_32x4d",
                                               "backbone.output_stride=16"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_timm_resnet_backbone(case: str, tmp_path: Path) -> None:
    name, output_stride, overrides = CASES[case]
    ref = randomize(timm.create_model(name, pretrained=False, output_stride=output_stride),
                    seed=len(case), size=SIZE)
    src = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), src)
    sets = [a for s in overrides for a in ("--set", s)]
    out = import_weights(SPEC, src, "timm", tmp_path / "w.safetensors", "--backbone-only", *sets)
    weights = read_weights(out)
    assert weights.contents == BACKBONE
    module = build(load_spec(SPEC, overrides)).module
    load_weights(module, weights, partial=True)
    module.eval()
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        compare(f"timm {case}", module.backbone(x)["out"], ref.forward_features(x))
