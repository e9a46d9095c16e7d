"""OpenVINO artifacts compiled for one input size, with and without specc's static rewrites.

    python benchmarks/openvino_static.py [--spec zoo/torchvision_deeplabv3_resnet50]
        [--sizes 257 513] [--precisions int8 fp32] [--repeats 9]

Builds the spec's ``openvino`` artifacts (random weights and batch-norm statistics; int8
calibrated on 16 images of the spec's data, random ones when it is not at hand) and compiles
each for 1×3×S×S in several ways: as converted (the IR reshaped, nothing else: what a deployer
gets from OpenVINO alone), after each rewrite of :mod:`specc.openvino_static` alone
(:func:`~specc.openvino_static.drop_padding_taps`,
:func:`~specc.openvino_static.split_int8_atrous` for int8,
:func:`~specc.openvino_static.winograd_convs` for fp32 and int8, whatever the CPU), and after
:func:`~specc.openvino_static.optimize_static` (what ``OpenVinoRunner`` compiles on this CPU).
All in one process, interleaved repeats after a warm-up (:func:`specc.bench.measure`);
speed-ups and argmax agreement are against the same precision as converted. Prints the CPU
model and its instruction-set features.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from deploy import calibration_images, random_compilation

from runtime.calibration import random_images
from specc.api import build, load_spec
from specc.bench import Candidate, measure
from specc.build import Deployment, build_to
from specc.errors import SpeccError
from specc.hardware import cpu_info
from specc.openvino_static import (
    drop_padding_taps,
    optimize_static,
    split_int8_atrous,
    winograd_convs,
)
from specc.targets import check_input, load_artifact, openvino_core, parse_requests

REPO = Path(__file__).resolve().parents[1]

#: The ways each artifact is compiled: a name and what is done to the reshaped IR first.
WAYS: dict[str, Callable[[Any], Any]] = {
    "as converted": lambda model: None,
    "drop_padding_taps": drop_padding_taps,
    "split_int8_atrous": split_int8_atrous,
    "winograd_convs": winograd_convs,
    "optimize_static (what the runner compiles)": optimize_static,
}

#: The rewrites that apply to one precision only: the others leave its IR as it is.
ONLY_FOR = {split_int8_atrous: "int8", winograd_convs: "fp32 int8"}


def compiled(xml: Path, size: int, precision: str, rewrite: Callable[[Any], Any]
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The IR at ``xml`` reshaped to 1×3×size×size, rewritten, compiled for the CPU."""

    core = openvino_core()
    model = core.read_model(str(xml))
    model.reshape([1, 3, size, size])
    hint = "bf16" if precision == "bf16" else "f32"
    if rewrite is optimize_static:
        optimize_static(model, precision=hint)
    else:
        rewrite(model)
    net = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    return lambda x: torch.from_numpy(net(x.numpy())[0].copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="zoo/torchvision_deeplabv3_resnet50")
    parser.add_argument("--sizes", type=int, nargs="+", default=[257, 513])
    parser.add_argument("--precisions", nargs="+", default=["int8", "fp32"])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    print(f"CPU: {cpu_info().summary()}; torch {torch.__version__}; "
          f"{torch.get_num_threads()} threads")
    spec_path = REPO / "specs" / f"{args.spec}.yaml"
    comp = random_compilation(args.spec)
    calibration = calibration_images(comp)
    requests = parse_requests([f"openvino:{p}" for p in args.precisions])
    with tempfile.TemporaryDirectory() as tmp:
        build_to(comp, Path(tmp), deploy=Deployment(
            tuple(requests), tuple(random_images(comp.spec.input.size, 2)), "random",
            calibration, progress=print))
        folder = Path(tmp) / comp.spec.name
        for size in args.sizes:
            macs = build(load_spec(spec_path, [f"input.size=[{size}, {size}]"])).manifest["macs"]
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
            print(f"\n{args.spec} at 1×3×{size}×{size}")
            print("| precision | compiled | median ms | vs as converted | argmax |")
            print("|---|---|---|---|---|")
            for request in requests:
                try:  # the sizes its graph takes (a fixed image pooling ties it to the crop)
                    check_input(folder / request.file,
                                load_artifact(folder / request.file).entry.get("input_bounds"),
                                x.shape)
                except SpeccError as err:
                    print(f"| {request.precision} | skipped: {err} | | | |")
                    continue
                ways = {name: rewrite for name, rewrite in WAYS.items()
                        if request.precision in ONLY_FOR.get(rewrite, request.precision).split()}
                candidates = [Candidate(name, compiled(folder / request.file, size,
                                                       request.precision, rewrite),
                                        precision=request.precision)
                              for name, rewrite in ways.items()]
                for row in measure(candidates, x, macs=macs, repeats=args.repeats):
                    print(f"| {row['precision']} | {row['name']} | {row['median_ms']:.1f} | "
                          f"{row['speedup']:.2f}× | {row['argmax_agreement'] * 100:.2f} % |")


if __name__ == "__main__":
    main()
