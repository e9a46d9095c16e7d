"""The inference passes (specc.passes) against the reference module they start from.

Each spec is compiled once at a 65×65 input, given random weights and random, non-identity
batch-norm statistics (so folding changes every conv), and compared in eval mode with the same
weights: at the compiled size and at an odd 61×77. The passes must leave the caller's model as
it was, and their result must still script and export.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

from specc.api import build, load_spec
from specc.modules.conv_bn_act import ConvBNAct
from specc.modules.separable_conv import SeparableConv
from specc.passes import (
    DEFAULT_PASSES,
    MIN_TAP_RATE,
    AtrousTaps,
    PaddedFirst,
    channels_last,
    fold_batchnorm,
    inference_only,
    optimize_for_inference,
    wide_atrous,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = ["input.size=[65, 65]"]
SPECS = {
    "demo": REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml",
    "xception": REPO / "specs" / "deeplabv3plus_xception.yaml",
    "resnet50": REPO / "specs" / "zoo" / "torchvision_deeplabv3_resnet50.yaml",
}
#: Input sizes checked: the compiled size and an odd, non-square one.
SIZES = [(65, 65), (61, 77)]


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random conv weights and biases, random BN affine parameters, and running statistics set
    from a random batch and then perturbed (means moved, variances scaled) so no BN is an
    identity; returned in eval mode."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for m in norms:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            m.momentum = 1.0  # running stats := the calibration batch's
        model.train()
        model(torch.randn(2, 3, 65, 65, generator=g))
        for m in norms:
            m.momentum = 0.1
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g)
                                * 0.2 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 0.45 + 0.8)
    return model.eval()


def image(size: tuple[int, int], seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)["out"]


def assert_agrees(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to float tolerance relative to the output's scale, and the same argmax wherever
    the reference's best class is clear of the runner-up by more than that tolerance."""
    assert got.shape == want.shape
    scale = want.abs().max().item()
    assert scale > 1e-3  # a real signal, not a network of zeros
    tol = 1e-4 * scale
    assert (got - want).abs().max().item() <= tol
    # Pixels whose two best classes are closer than the tolerance may swap; all others agree.
    top2 = want.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert torch.equal(got.argmax(1)[clear], want.argmax(1)[clear])
    assert clear.float().mean().item() >= 0.99  # and those are few


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def batchnorms(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.fixture(scope="module", params=list(SPECS))
def reference(request: pytest.FixtureRequest) -> nn.Module:
    """The spec's compiled module with random weights and statistics, in eval mode."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))  # share the cores
    return randomize(build(load_spec(SPECS[request.param], SMALL)).module,
                     seed=len(request.param))


@pytest.mark.parametrize("size", SIZES)
def test_fold_batchnorm_agrees_with_reference(reference: nn.Module,
                                              size: tuple[int, int]) -> None:
    before = state_snapshot(reference)
    folded = fold_batchnorm(reference)
    x = image(size)
    assert_agrees(out(folded, x), out(reference, x))
    assert batchnorms(folded) == []  # every BN of these specs follows a conv
    assert batchnorms(reference)  # … and the caller's model keeps its own
    after = reference.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_inference_only_drops_dropout_and_training_heads(reference: nn.Module) -> None:
    stripped = inference_only(reference)
    x = image(SIZES[1])
    with torch.no_grad():
        result = stripped(x)
    assert list(result) == ["out"]
    assert_agrees(result["out"], out(reference, x))
    assert not any(isinstance(m, nn.Dropout) for m in stripped.modules())
    assert not any(type(m).__name__ == "AuxHead" for m in stripped.modules())
    assert any(isinstance(m, nn.Dropout) for m in reference.modules())  # caller's kept


def test_channels_last_agrees_with_reference(reference: nn.Module) -> None:
    converted = channels_last(reference)
    conv = next(m for m in converted.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert next(m for m in reference.modules()
                if isinstance(m, nn.Conv2d)).weight.is_contiguous()
    x = image(SIZES[1])
    assert_agrees(out(converted, x), out(reference, x))


def test_optimized_model_scripts_and_exports(reference: nn.Module) -> None:
    optimized = optimize_for_inference(reference)
    assert not optimized.training
    x = image(SIZES[1])
    want = out(reference, x)
    assert_agrees(out(optimized, x), want)
    assert_agrees(out(torch.jit.script(optimized), x), want)
    dims = {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}
    exported = torch.export.export(optimized, (x,), dynamic_shapes=(dims,), strict=False)
    assert_agrees(out(exported.module(), x), want)
    # Height and width are not baked in. Xception's fixed image-pooling kernel (clamped to the
    # map) ties the graph to which side of the clamp each side falls on; 57×79 stays on 61×77's.
    other = image((57, 79), seed=2)
    assert_agrees(out(exported.module(), other), out(reference, other))


def test_train_mode_model_is_left_in_train_mode(reference: nn.Module) -> None:
    model = copy.deepcopy(reference).train()
    optimized = optimize_for_inference(model)
    assert model.training and not optimized.training
    assert batchnorms(model) == batchnorms(reference)


def test_fold_covers_separable_biased_and_skips_lone_batchnorm() -> None:
    """Depthwise + pointwise of a separable conv, a conv with a bias, a separable conv without
    a depthwise BN are folded; a BN after an activation (not after a conv) is left."""
    biased = ConvBNAct(3, 8, kernel_size=3)
    biased.conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    model = nn.Sequential(
        biased,
        SeparableConv(8, 16, dilation=2),
        SeparableConv(16, 16, depthwise_norm=False),
        nn.ReLU(),
        nn.BatchNorm2d(16),
    )
    randomize(model, seed=3)
    folded = fold_batchnorm(model)
    assert batchnorms(folded) == ["4"]
    assert batchnorms(model) == ["0.bn", "1.bn_depthwise", "1.bn_pointwise",
                                 "2.bn_pointwise", "4"]
    x = image((17, 19))
    with torch.no_grad():
        assert_agrees(folded(x), model(x))


def test_unknown_pass_is_named() -> None:
    with pytest.raises(ValueError, match=r"'fold_bn'.*expected one of .*fold_batchnorm"):
        optimize_for_inference(nn.Sequential(), ["fold_bn"])
    assert DEFAULT_PASSES[0] == "inference_only"


@pytest.mark.parametrize("shape", [
    # (height, width, rate, kernel, bias): taps partly on the map, taps wholly off it (rate >=
    # the map: only the centre tap counts), rates that differ by axis, a 5×5 kernel, no bias
    (21, 23, 12, 3, True),
    (9, 9, 36, 3, True),
    (30, 17, (8, 24), 3, True),
    (40, 44, 10, 5, False),
])
def test_atrous_taps_equals_the_conv(shape: tuple) -> None:
    height, width, rate, kernel, bias = shape
    rates = rate if isinstance(rate, tuple) else (rate, rate)
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, kernel, padding=tuple(r * (kernel // 2) for r in rates),
                     dilation=rates, bias=bias).eval()
    taps = AtrousTaps(conv)
    x = torch.randn(3, 6, height, width)
    with torch.no_grad():
        want = conv(x)
        assert (taps(x) - want).abs().max().item() <= 1e-5
        cl = x.contiguous(memory_format=torch.channels_last)
        assert (taps(cl) - want).abs().max().item() <= 1e-5
        assert (torch.jit.script(taps)(x) - want).abs().max().item() <= 1e-5
    # one exported graph for every size: below the rate, around it and above it
    exported = torch.export.export(taps, (x,), dynamic_shapes=({0: Dim.AUTO, 2: Dim.AUTO,
                                                                3: Dim.AUTO},), strict=False)
    for size in [(2, 3), (rates[0], rates[1] + 1), (2 * rates[0] + 5, 50)]:
        y = torch.randn(1, 6, *size)
        with torch.no_grad():
            assert (exported.module()(y) - conv(y)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("rates", [12, (8, 30)])
def test_depthwise_padded_first_equals_the_conv(rates: int | tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, groups=6, padding=rates, dilation=rates).eval()
    x = torch.randn(2, 6, 21, 17)
    with torch.no_grad():
        want = conv(x)
        padded = PaddedFirst(copy.deepcopy(conv))
        assert padded.conv.padding == (0, 0)
        assert (padded(x) - want).abs().max().item() <= 1e-6
        assert (torch.jit.script(padded)(x) - want).abs().max().item() <= 1e-6


def test_wide_atrous_takes_only_wide_same_convs() -> None:
    """Plain convs (as AtrousTaps) and depthwise ones (padded first), stride 1, "same", rate >=
    MIN_TAP_RATE: not a narrower rate (oneDNN's own kernels are faster there), a grouped or
    strided conv, other padding, or a 1×1."""
    wide = nn.Conv2d(4, 4, 3, padding=MIN_TAP_RATE, dilation=MIN_TAP_RATE)
    depthwise = nn.Conv2d(4, 4, 3, padding=12, dilation=12, groups=4)
    left = [
        nn.Conv2d(4, 4, 3, padding=MIN_TAP_RATE - 1, dilation=MIN_TAP_RATE - 1),
        nn.Conv2d(4, 4, 3, padding=MIN_TAP_RATE - 1, dilation=MIN_TAP_RATE - 1, groups=4),
        nn.Conv2d(4, 4, 3, padding=12, dilation=12, groups=2),
        nn.Conv2d(4, 4, 3, padding=12, dilation=12, stride=2),
        nn.Conv2d(4, 4, 3, padding=12, dilation=12, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding=6, dilation=12),
        nn.Conv2d(4, 4, 1, dilation=12),
    ]
    original = nn.Sequential(wide, depthwise, *left)
    model = wide_atrous(original)
    assert isinstance(model[0], AtrousTaps) and isinstance(model[1], PaddedFirst)
    assert [type(m) for m in model[2:]] == [nn.Conv2d] * len(left)
    assert type(original[0]) is nn.Conv2d and original[1].padding == (12, 12)  # left alone


def test_wide_atrous_rewrites_the_aspp_and_agrees(reference: nn.Module,
                                                  request: pytest.FixtureRequest) -> None:
    """On every spec, the atrous convs of rate >= MIN_TAP_RATE are rewritten: ResNet-50's
    three ASPP convs (rates 12, 24, 36) as taps, Xception's depthwise convs of the ASPP (12, 18)
    and of the exit flow (8) padded first, none of the demo's (2, 4, 6). The network's output is
    unchanged at a size where some taps fall partly on the map and others wholly off it."""
    want = {
        "resnet50": [("aspp.convs.1.conv", "AtrousTaps"), ("aspp.convs.2.conv", "AtrousTaps"),
                     ("aspp.convs.3.conv", "AtrousTaps")],
        "xception": [("aspp.convs.2.depthwise", "PaddedFirst"),
                     ("aspp.convs.3.depthwise", "PaddedFirst"),
                     ("backbone.exit2.0.sep3.depthwise", "PaddedFirst")],
        "demo": [],
    }[request.node.callspec.params["reference"]]
    rewritten = wide_atrous(reference)
    assert sorted((name, type(m).__name__) for name, m in rewritten.named_modules()
                  if isinstance(m, AtrousTaps | PaddedFirst)) == want
    x = image((161, 161))
    assert_agrees(out(rewritten, x), out(reference, x))
