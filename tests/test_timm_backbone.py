"""``backbone: {timm: <model>}``: any timm encoder as the backbone, through timm's features-only
models. The generated backbone's features equal timm's own features-only model's with the same
weights; the heads read the stage the spec names; the model trains. Random weights, nothing is
downloaded; the input is odd-sized."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_equivalence import import_weights

from specc.api import build, load_spec
from specc.artifacts import load_weights, read_weights
from specc.errors import SpecError, SpecErrors

timm = pytest.importorskip("timm")

SIZE = (65, 73)

SPEC = """\
name: timm_{name}
num_classes: 3
input: {{size: [65, 73]}}
backbone: {{timm: {name}, output_stride: {os}}}
aspp: {{rates: [1, 2, 3]}}
decoder: {{low_level: {low_level}, low_level_reduction: 4}}
"""

#: id → (timm model, output stride, the decoder's low-level tap at 1/4)
CASES = {
    "resnet18-os16": ("resnet18", 16, "backbone.stage1"),
    "convnext_atto-os16": ("convnext_atto", 16, "backbone.stage0"),
    "convnext_atto-os8": ("convnext_atto", 8, "backbone.stage0"),
    "efficientnet_b0-os16": ("efficientnet_b0", 16, "backbone.stage1"),
}


def _spec(tmp_path: Path, name: str, output_stride: int, low_level: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, os=output_stride, low_level=low_level),
                    encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_timm_backbone_matches_timm_features(case: str, tmp_path: Path) -> None:
    name, output_stride, low_level = CASES[case]
    comp = build(load_spec(_spec(tmp_path, name, output_stride, low_level)))
    model = comp.module.eval()
    kwargs = {} if output_stride == 32 else {"output_stride": output_stride}
    ref = timm.create_model(name, features_only=True, pretrained=False, **kwargs).eval()
    torch.manual_seed(0)
    for p in ref.parameters():  # not timm's init: a check that every weight is carried over
        p.data.normal_(0, 0.1)
    model.backbone.encoder.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        expected = ref(x)
        features = model.backbone(x)
        out = model(x)["out"]
    torch.testing.assert_close(features["out"], expected[-1], rtol=0, atol=0)
    tap = int(low_level.removeprefix("backbone.stage"))
    torch.testing.assert_close(features["low_level"], expected[tap], rtol=0, atol=0)
    assert out.shape == (2, 3, *SIZE)
    # the graph's stage nodes carry timm's channels, reductions and feature sizes
    g = comp.graph
    for i, feature in enumerate(expected):
        node = g.nodes[comp.network.aliases[f"backbone.stage{i}"]]
        assert node["opaque"] and node["shape"] == tuple(feature.shape[1:])
        assert SIZE[0] // node["reduction"] in (feature.shape[2], feature.shape[2] - 1)
    assert g.nodes[comp.network.aliases["backbone"]]["reduction"] == output_stride
    params = sum(d["params"] for n, d in g.nodes(data=True) if n.startswith("backbone."))
    assert params == sum(p.numel() for p in ref.parameters())


def test_timm_backbone_trains_one_step(tmp_path: Path) -> None:
    comp = build(load_spec(_spec(tmp_path, "resnet18", 16, "backbone.stage1")))
    model = comp.module.train()
    before = model.backbone.encoder.state_dict()["conv1.weight"].clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(2, 3, *SIZE), torch.randint(0, 3, (2, *SIZE))
    loss = torch.nn.functional.cross_entropy(model(x)["out"], target)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model.backbone.encoder.state_dict()["conv1.weight"], before)


def test_timm_backbone_taps_are_checked(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "convnext_atto", 16, "backbone.stage1")
    with pytest.raises(SpecError, match=r"1/8 of the input.*backbone\.stage0"):
        _ = build(load_spec(spec)).network


@pytest.mark.parametrize("backbone, message", [
    ("{timm: convnext_atto, preset: resnet18}", "remove preset"),
    ("{timm: convnext_atto, multi_grid: [1, 2, 4]}", "remove multi_grid"),
    ("{timm: convnext_atto, output_stride: 4}", "output stride 8, 16 or 32"),
])
def test_timm_backbone_rejects_other_backbone_keys(tmp_path: Path, backbone: str,
                                                   message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nnum_classes: 3\nbackbone: {backbone}\n", encoding="utf-8")
    with pytest.raises(SpecErrors, match=message):
        load_spec(path)


def test_timm_backbone_names_close_models(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "convnxt_atto", 16, "backbone.stage0")
    with pytest.raises(SpecError, match=r"convnxt_atto.*close names: convnext_atto") as err:
        _ = build(load_spec(spec)).network
    assert "convnxt_atto.yaml" in str(err.value)


def test_timm_build_writes_torchscript(tmp_path: Path, cli) -> None:
    result = cli("build", _spec(tmp_path, "convnext_atto", 16, "backbone.stage0"),
                 "--out", tmp_path / "out")
    assert result.code == 0, result.err
    scripted = torch.jit.load(str(tmp_path / "out/timm_convnext_atto/model.pt"))
    assert scripted(torch.randn(1, 3, *SIZE))["out"].shape == (1, 3, *SIZE)
    info = cli("info", _spec(tmp_path, "convnext_atto", 16, "backbone.stage0"))
    assert "multiply-adds and receptive fields are not" in info.out


HRNET = """\
name: hrnet
num_classes: 3
input: {{size: {size}}}
backbone: {{timm: hrnet_w18_small, output_stride: {os}}}
aspp: {{rates: [2, 4, 6]}}
"""


@pytest.mark.parametrize("size, output_stride, message", [
    ([64, 96], 16, "hrnet_w18_small as a features-only encoder at output stride 16: it has no "
                   "output-stride support"),
    ([65, 73], 32, "cannot run on a 65×73 input"),
    ([64, 96], 32, "cannot be compiled to TorchScript, so model.pt cannot be written"),
])
def test_timm_encoders_specc_cannot_build_are_refused_clearly(
        tmp_path: Path, cli, size: list[int], output_stride: int, message: str) -> None:
    """HRNet has no output-stride support, needs sizes of multiples of 32 and does not script:
    each is an error at backbone.timm (exit 2, nothing written), never a traceback."""
    spec = tmp_path / "hrnet.yaml"
    spec.write_text(HRNET.format(size=size, os=output_stride), encoding="utf-8")
    result = cli("build", spec, "--out", tmp_path / "out")
    assert result.code == 2
    assert f"{spec}:4:" in result.err and message in result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "out/hrnet").exists()


@pytest.mark.parametrize("name, low_level", [("resnet18", "backbone.stage1"),
                                             ("convnext_atto", "backbone.stage0"),
                                             ("efficientnet_b0", "backbone.stage1")])
def test_import_weights_from_a_whole_timm_model(tmp_path: Path, name: str,
                                                low_level: str) -> None:
    """``import-weights --from timm`` of the whole model's state dict: every encoder tensor
    comes from it, its classifier (and EfficientNet's final conv) is dropped, and the backbone
    computes what the timm features-only model with those weights computes."""
    whole = timm.create_model(name, pretrained=False, output_stride=16)
    torch.manual_seed(1)
    with torch.no_grad():
        for t in whole.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) * 0.2 + 0.9 if t.dim() == 1 else t.normal_(0, 0.05))
    whole.eval()
    src = tmp_path / f"{name}.pth"
    torch.save(whole.state_dict(), src)
    spec = _spec(tmp_path, name, 16, low_level)
    out = import_weights(spec, src, "timm", tmp_path / "w.safetensors", "--backbone-only")
    module = build(load_spec(spec)).module
    untouched = load_weights(module, read_weights(out), partial=True)
    assert not [k for k in untouched if k.startswith("backbone.")]
    module.eval()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        ours = module.backbone(x)["out"]
        if name == "efficientnet_b0":  # its forward_features ends in conv_head + bn2
            ref = whole.blocks(whole.bn1(whole.conv_stem(x)))
        else:
            ref = whole.forward_features(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_aux_head_taps_a_timm_stage(tmp_path: Path) -> None:
    spec = tmp_path / "aux.yaml"
    spec.write_text(SPEC.format(name="efficientnet_b0", os=8, low_level="backbone.stage1")
                    + "aux: {tap: backbone.stage3, channels: 16}\n", encoding="utf-8")
    comp = build(load_spec(spec))
    model = comp.module.eval()
    assert comp.network.taps["aux"].node == comp.network.aliases["backbone.stage3"]
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, *SIZE))
        out = model(torch.randn(1, 3, *SIZE))
    assert features["aux"].shape == (1, 112, 9, 10)  # blocks.4 at 1/8: output stride 8
    assert out["aux"].shape == out["out"].shape == (1, 3, *SIZE)
