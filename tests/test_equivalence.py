"""specc models against independent implementations: move the weights across, compare the outputs.

The references are torchvision's DeepLabV3 and ImageNet ResNets and timm's aligned Xception-65,
all built with ``weights=None`` / ``pretrained=False`` (nothing is downloaded). Their weights are
randomized and their batch-norm statistics made non-trivial first: with the default
initialisation every batch norm is the identity, which would hide a misplaced norm or ReLU.
The weights travel through ``specc import-weights`` exactly as a user's would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from specc.api import build, load_spec
from specc.artifacts import BACKBONE, FULL, load_weights, read_weights
from specc.cli import main
from specc.errors import WeightsError
from specc.importers import differences

ROOT = Path(__file__).resolve().parents[1]
ZOO = {depth: ROOT / f"specs/zoo/torchvision_deeplabv3_resnet{depth}.yaml" for depth in (50, 101)}
XCEPTION = ROOT / "specs/deeplabv3plus_xception.yaml"
# Parameter counts of torchvision's deeplabv3_resnet50/101(aux_loss=True).
TORCHVISION_PARAMS = {50: 42_004_074, 101: 60_996_202}
SIZE = 97  # input side: small, odd, not a multiple of the output stride
CALIBRATION = SIZE  # side of the batch that sets the batch-norm statistics
RTOL = 1e-4

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def randomize(model: nn.Module, seed: int, size: tuple[int, int] = (CALIBRATION, CALIBRATION)
              ) -> nn.Module:
    """Random weights and random, non-identity batch-norm statistics (the model in eval mode).

    Batch-norm statistics are first measured on a random batch (so activations keep a sane scale
    through 100 layers), then perturbed: each mean moved by 0.2 σ, each variance scaled by
    0.8–1.25, so that no batch norm normalizes exactly. ``size`` is the calibration batch's
    (libraries that want sides divisible by the output stride need another).
    """
    g = torch.Generator().manual_seed(seed)
    norms = []
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                norms.append((m, m.momentum))
                m.momentum = 1.0  # running stats := this batch's
        model.train()
        model(torch.randn(2, 3, *size, generator=g))
        model.eval()
        for m, momentum in norms:
            m.momentum = momentum
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g)
                                * 0.2 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 0.45 + 0.8)
            m.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))
    return model


def image(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    """assert_close within RTOL of the reference's largest value; prints the differences."""
    assert ours.shape == ref.shape, f"{name}: {tuple(ours.shape)} vs {tuple(ref.shape)}"
    scale = ref.abs().max().item()
    diff = (ours - ref).abs().max().item()
    print(f"\n{name}: shape {tuple(ref.shape)}, max |ref| {scale:.4g}, mean |ref| "
          f"{ref.abs().mean().item():.4g}, max abs diff {diff:.3g}, max rel diff {diff / scale:.3g}")
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=RTOL * scale)


def specc_cli(*args: object) -> int:
    """Run the specc command line in this process; its exit code."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code or 0)


def import_weights(spec: Path, src: Path, from_: str, out: Path, *extra: object) -> Path:
    assert specc_cli("import-weights", spec, src, "--from", from_, "--out", out, *extra) == 0
    return out


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- references -----------------------------------------------------------------------------------


def _torchvision_deeplab(depth: int, folder: Path) -> tuple[nn.Module, Path]:
    factory = getattr(torchvision.models.segmentation, f"deeplabv3_resnet{depth}")
    model = randomize(factory(weights=None, weights_backbone=None, aux_loss=True), seed=depth)
    path = folder / f"deeplabv3_resnet{depth}.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def tv50(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    return _torchvision_deeplab(50, tmp_path_factory.mktemp("tv50"))


@pytest.fixture(scope="module")
def tv101(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    return _torchvision_deeplab(101, tmp_path_factory.mktemp("tv101"))


@pytest.fixture(scope="module")
def imagenet_resnet50(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """torchvision's ImageNet ResNet-50, dilated like DeepLabV3's backbone (output stride 8)."""
    model = randomize(torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=[False, True, True]), seed=7)
    path = tmp_path_factory.mktemp("resnet50") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def xception65(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path]:
    """timm's xception65 state dict (randomized at output stride 16; the weights fit any)."""
    model = randomize(timm.create_model("xception65", pretrained=False, output_stride=16), seed=65)
    path = tmp_path_factory.mktemp("xception65") / "xception65.pth"
    torch.save(model.state_dict(), path)
    return model.state_dict(), path


# -- torchvision DeepLabV3 ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [50, 101])
def test_torchvision_deeplabv3(depth: int, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    ref, src = request.getfixturevalue(f"tv{depth}")
    assert n_params(ref) == TORCHVISION_PARAMS[depth]
    out = import_weights(ZOO[depth], src, "torchvision", tmp_path / "w.safetensors")
    weights = read_weights(out)
    assert weights.contents == FULL
    module = build(load_spec(ZOO[depth])).module
    assert n_params(module) == TORCHVISION_PARAMS[depth]
    load_weights(module, weights)
    module.eval()
    x = image()
    with torch.no_grad():
        expected, got = ref(x), module(x)
    assert set(got) == {"out", "aux"}
    compare(f"deeplabv3_resnet{depth} out", got["out"], expected["out"])
    compare(f"deeplabv3_resnet{depth} aux", got["aux"], expected["aux"])


def test_build_with_weights_gives_a_torchscript_archive_of_torchvision(
        tv50: tuple[nn.Module, Path], tmp_path: Path) -> None:
    """The whole user path: import-weights, then `specc build --weights`, then torch.jit.load."""
    ref, src = tv50
    weights = import_weights(ZOO[50], src, "torchvision", tmp_path / "w.safetensors")
    assert specc_cli("build", ZOO[50], "--weights", weights, "--out", tmp_path / "out") == 0
    scripted = torch.jit.load(str(tmp_path / "out" / "torchvision_deeplabv3_resnet50" / "model.pt"))
    x = image(seed=3)
    with torch.no_grad():
        expected, got = ref(x), scripted(x)
    compare("model.pt out", got["out"], expected["out"])
    compare("model.pt aux", got["aux"], expected["aux"])


# -- torchvision ImageNet ResNet → backbone only --------------------------------------------------


def test_imagenet_resnet50_backbone_only(imagenet_resnet50: tuple[nn.Module, Path],
                                         tmp_path: Path) -> None:
    ref, src = imagenet_resnet50
    out = import_weights(ZOO[50], src, "torchvision", tmp_path / "bb.safetensors",
                         "--backbone-only")
    weights = read_weights(out)
    assert weights.contents == BACKBONE
    state = weights.state
    assert state and all(k.startswith("backbone.") for k in state)

    module = build(load_spec(ZOO[50])).module
    left = load_weights(module, weights, partial=True)
    assert left == sorted(k for k in module.state_dict() if not k.startswith("backbone."))
    assert {k.split(".")[0] for k in left} == {"aspp", "extra", "classifier", "aux"}
    # A backbone-only file is not a whole model: `specc build --weights` refuses it.
    with pytest.raises(WeightsError, match=r"missing: .*aspp\.convs\.0\.bn\.bias"):
        load_weights(build(load_spec(ZOO[50])).module, state)
    with pytest.raises(WeightsError, match="holds backbone weights only"):
        load_weights(build(load_spec(ZOO[50])).module, weights)

    backbone = module.backbone.eval()
    x = image(2)
    with torch.no_grad():
        y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        y = ref.layer4(ref.layer3(ref.layer2(ref.layer1(y))))
        compare("resnet50 (ImageNet) layer4", backbone(x)["out"], y)


def test_imagenet_resnet50_needs_backbone_only(imagenet_resnet50: tuple[nn.Module, Path],
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _, src = imagenet_resnet50
    out = tmp_path / "w.safetensors"
    code = specc_cli("import-weights", ZOO[50], src, "--from", "torchvision", "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "52 missing" in err and "[aspp 36, extra 6, classifier 2, aux 8]" in err
    assert "aspp.convs.0.conv.weight" in err
    assert "Traceback" not in err


def test_import_errors_name_the_source_file(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A state dict of no torchvision model: the message starts with the file it is about."""
    src = tmp_path / "other.pth"
    torch.save({"encoder.conv.weight": torch.zeros(1)}, src)
    code = specc_cli("import-weights", ZOO[50], src, "--from", "torchvision", "--out",
                     tmp_path / "w.safetensors")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {src}: not a torchvision ResNet, MobileNetV3 or segmentation")


def test_importing_specc_weights_says_they_need_no_import(
        imagenet_resnet50: tuple[nn.Module, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A file specc wrote is not torchvision's: refused, with where it goes instead."""
    _, src = imagenet_resnet50
    ours = tmp_path / "ours.safetensors"
    assert specc_cli("import-weights", ZOO[50], src, "--from", "torchvision", "--out", ours,
                     "--backbone-only") == 0
    capsys.readouterr()
    code = specc_cli("import-weights", ZOO[50], ours, "--from", "torchvision", "--out",
                     tmp_path / "again.safetensors")
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "again.safetensors").exists()
    assert f"error: {ours}: already specc's weights" in err
    assert "specc build --weights or specc train --init as it is" in err


# -- timm aligned Xception-65 ---------------------------------------------------------------------


@pytest.mark.parametrize("output_stride", [16, 8])
def test_timm_xception65_backbone(output_stride: int, xception65: tuple[dict, Path],
                                  tmp_path: Path) -> None:
    state, src = xception65
    ref = timm.create_model("xception65", pretrained=False, output_stride=output_stride)
    ref.load_state_dict(state)
    ref.eval()
    overrides = ["backbone.multi_grid=null", f"backbone.output_stride={output_stride}"]
    out = import_weights(XCEPTION, src, "timm", tmp_path / "x.safetensors", "--backbone-only",
                         *[a for o in overrides for a in ("--set", o)])
    imported = read_weights(out)
    module = build(load_spec(XCEPTION, overrides)).module
    load_weights(module, imported, partial=True)
    x = image(3)
    with torch.no_grad():
        theirs = ref.forward_features(x)
        compare(f"xception65 OS {output_stride} features", module.backbone.eval()(x)["out"],
                theirs)
    if output_stride == 16:
        # The shipped spec's multi-grid (1, 2, 4) is not timm's network, and the test sees it.
        module = build(load_spec(XCEPTION)).module
        load_weights(module, imported, partial=True)
        with torch.no_grad():
            ours = module.backbone.eval()(x)["out"]
        assert (ours - theirs).abs().max() > 100 * RTOL * theirs.abs().max()


def test_timm_needs_backbone_only(xception65: tuple[dict, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    _, src = xception65
    out = tmp_path / "x.safetensors"
    assert specc_cli("import-weights", XCEPTION, src, "--from", "timm", "--out", out) == 2
    err = capsys.readouterr().err
    assert "86 missing" in err and "[aspp 54, decoder 30, classifier 2]" in err
    assert "pass --backbone-only" in err and not out.exists()


# -- errors ---------------------------------------------------------------------------------------


def test_missing_file_exits_2_without_traceback(tmp_path: Path) -> None:
    """Through a real `python -m specc` process."""
    missing = tmp_path / "nope.pth"
    proc = subprocess.run(
        [sys.executable, "-m", "specc", "import-weights", str(ZOO[50]), str(missing),
         "--from", "torchvision", "--out", str(tmp_path / "w.safetensors")],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"{missing}: no such weights file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("payload", "message"), [
    (b"this is not a checkpoint", "expected weights (a run or checkpoint folder"),
    ([1, 2, 3], "expected a state dict (names → tensors), found list"),
])
def test_not_a_state_dict(payload: object, message: str, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.pth"
    if isinstance(payload, bytes):
        src.write_bytes(payload)
    else:
        torch.save(payload, src)
    assert specc_cli("import-weights", ZOO[50], src, "--from", "torchvision",
                     "--out", tmp_path / "w.safetensors") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "caffe"], "--from: expected one of torchvision, timm, smp, mmseg, found 'caffe'"),
    (["--from", "timm"], "not a timm aligned-Xception or ResNet state dict"),
    (["--from", "torchvision", "--out", "w.pth"], "--out: expected a .safetensors file"),
])
def test_bad_options(args: list[str], message: str, tv50: tuple[nn.Module, Path], tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    _, src = tv50
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "w.safetensors")]
    assert specc_cli("import-weights", ZOO[50], src, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resnet101_into_resnet50_spec(tv101: tuple[nn.Module, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Every ResNet-50 tensor has a counterpart, but layer3.6–22 would be left over."""
    _, src = tv101
    out = tmp_path / "w.safetensors"
    assert specc_cli("import-weights", ZOO[50], src, "--from", "torchvision", "--out", out) == 2
    err = capsys.readouterr().err
    assert "unexpected" in err and "backbone.layer3.6.conv1.weight" in err
    assert "306 unexpected" in err and "[backbone.layer3 306]" in err  # 17 units × 18 tensors
    assert "missing" not in err and not out.exists()


def test_resnet50_into_resnet101_spec(tv50: tuple[nn.Module, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, src = tv50
    assert specc_cli("import-weights", ZOO[101], src, "--from", "torchvision",
                     "--out", tmp_path / "w.safetensors") == 2
    err = capsys.readouterr().err
    assert "306 missing" in err
    assert "backbone.block3.6.conv1.bn.bias (← backbone.layer3.6.bn1.bias)" in err


def test_wrong_number_of_classes(tv50: tuple[nn.Module, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, src = tv50
    assert specc_cli("import-weights", ZOO[50], src, "--from", "torchvision", "--set",
                     "num_classes=19", "--out", tmp_path / "w.safetensors") == 2
    err = capsys.readouterr().err
    assert "4 of the wrong shape" in err
    assert "classifier.weight ← classifier.4.weight (21, 256, 1, 1), expected (19, 256, 1, 1)" in err
    assert "aux.classifier.bias ← aux_classifier.4.bias (21,), expected (19,)" in err
    assert "missing" not in err and "unexpected" not in err


def test_model_without_aux_head_imports_as_the_message_says(
        tv50: tuple[nn.Module, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """torchvision's aux_loss=False saves no aux_classifier: the message points to --set aux=null
    (not --backbone-only, which would drop the trained ASPP and classifier), and that import
    gives torchvision's output."""
    ref, full = tv50
    src = tmp_path / "no_aux.pth"
    torch.save({k: v for k, v in torch.load(full, weights_only=True).items()
                if not k.startswith("aux_classifier.")}, src)
    out = tmp_path / "w.safetensors"
    assert specc_cli("import-weights", ZOO[50], src, "--from", "torchvision", "--out", out) == 2
    err = capsys.readouterr().err
    assert "8 missing" in err and "--set aux=null" in err and "--backbone-only" not in err
    import_weights(ZOO[50], src, "torchvision", out, "--set", "aux=null")
    module = build(load_spec(ZOO[50], ["aux=null"])).module
    load_weights(module, read_weights(out))
    x = image()
    with torch.no_grad():
        compare("deeplabv3_resnet50 without aux", module.eval()(x)["out"], ref(x)["out"])


def test_partial_load_rejects_foreign_tensors() -> None:
    module = build(load_spec(ZOO[50])).module
    with pytest.raises(WeightsError, match=r"1 unexpected: backbone\.nope"):
        load_weights(module, {"backbone.nope": torch.zeros(1)}, partial=True)
    with pytest.raises(WeightsError, match=r"classifier\.bias \(3,\), expected \(21,\)"):
        load_weights(module, {"classifier.bias": torch.zeros(3)}, partial=True)
    with pytest.raises(WeightsError, match="no tensors"):
        load_weights(module, {}, partial=True)


@pytest.mark.parametrize(("spec", "overrides", "from_", "warned"), [
    (ZOO[50], [], "torchvision", False),
    (ROOT / "specs/deeplabv3plus_resnet101.yaml", [], "torchvision", True),  # strides last
    (XCEPTION, [], "timm", True),  # multi-grid
    (XCEPTION, ["backbone.multi_grid=null"], "timm", False),
])
def test_differences_the_shapes_cannot_show(spec: Path, overrides: list[str], from_: str,
                                            warned: bool) -> None:
    schedule = build(load_spec(spec, overrides)).schedule
    assert bool(differences(schedule, from_)) == warned
