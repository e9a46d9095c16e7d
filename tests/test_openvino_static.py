"""The rewrites of an OpenVINO model reshaped to one input size (:mod:`specc.openvino_static`):
atrous taps that read only padding dropped (fp32 and int8), int8 atrous convs computed tap by
tap, fp32 and int8 3×3 convs computed by Winograd's F(m, 3), and the runner that makes them
when it compiles a repeated size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from specc.hardware import CpuInfo
from specc.openvino_static import (
    drop_padding_taps,
    optimize_static,
    reachable_taps,
    split_int8_atrous,
    winograd_convs,
)
from specc.targets import openvino_core

ov = pytest.importorskip("openvino")

AVX2 = CpuInfo("test CPU", frozenset({"avx2", "fma"}))
AVX_VNNI = CpuInfo("test CPU", frozenset({"avx2", "fma", "avx_vnni"}))
AVX512 = CpuInfo("test CPU", frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}))
AMX = CpuInfo("test CPU", frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "amx_tile",
                                     "amx_int8"}))


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
        self.narrow = nn.Conv2d(16, 12, 3, padding=2, dilation=2)
        self.depthwise = nn.Conv2d(24, 24, 3, padding=8, dilation=8, groups=24)
        self.project = nn.Conv2d(36, 8, 1)
        for p in self.parameters():
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = torch.relu(self.depthwise(torch.relu(self.wide(x))))
        return self.project(torch.cat([wide, torch.relu(self.narrow(x))], 1))


def ir(module: nn.Module, shape: tuple[int, ...], folder: Path, dynamic: bool = False) -> Any:
    """``module`` as an artifact's IR is made and stored: exported by ``torch.export`` (with a
    dynamic batch, height and width when asked), converted by OpenVINO, saved into ``folder``
    and read back (so that nothing in it shares memory with PyTorch's tensors); its sizes fixed
    to ``shape`` unless ``dynamic``."""
    from torch.export import Dim

    dims = ({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},) if dynamic else None
    with torch.no_grad():
        program = torch.export.export(module, (torch.zeros(shape),), dynamic_shapes=dims,
                                      strict=False)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.xml"
    ov.save_model(ov.convert_model(program), str(path), compress_to_fp16=False)
    model = openvino_core().read_model(str(path))
    if not dynamic:
        model.reshape(list(shape))
    return model


#: :class:`Atrous`'s convs by (operation, input channels, output channels); the names of the
#: exported graph's nodes do not carry the module's.
CONVS = {("Convolution", 16, 24): "wide", ("Convolution", 16, 12): "narrow",
         ("GroupConvolution", 24, 24): "depthwise", ("Convolution", 36, 8): "project"}


def kernels(model: Any) -> dict[str, list[int]]:
    """Each conv of ``model`` by its :class:`Atrous` module's name: its kernel's height and
    width (the one-tap convs a conv was split into left out)."""
    out = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("Convolution", "GroupConvolution") and "/tap_" not in op.get_friendly_name():
            channels = (op.get_input_partial_shape(0)[1].get_length(),
                        op.get_output_partial_shape(0)[1].get_length())
            out[CONVS[(kind, *channels)]] = list(op.get_input_partial_shape(1).to_shape())[-2:]
    return out


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()


def compiled(model: Any) -> Any:
    return openvino_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


@pytest.mark.parametrize(("size", "wide"), [
    ((6, 6), [1, 1]),    # rate 8 on a 6×6 map: only the centre tap reads the map
    ((6, 11), [1, 3]),   # rows as before; along the 11 columns the outer taps reach it
    ((9, 9), [3, 3]),    # all of them reach a 9×9 map: nothing to drop
])
def test_fp32_convs_lose_only_the_taps_that_read_padding(size: tuple[int, int],
                                                          wide: list[int],
                                                          tmp_path: Path) -> None:
    module = Atrous().eval()
    shape = (2, 16, *size)
    before = compiled(ir(module, shape, tmp_path / "a"))  # its own IR: compiled, it may use
    model = ir(module, shape, tmp_path / "b")              # the IR's weights
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
    """The precision each plain conv of a compiled model runs in: by its :class:`Atrous`
    module's name, the one-tap convs a conv was split into by their own."""
    out = {}
    for op in compiled_model.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            name = op.get_friendly_name()
            if "/tap_" not in name:  # OpenVINO runs a grouped conv as a Convolution too
                channels = (op.get_input_partial_shape(0)[1].get_length(),
                            op.get_output_partial_shape(0)[1].get_length())
                name = CONVS.get(("Convolution", *channels)) or CONVS[
                    ("GroupConvolution", *channels)]
            out[name] = info["runtimePrecision"].astype(str)
    return out


def int8_ir(tmp_path: Path, shape: tuple[int, ...]) -> tuple[Atrous, Path]:
    """:class:`Atrous` quantized by NNCF and saved as an artifact stores it (int8 weights)."""
    nncf = pytest.importorskip("nncf")
    module = Atrous().eval()
    model = ir(module, shape, tmp_path / "fp32")
    data = nncf.Dataset([image(shape, seed) for seed in range(4)])
    quantized = nncf.quantize(model, data, subset_size=4)
    ov.save_model(quantized, str(tmp_path / "int8.xml"), compress_to_fp16=False)
    return module, tmp_path / "int8.xml"


def read_static(path: Path, shape: tuple[int, ...]) -> Any:
    model = openvino_core().read_model(str(path))
    model.reshape(list(shape))
    return model


def test_int8_weights_are_cut_where_they_are_stored_so_the_conv_stays_int8(
        tmp_path: Path) -> None:
    """NNCF's int8 IR stores each conv's weights as int8 and decompresses them on the way to the
    conv; cut at the constant, the conv is still recognised as an int8 one, now with a 1×1
    kernel, and computes what the full kernel did."""
    shape = (1, 16, 6, 6)
    _, path = int8_ir(tmp_path, shape)
    full, cut = read_static(path, shape), read_static(path, shape)
    assert drop_padding_taps(cut) == 1
    assert kernels(cut)["wide"] == [1, 1]
    a, b = compiled(full), compiled(cut)
    x = image(shape, 9)
    want = a(x)[0]
    assert np.abs(b(x)[0] - want).max() <= 1e-4 * np.abs(want).max()
    assert runtime_precisions(a)["wide"] in ("u8", "i8")
    assert runtime_precisions(b)["wide"] in ("u8", "i8")


def test_int8_atrous_convs_are_computed_tap_by_tap(tmp_path: Path) -> None:
    """The rate-8 conv on a 6×11 map: its three taps that reach the map (the middle row; the
    rows ±8 read only padding) as three int8 1×1 convs, shifted and summed. The rate-2 and
    depthwise convs stay; the result is as close to the fp32 module as the int8 conv was."""
    shape = (1, 16, 6, 11)
    module, path = int8_ir(tmp_path, shape)
    full, split = read_static(path, shape), read_static(path, shape)
    # on a CPU without AMX the conv keeps OpenVINO's kernel (and loses its padding-only taps)
    kept = read_static(path, shape)
    assert optimize_static(kept, AVX512) == {"split_int8_atrous": 0, "winograd_convs": 0,
                                             "drop_padding_taps": 1}
    assert optimize_static(split, AMX) == {"split_int8_atrous": 1, "winograd_convs": 0,
                                           "drop_padding_taps": 0}
    convs = [op for op in split.get_ordered_ops() if op.get_type_name() == "Convolution"]
    taps = sorted(op.get_friendly_name().rsplit("/", 1)[1] for op in convs
                  if "/tap_" in op.get_friendly_name())
    assert taps == ["tap_1_0", "tap_1_1", "tap_1_2"]
    assert all(list(op.get_input_partial_shape(1).to_shape()) == [24, 16, 1, 1]
               for op in convs if "/tap_" in op.get_friendly_name())
    assert "wide" not in kernels(split)
    assert kernels(split)["narrow"] == [3, 3] and kernels(split)["depthwise"] == [3, 3]
    a, b = compiled(full), compiled(split)
    precisions = runtime_precisions(b)
    tap_precisions = [p for name, p in precisions.items() if "/tap_" in name]
    assert len(tap_precisions) == 3 and set(tap_precisions) <= {"u8", "i8"}, precisions
    x = image(shape, 9)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    scale = np.abs(want).max()
    int8_error = np.abs(a(x)[0] - want).max() / scale
    split_error = np.abs(b(x)[0] - want).max() / scale
    assert 0 < int8_error < 0.1
    assert split_error <= 1.5 * int8_error
    # fp32 weights are not int8 ones: an fp32 IR keeps its convs
    fp32 = ir(module, shape, tmp_path / "fp32")
    assert split_int8_atrous(fp32) == 0


def test_the_runner_drops_them_when_it_compiles_a_repeated_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """:class:`specc.targets.OpenVinoRunner` runs a size seen once on the dynamic model, and a
    repeated one on a model reshaped to it with those taps dropped; both equal the module."""
    import specc.targets
    from specc.targets import OpenVinoRunner

    cut: list[dict[str, list[int]]] = []

    def watched(model: Any, **options: Any) -> dict[str, int]:
        counts = optimize_static(model, **options)
        cut.append(kernels(model))
        return counts

    monkeypatch.setattr(specc.targets, "optimize_static", watched)
    module = Atrous().eval()
    ir(module, (2, 16, 12, 12), tmp_path, dynamic=True)
    runner = OpenVinoRunner(tmp_path / "model.xml", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.from_numpy(image((1, 16, 5, 7)))
    with torch.no_grad():
        want = module(x)
    for _ in range(3):
        assert (runner(x) - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    assert list(runner.static) == [(1, 16, 5, 7)]
    assert cut == [{"wide": [1, 1], "narrow": [3, 3], "depthwise": [3, 3], "project": [1, 1]}]


def always(m: int) -> Any:
    """A tile rule that computes every eligible conv with F(m, 3)."""
    return lambda in_channels, out_channels, size, rates, int8=False: m


def winograd_nodes(model: Any) -> list[str]:
    return sorted(op.get_friendly_name().rsplit("/", 1)[1] for op in model.get_ordered_ops()
                  if "/winograd_" in op.get_friendly_name())


@pytest.mark.parametrize(("shape", "rates", "m"), [
    ((1, 8, 13, 20), (1, 1), 6),   # 3 × 4 tiles, neither side a multiple of 6
    ((2, 8, 17, 9), (2, 3), 4),    # a batch of 2; different rates down and across
    ((1, 8, 20, 20), (12, 12), 6),  # sub-grids of 2: one tile each
    ((1, 8, 7, 7), (1, 1), 4),
])
def test_winograd_computes_the_conv(shape: tuple[int, ...], rates: tuple[int, int], m: int,
                                    tmp_path: Path) -> None:
    """A 3×3 conv (bias, ReLU after it) computed by F(m, 3) over the sub-grids of its rates:
    the conv is gone from the graph and the result equals the module's to fp32 rounding."""
    g = torch.Generator().manual_seed(sum(shape) + m)
    conv = nn.Conv2d(shape[1], 12, 3, padding=rates, dilation=rates)
    for p in conv.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)
    module = nn.Sequential(conv, nn.ReLU()).eval()
    model = ir(module, shape, tmp_path)
    assert winograd_convs(model, always(m)) == 1
    assert winograd_nodes(model) == [f"winograd_{m}"]
    assert not [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    x = image(shape)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    got = compiled(model)(x)[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_winograd_leaves_the_batch_dynamic(tmp_path: Path) -> None:
    """A model with a dynamic batch and a static height and width (an IR made for one size
    that a deployment reshapes to its batch) is rewritten as it is, and the rewritten model
    computes the conv at any batch; reshaped to a fixed batch afterwards, it still does."""
    g = torch.Generator().manual_seed(7)
    conv = nn.Conv2d(8, 12, 3, padding=(2, 3), dilation=(2, 3))
    for p in conv.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)
    module = nn.Sequential(conv, nn.ReLU()).eval()
    model = ir(module, (2, 8, 17, 9), tmp_path, dynamic=True)
    model.reshape([-1, 8, 17, 9])
    assert winograd_convs(model, always(4)) == 1
    assert model.input(0).get_partial_shape()[0].is_dynamic
    assert not [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    run = compiled(model)
    for batch in (1, 3):
        x = image((batch, 8, 17, 9), seed=batch)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        got = run(x)[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    model.reshape([4, 8, 17, 9])
    x = image((4, 8, 17, 9), seed=4)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert np.abs(compiled(model)(x)[0] - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize(("size", "rewritten"), [((9, 9), 2), ((6, 6), 1)])
def test_winograd_takes_only_plain_convs_that_reach_their_map(
        size: tuple[int, int], rewritten: int, tmp_path: Path) -> None:
    """Of :class:`Atrous`'s convs, the plain 3×3 ones, the rate-8 one only where all its taps
    reach the map (on 6×6 its outer taps read padding: :func:`drop_padding_taps` takes it);
    never the depthwise or the 1×1 one."""
    module = Atrous().eval()
    shape = (1, 16, *size)
    model = ir(module, shape, tmp_path / "fp32")
    assert winograd_convs(model, always(6)) == rewritten
    assert set(kernels(model)) == {"depthwise", "project"} | ({"wide"} if rewritten == 1 else set())
    x = image(shape)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert np.abs(compiled(model)(x)[0] - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize(("size", "rewritten"), [((9, 9), 2), ((6, 6), 1)])
def test_winograd_computes_int8_convs_from_their_quantized_input(
        size: tuple[int, int], rewritten: int, tmp_path: Path) -> None:
    """The same convs of NNCF's int8 IR: their int8 weights decompressed, computed in f32 by
    F(6, 3) from the input the int8 kernel would read (its FakeQuantize stays), so the network
    is as close to the fp32 module as the int8 one; with ``int8=False`` they stay int8."""
    shape = (1, 16, *size)
    module, path = int8_ir(tmp_path, shape)
    model = read_static(path, shape)
    quantizers = fake_quantizers(model)
    assert winograd_convs(model, always(6), int8=False) == 0
    assert winograd_convs(model, always(6)) == rewritten
    assert set(kernels(model)) == {"depthwise", "project"} | ({"wide"} if rewritten == 1 else set())
    assert fake_quantizers(model) == quantizers
    x = image(shape, 9)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    scale = np.abs(want).max()
    int8 = compiled(read_static(path, shape))(x)[0]
    got = compiled(model)(x)[0]
    int8_error = np.abs(int8 - want).max() / scale
    assert 0 < int8_error < 0.1
    assert np.abs(got - want).max() / scale <= 1.5 * int8_error
    # the quantized input is the int8 conv's: mostly the very same outputs
    assert np.mean(np.abs(got - int8) <= 1e-4 * scale) >= 0.9


def fake_quantizers(model: Any) -> int:
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())


def test_winograd_only_at_fp32_on_the_cpus_it_was_measured_on(tmp_path: Path) -> None:
    """With the default rule, a 256 → 256 conv on a 46×46 map (1.2 G multiply-adds) is
    computed by F(6, 3) at f32 on an AVX2 CPU; in bf16, or on a CPU with AVX-512, it stays."""
    g = torch.Generator().manual_seed(1)
    module = nn.Conv2d(256, 256, 3, padding=1).eval()
    for p in module.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    shape = (1, 256, 46, 46)
    ir(module, shape, tmp_path)
    for cpu, precision, count in [(AVX2, "f32", 1), (AVX2, "bf16", 0), (AVX512, "f32", 0)]:
        model = read_static(tmp_path / "model.xml", shape)
        assert optimize_static(model, cpu, precision)["winograd_convs"] == count
    model = read_static(tmp_path / "model.xml", shape)
    optimize_static(model, AVX2)
    assert winograd_nodes(model) == ["winograd_6"]
    x = image(shape)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert np.abs(compiled(model)(x)[0] - want).max() <= 1e-4 * np.abs(want).max()


def test_winograd_for_int8_convs_only_where_the_cpu_has_no_vnni(tmp_path: Path) -> None:
    """With the default rule, the int8 256 → 256 conv on a 46×46 map is computed by F(6, 3)
    on an AVX2 CPU; with VNNI (AVX-VNNI or AVX-512's) it keeps OpenVINO's int8 kernel, which
    runs several times faster there. fp32 convs on the AVX-VNNI CPU are rewritten still."""
    nncf = pytest.importorskip("nncf")
    g = torch.Generator().manual_seed(2)
    module = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()).eval()
    for p in module.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    shape = (1, 256, 46, 46)
    fp32 = ir(module, shape, tmp_path)
    data = nncf.Dataset([image(shape, seed) for seed in range(2)])
    ov.save_model(nncf.quantize(fp32, data, subset_size=2), str(tmp_path / "int8.xml"),
                  compress_to_fp16=False)
    for cpu, count in [(AVX2, 1), (AVX_VNNI, 0), (AVX512, 0)]:
        model = read_static(tmp_path / "int8.xml", shape)
        assert optimize_static(model, cpu)["winograd_convs"] == count
    assert optimize_static(read_static(tmp_path / "model.xml", shape),
                           AVX_VNNI)["winograd_convs"] == 1
    model = read_static(tmp_path / "int8.xml", shape)
    optimize_static(model, AVX2)
    assert winograd_nodes(model) == ["winograd_6"]
    x = image(shape)
    int8 = compiled(read_static(tmp_path / "int8.xml", shape))(x)[0]
    got = compiled(model)(x)[0]
    scale = np.abs(int8).max()
    assert np.mean(np.abs(got - int8) <= 1e-4 * scale) >= 0.99


def test_winograd_decompresses_weights_with_a_zero_point(tmp_path: Path) -> None:
    """Asymmetric int8 weights, as other quantizers store them: u8 values, minus a u8 zero
    point per output channel (itself converted), times a scale. The rewrite computes the conv
    the decompressed weights give, as OpenVINO's own conv does."""
    import openvino.opset13 as ops

    rng = np.random.default_rng(3)
    stored = rng.integers(0, 256, (12, 8, 3, 3), dtype=np.uint8)
    zero = rng.integers(100, 156, (12, 1, 1, 1), dtype=np.uint8)
    scale = rng.uniform(0.001, 0.01, (12, 1, 1, 1)).astype(np.float32)

    def model() -> Any:
        x = ops.parameter([1, 8, 14, 15], np.float32)
        weights = ops.multiply(ops.subtract(ops.convert(ops.constant(stored), np.float32),
                                            ops.convert(ops.constant(zero), np.float32)),
                               ops.constant(scale))
        return ov.Model([ops.convolution(x, weights, [1, 1], [2, 2], [2, 2], [2, 2])], [x])

    rewritten = model()
    assert winograd_convs(rewritten, always(4)) == 1
    assert winograd_nodes(rewritten) == ["winograd_4"]
    x = image((1, 8, 14, 15))
    want = compiled(model())(x)[0]
    direct = (stored.astype(np.float32) - zero) * scale
    with torch.no_grad():
        torch_conv = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(direct),
                                                padding=2, dilation=2).numpy()
    assert np.abs(want - torch_conv).max() <= 1e-5 * np.abs(torch_conv).max()
    assert np.abs(compiled(rewritten)(x)[0] - want).max() <= 1e-4 * np.abs(want).max()


def test_winograd_leaves_convs_that_do_not_compute_in_f32() -> None:
    """A conv of an f16 graph is left as it is (the transforms are made in f32)."""
    import openvino.opset13 as ops

    x = ops.parameter([1, 8, 14, 14], np.float16)
    weights = ops.constant(np.ones((8, 8, 3, 3), np.float16))
    model = ov.Model([ops.convolution(x, weights, [1, 1], [1, 1], [1, 1], [1, 1])], [x])
    assert winograd_convs(model, always(6)) == 0
    assert [op.get_type_name() for op in model.get_ordered_ops()].count("Convolution") == 1
