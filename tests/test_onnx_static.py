"""Winograd's F(m, 3) in an ONNX graph of one input shape (:mod:`specc.onnx_static`): the
rewritten graph computes what the conv did, in onnxruntime, and convs it must not take stay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from specc.hardware import CpuInfo
from specc.onnx_static import winograd_convs, winograd_pays

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def exported(module: nn.Module, shape: tuple[int, ...], path: Path) -> Any:
    """``module`` exported to ONNX for ``shape`` as ``specc build --static`` exports it."""
    with torch.no_grad():
        program = torch.export.export(module.eval(), (torch.zeros(shape),), strict=False)
        torch.onnx.export(program, dynamo=True, verbose=False).save(str(path))
    return onnx.load(str(path))


def run(model: Any, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def always(m: int) -> Any:
    return lambda in_channels, out_channels, size, rates, int8=False: m


def ops(model: Any) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize(("shape", "rates", "m", "bias"), [
    ((1, 8, 13, 20), (1, 1), 6, True),   # 3 × 4 tiles, neither side a multiple of 6
    ((1, 8, 17, 9), (2, 3), 4, True),    # different rates down and across
    ((1, 8, 20, 20), (12, 12), 6, False),  # sub-grids of 2: one tile each
])
def test_winograd_computes_the_conv(shape: tuple[int, ...], rates: tuple[int, int], m: int,
                                    bias: bool, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(sum(shape) + m)
    conv = nn.Conv2d(shape[1], 12, 3, padding=rates, dilation=rates, bias=bias)
    for p in conv.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)
    module = nn.Sequential(conv, nn.ReLU())
    model = exported(module, shape, tmp_path / "m.onnx")
    x = torch.randn(shape, generator=g).numpy()
    before = run(model, x)
    assert winograd_convs(model, always(m)) == 1
    assert "Conv" not in ops(model)
    onnx.checker.check_model(model)
    got = run(model, x)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(got - before).max() <= 1e-4 * np.abs(want).max()
    # the original weights are gone from the file, the transformed ones in it
    names = {t.name for t in model.graph.initializer}
    assert not any(name.endswith("weight") for name in names)


def test_convs_it_must_not_take_stay(tmp_path: Path) -> None:
    """Strided, grouped, 1×1 and a rate that reaches past the map: left as they are; the
    real rule leaves a small conv alone too."""
    module = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1),
                           nn.Conv2d(8, 8, 3, padding=1, groups=4),
                           nn.Conv2d(8, 8, 1),
                           nn.Conv2d(8, 8, 3, padding=12, dilation=12))
    model = exported(module, (1, 8, 20, 20), tmp_path / "m.onnx")
    assert winograd_convs(model, always(4)) == 0
    assert ops(model).count("Conv") == 4
    small = exported(nn.Conv2d(8, 8, 3, padding=1), (1, 8, 20, 20), tmp_path / "s.onnx")
    assert winograd_convs(small) == 0  # 8 channels: far below the rule's 128


def test_only_on_avx2_cpus_without_avx512() -> None:
    assert winograd_pays(CpuInfo("x", frozenset({"avx2", "fma"})))
    assert not winograd_pays(CpuInfo("x", frozenset({"avx2", "fma", "avx512f"})))
    assert not winograd_pays(CpuInfo("x", frozenset()))
