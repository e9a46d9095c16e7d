"""Atrous taps that read only padding, dropped from an OpenVINO model reshaped to one input size
(:mod:`specc.openvino_static`), in fp32 and int8, and by the runner that compiles such sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from specc.openvino_static import drop_padding_taps, reachable_taps

ov = pytest.importorskip("openvino")


@pytest.mark.parametrize(("kernel", "rate", "padding", "size", "reach"), [
    (3, 36, 36, 33, 0),   # ResNet-50's rate-36 ASPP branch at a 257×257 input: only the centre
    (3, 36, 36, 37, 1),   # one pixel more than the rate: the outer taps reach the map again
    (3, 12, 12, 33, 1),
    (3, 2, 2, 3, 1),
    (3, 2, 2, 2, 0),      # a tap two pixels out never lands on a 2-pixel map
    (5, 2, 4, 3, 1),      # taps at ±2 reach a 3-pixel map, those at ±4 do not
    (5, 2, 4, 5, 2),
    (4, 2, 3, 1, None),   # an even kernel
    (3, 8, 0, 5, None),   # no padding: a "valid" conv, not a "same" one
    (3, 8, 4, 5, None),   # padding that is not rate × half the kernel
])
def test_reachable_taps(kernel: int, rate: int, padding: int, size: int,
                        reach: int | None) -> None:
    assert reachable_taps(kernel, rate, (padding, padding), size) == reach


class Atrous(nn.Module):
    """Convs of the kinds a DeepLab head has, on one map: two plain atrous convs (one of rate 8,
    one of rate 2), a depthwise one of rate 8 and a 1×1 conv after them."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.wide = nn.Conv2d(16, 24, 3, padding=8, dilation=8)
        self.narrow = nn.Conv2d(16, 24, 3, padding=2, dilation=2)
        self.depthwise = nn.Conv2d(24, 24, 3, padding=8, dilation=8, groups=24)
        self.project = nn.Conv2d(48, 8, 1)
        for p in self.parameters():
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = torch.relu(self.depthwise(torch.relu(self.wide(x))))
        return self.project(torch.cat([wide, torch.relu(self.narrow(x))], 1))


def kernels(model: Any) -> dict[str, list[int]]:
    """Each conv of ``model`` by its PyTorch module's name: its kernel's height and width."""
    out = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            name = next(n for n in ("wide", "narrow", "depthwise", "project")
                        if n in op.get_friendly_name())
            out[name] = list(op.get_input_partial_shape(1).to_shape())[-2:]
    return out


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()


def compiled(model: Any) -> Any:
    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


@pytest.mark.parametrize(("size", "wide"), [
    ((6, 6), [1, 1]),    # rate 8 on a 6×6 map: only the centre tap reads the map
    ((6, 11), [1, 3]),   # rows as before; along the 11 columns the outer taps reach it
    ((9, 9), [3, 3]),    # all of them reach a 9×9 map: nothing to drop
])
def test_fp32_convs_lose_only_the_taps_that_read_padding(size: tuple[int, int],
                                                          wide: list[int]) -> None:
    module = Atrous().eval()
    shape = (2, 16, *size)
    model = ov.convert_model(module, example_input=torch.zeros(shape))
    model.reshape(list(shape))
    before = compiled(model)
    assert drop_padding_taps(model) == int(wide != [3, 3])
    # the plain conv of rate 2 reaches every map here; depthwise convs are left as they are
    assert kernels(model) == {"wide": wide, "narrow": [3, 3], "depthwise": [3, 3],
                              "project": [1, 1]}
    x = image(shape)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    got = compiled(model)(x)[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert np.abs(got - before(x)[0]).max() <= 1e-6 * np.abs(want).max()


def runtime_precisions(compiled_model: Any) -> dict[str, str]:
    """The precision each conv of a compiled model runs in, by the conv's name."""
    out = {}
    for op in compiled_model.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            out[op.get_friendly_name()] = info["runtimePrecision"].astype(str)
    return out


def test_int8_weights_are_cut_where_they_are_stored_so_the_conv_stays_int8(
        tmp_path: Path) -> None:
    """NNCF's int8 IR stores each conv's weights as int8 and decompresses them on the way to the
    conv; cut at the constant, the conv is still recognised as an int8 one, now with a 1×1
    kernel, and computes what the full kernel did."""
    nncf = pytest.importorskip("nncf")
    module = Atrous().eval()
    shape = (1, 16, 6, 6)
    model = ov.convert_model(module, example_input=torch.zeros(shape))
    data = nncf.Dataset([image(shape, seed) for seed in range(4)])
    quantized = nncf.quantize(model, data, subset_size=4)
    ov.save_model(quantized, str(tmp_path / "int8.xml"), compress_to_fp16=False)  # as an artifact stores it

    core = ov.Core()
    full = core.read_model(str(tmp_path / "int8.xml"))
    full.reshape(list(shape))
    cut = core.read_model(str(tmp_path / "int8.xml"))
    cut.reshape(list(shape))
    assert drop_padding_taps(cut) == 1
    assert kernels(cut)["wide"] == [1, 1]
    a, b = compiled(full), compiled(cut)
    x = image(shape, 9)
    want = a(x)[0]
    assert np.abs(b(x)[0] - want).max() <= 1e-4 * np.abs(want).max()
    wide = [name for name in runtime_precisions(b) if "wide" in name]
    assert len(wide) == 1
    assert runtime_precisions(a)[wide[0]] in ("u8", "i8")
    assert runtime_precisions(b)[wide[0]] in ("u8", "i8")


def test_the_runner_drops_them_when_it_compiles_a_repeated_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """:class:`specc.targets.OpenVinoRunner` runs a size seen once on the dynamic model, and a
    repeated one on a model reshaped to it with those taps dropped; both equal the module."""
    import specc.targets
    from specc.targets import OpenVinoRunner

    cut: list[dict[str, list[int]]] = []

    def watched(model: Any) -> int:
        count = drop_padding_taps(model)
        cut.append(kernels(model))
        return count

    monkeypatch.setattr(specc.targets, "drop_padding_taps", watched)
    module = Atrous().eval()
    model = ov.convert_model(module, example_input=torch.zeros(1, 16, 12, 12),
                             input=[-1, 16, -1, -1])
    ov.save_model(model, str(tmp_path / "model.xml"), compress_to_fp16=False)
    runner = OpenVinoRunner(tmp_path / "model.xml", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.from_numpy(image((1, 16, 5, 7)))
    with torch.no_grad():
        want = module(x)
    for _ in range(3):
        assert (runner(x) - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    assert list(runner.static) == [(1, 16, 5, 7)]
    assert cut == [{"wide": [1, 1], "narrow": [3, 3], "depthwise": [3, 3], "project": [1, 1]}]
