"""OpenVINO int8 with full-range and half-range weights: speed and agreement on this CPU.

    python benchmarks/int8_ranges.py [--spec zoo/torchvision_deeplabv3_resnet50]
        [--sizes 257 513] [--repeats 7]

NNCF quantizes an ``openvino`` int8 IR with one of two weight ranges
(:func:`specc.targets.nncf_overflow_fix`): ``specc build --int8-range full`` gives NNCF's
default, ``first_layer_only`` (only the first conv's weights in half the int8 range; the
default on CPUs with VNNI), and ``--int8-range half`` gives ``enable`` (every plain conv's
weights in half the range; the default without VNNI, where the int8 products saturate). This builds the spec's artifact both ways (random weights and batch-norm
statistics, 16 calibration images of the spec's data, random ones when it is not at hand) and
times them at each size in one process, interleaved after a warm-up
(:func:`specc.bench.measure`), each compiled for that size as ``OpenVinoRunner`` compiles it.
The first row, the fp32 artifact, is the reference of the speed-ups and the argmax agreement.
Prints the CPU model and its instruction-set features. Accuracy on trained weights is measured
with ``specc eval`` (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from deploy import calibration_images, random_compilation
from openvino_static import compiled

from runtime.calibration import random_images
from specc.api import build, load_spec
from specc.bench import Candidate, measure
from specc.build import Deployment, build_to
from specc.hardware import cpu_info
from specc.openvino_static import optimize_static
from specc.targets import nncf_overflow_fix, parse_requests

REPO = Path(__file__).resolve().parents[1]
RANGES = ("full", "half")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="zoo/torchvision_deeplabv3_resnet50")
    parser.add_argument("--sizes", type=int, nargs="+", default=[257, 513])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    print(f"CPU: {cpu_info().summary()}; torch {torch.__version__}; "
          f"{torch.get_num_threads()} threads")
    spec_path = REPO / "specs" / f"{args.spec}.yaml"
    comp = random_compilation(args.spec)
    calibration = calibration_images(comp)
    checks = tuple(random_images(comp.spec.input.size, 2))
    with tempfile.TemporaryDirectory() as tmp:
        xmls = {}
        for int8_range in (None, *RANGES):
            precision = "fp32" if int8_range is None else "int8"
            out = Path(tmp) / (int8_range or "fp32")
            build_to(comp, out, deploy=Deployment(
                tuple(parse_requests([f"openvino:{precision}"])), checks, "random",
                calibration, progress=print, int8_range=int8_range or "auto"))
            name = (f"int8, overflow_fix={nncf_overflow_fix(int8_range == 'half')}"
                    if int8_range else "fp32")
            xmls[name] = (out / comp.spec.name / f"model-openvino-{precision}.xml", precision)
        for size in args.sizes:
            macs = build(load_spec(spec_path, [f"input.size=[{size}, {size}]"])).manifest["macs"]
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
            candidates = [Candidate(name, compiled(xml, size, precision, optimize_static),
                                    precision=precision)
                          for name, (xml, precision) in xmls.items()]
            print(f"\n{args.spec} at 1×3×{size}×{size}")
            print("| artifact | median ms | vs fp32 | argmax vs fp32 |")
            print("|---|---|---|---|")
            for row in measure(candidates, x, macs=macs, repeats=args.repeats):
                print(f"| {row['name']} | {row['median_ms']:.1f} | {row['speedup']:.2f}× | "
                      f"{row['argmax_agreement'] * 100:.2f} % |")


if __name__ == "__main__":
    main()
