"""Single 3×3 convs in OpenVINO fp32: direct against Winograd's F(4, 3) and F(6, 3).

    python benchmarks/winograd_convs.py [--repeats 9] [--convs IN,OUT,RATE,SIZE ...]

Each conv (random weights, zero-padded "same", stride 1, on a 1×IN×SIZE×SIZE map) is an
OpenVINO model of one ``Convolution``, compiled at f32 as it is and after
:func:`specc.openvino_static.winograd_convs` with each tile of :data:`specc.winograd.TILES`; all
of them timed in one process, interleaved after a warm-up (:func:`specc.bench.measure`). The
default convs are ResNet-50's at
257×257 and 513×513 (output stride 8) and the edges of :func:`specc.winograd.choose_tile`'s
rule; the table says which tile the rule picks, so its constants can be checked on any CPU.
Prints the CPU model and its instruction-set features.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from specc.bench import Candidate, measure
from specc.hardware import cpu_info
from specc.openvino_static import winograd_convs
from specc.targets import openvino_core
from specc.winograd import TILES, choose_tile, saving

#: The top of the 256-level range the int8 conv's output is quantized to (its step: 1/255 of it).
OUTPUT_RANGE = 4.0

#: (input channels, output channels, rate, map size).
CONVS = [
    (512, 512, 4, 65), (512, 512, 2, 65), (256, 256, 2, 65), (256, 256, 1, 65),
    (2048, 256, 12, 65), (2048, 256, 24, 65), (128, 128, 1, 65), (512, 512, 8, 65),
    (512, 512, 2, 33), (512, 512, 4, 33), (256, 256, 2, 33), (256, 256, 4, 33),
    (2048, 256, 12, 33), (128, 128, 1, 33), (64, 64, 1, 129),
]


def conv_model(in_channels: int, out_channels: int, rate: int, size: int, tile: int | None,
               int8: bool = False) -> Any:
    """The conv as an OpenVINO model, rewritten with F(tile, 3) unless ``tile`` is None. With
    ``int8`` it is the conv as an NNCF int8 IR holds it: its input through a ReLU and a
    256-level FakeQuantize, int8 weights decompressed by a scale per output channel, a bias,
    a ReLU and the next conv's FakeQuantize after it (which OpenVINO fuses into the kernel)."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(in_channels + rate)
    weights = (rng.standard_normal((out_channels, in_channels, 3, 3))
               / np.sqrt(9 * in_channels)).astype(np.float32)
    x = ops.parameter([1, in_channels, size, size], np.float32)
    if not int8:
        conv = ops.convolution(x, ops.constant(weights), [1, 1], [rate, rate], [rate, rate],
                               [rate, rate])
    else:
        def quantized(t: Any, high: float) -> Any:
            low, top = np.array(0, np.float32), np.array(high, np.float32)
            return ops.fake_quantize(ops.relu(t), low, top, low, top, 256)

        # 7-bit weights, as NNCF stores them for CPUs without VNNI (their int8 kernels add
        # pairs of products in 16 bits, which full-range weights can overflow)
        scale = np.abs(weights).max(axis=(1, 2, 3), keepdims=True) / 63
        stored = ops.constant(np.round(weights / scale).astype(np.int8))
        decompressed = ops.multiply(ops.convert(stored, np.float32),
                                    ops.constant(scale.astype(np.float32)))
        conv = ops.convolution(quantized(x, 3.0), decompressed, [1, 1], [rate, rate],
                               [rate, rate], [rate, rate])
        bias = ops.constant(rng.standard_normal((1, out_channels, 1, 1)).astype(np.float32))
        conv = quantized(ops.add(conv, bias), OUTPUT_RANGE)
    model = ov.Model([conv], [x])
    if tile is not None:
        assert winograd_convs(model, lambda *_, **__: tile) == 1
    return model


def compiled(core: Any, model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` compiled at f32 for the CPU, as a function of torch tensors."""
    request = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
                                 ).create_infer_request()
    return lambda x: torch.from_numpy(request.infer({0: x.numpy()})[0].copy())


def main() -> None:
    import openvino as ov

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                        help="int8: each conv as an int8 IR holds it, direct with OpenVINO's "
                             "int8 kernel")
    parser.add_argument("--convs", nargs="*", default=None,
                        help="IN,OUT,RATE,SIZE for each conv (default: ResNet-50's and more)")
    args = parser.parse_args()
    convs = ([tuple(int(v) for v in c.split(",")) for c in args.convs] if args.convs
             else CONVS)
    print(f"CPU: {cpu_info().summary()}; OpenVINO {ov.__version__}")
    core = openvino_core()
    print("| conv | rate | map | G multiply-adds | direct ms | "
          + " | ".join(f"F({m}, 3) ms (saving)" for m in TILES) + " | rule picks |")
    print("|---|---|---|---|---|" + "---|" * len(TILES) + "---|")
    int8 = args.precision == "int8"
    for cin, cout, rate, size in convs:
        x = torch.randn(1, cin, size, size, generator=torch.Generator().manual_seed(size))
        runs = [compiled(core, conv_model(cin, cout, rate, size, tile, int8))
                for tile in (None, *TILES)]
        want = runs[0](x)
        for run in runs[1:]:  # int8: rounding may move an output by one quantization level
            limit = OUTPUT_RANGE / 255 * 1.01 if int8 else 1e-3 * want.abs().max()
            assert (run(x) - want).abs().max() <= limit
        candidates = [Candidate(name, run) for name, run
                      in zip(["direct", *(f"F({m}, 3)" for m in TILES)], runs, strict=True)]
        macs = 9 * cin * cout * size * size
        ms = [row["median_ms"] for row in measure(candidates, x, macs=macs, repeats=args.repeats)]
        cells = [f"{t:.1f} ({saving((size, size), (rate, rate), m):.1f}×)"
                 for t, m in zip(ms[1:], TILES, strict=True)]
        pick = choose_tile(cin, cout, (size, size), (rate, rate), int8=int8)
        picked = f"F({pick}, 3)" if pick else "direct"
        print(f"| {cin} → {cout} | {rate} | {size}×{size} | {macs / 1e9:.2f} | {ms[0]:.1f} | "
              + " | ".join(cells) + f" | {picked} |")


if __name__ == "__main__":
    main()
