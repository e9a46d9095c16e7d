"""specc's zoo specs of torchvision's other segmentation models against torchvision itself.

Each reference is built with ``weights=None, weights_backbone=None`` and ``aux_loss=True`` where
the model has an auxiliary head (nothing is downloaded), its weights and batch-norm statistics randomized (``test_equivalence.randomize``),
saved as a state dict, moved through ``specc import-weights --from torchvision`` as a user's
would, and both models are run in eval mode on an odd, non-square image.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_equivalence import compare, import_weights, n_params, randomize
from torch import nn

from specc.api import build, load_spec
from specc.artifacts import FULL, load_weights, read_weights

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "specs/zoo"
HEIGHT, WIDTH = 65, 73  # odd, unequal, not multiples of the output stride

torchvision = pytest.importorskip("torchvision")


def odd_image(seed: int) -> torch.Tensor:
    return torch.randn(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


def reference(name: str, folder: Path, seed: int) -> tuple[nn.Module, Path]:
    """torchvision's ``name`` model with random weights, and its state dict saved in ``folder``."""
    factory = getattr(torchvision.models.segmentation, name)
    aux = {} if name.startswith("lraspp") else {"aux_loss": True}  # LR-ASPP has no aux head
    model = randomize(factory(weights=None, weights_backbone=None, **aux), seed=seed)
    path = folder / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return model, path


def check_equivalent(name: str, folder: Path, seed: int) -> None:
    """Import torchvision's ``name`` into ``specs/zoo/torchvision_<name>.yaml`` and compare."""
    ref, src = reference(name, folder, seed)
    spec = ZOO / f"torchvision_{name}.yaml"
    out = import_weights(spec, src, "torchvision", folder / "w.safetensors")
    weights = read_weights(out)
    assert weights.contents == FULL
    module = build(load_spec(spec)).module
    assert n_params(module) == n_params(ref)
    load_weights(module, weights)
    module.eval()
    x = odd_image(seed)
    with torch.no_grad():
        expected, got = ref(x), module(x)
    assert set(got) == set(expected)
    for key in expected:
        compare(f"{name} {key}", got[key], expected[key])


@pytest.mark.parametrize("depth", [50, 101])
def test_torchvision_fcn_resnet(depth: int, tmp_path: Path) -> None:
    check_equivalent(f"fcn_resnet{depth}", tmp_path, seed=depth + 1)


def test_torchvision_deeplabv3_mobilenet_v3_large(tmp_path: Path) -> None:
    check_equivalent("deeplabv3_mobilenet_v3_large", tmp_path, seed=3)


def test_torchvision_lraspp_mobilenet_v3_large(tmp_path: Path) -> None:
    check_equivalent("lraspp_mobilenet_v3_large", tmp_path, seed=4)


def test_imagenet_mobilenet_v3_large_backbone_only(tmp_path: Path) -> None:
    """torchvision's ImageNet MobileNetV3-Large (dilated as the segmentation models build it)
    imports into the zoo spec's backbone; its classifier is dropped."""
    ref = randomize(torchvision.models.mobilenet_v3_large(weights=None, dilated=True), seed=5)
    src = tmp_path / "mobilenet_v3_large.pth"
    torch.save(ref.state_dict(), src)
    spec = ZOO / "torchvision_lraspp_mobilenet_v3_large.yaml"
    out = import_weights(spec, src, "torchvision", tmp_path / "bb.safetensors", "--backbone-only")
    module = build(load_spec(spec)).module
    left = load_weights(module, read_weights(out), partial=True)
    assert {k.split(".")[0] for k in left} == {"lraspp"}
    x = odd_image(5)
    with torch.no_grad():
        compare("mobilenet_v3_large features", module.backbone.eval()(x)["out"], ref.features(x))
