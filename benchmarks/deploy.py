"""Deployment artifacts against torchvision, torch.compile and OpenVINO's own conversion.

    python benchmarks/deploy.py [--spec zoo/torchvision_deeplabv3_resnet50] [--sizes 257 513]
        [--targets export aoti onnx openvino] [--precisions fp32] [--repeats 10] [--json F]
        [--seed 0] [--set key=value ...] [--static]

For one spec: its compiled module with random weights (drawn from ``--seed``) and batch-norm
statistics (for a zoo spec of torchvision's, torchvision's own model gets the same weights).
The artifacts are built once (`specc build --target`, dynamic height and width) into a
temporary folder and timed at every size. Beside them: torchvision's eager model;
`torch.compile` (inductor, freezing, channels_last) of the inference graph; and, with OpenVINO
installed, OpenVINO's conversion of torchvision's model at each precision asked for. With
``--static``, the artifacts are also built for each size alone (`specc build --static`: one
input shape), and each static OpenVINO IR is timed a second time as OpenVINO's own runtime runs
it, compiled from the file with nothing of specc's in between. All in one process, interleaved
repeats after a warm-up (:func:`specc.bench.measure`); speed-ups are against torchvision's
eager model where there is one, else the reference. Prints the CPU model and its
instruction-set features.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from runtime.calibration import random_images, spec_images
from specc.api import Compilation, build, load_spec
from specc.bench import Candidate, logits_of, measure, torchvision_twin
from specc.build import Deployment, build_to
from specc.errors import DataError
from specc.hardware import cpu_info
from specc.targets import inference_graph, load_artifact, openvino_core, parse_requests

REPO = Path(__file__).resolve().parents[1]


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Batch-norm statistics that are not the identity (so folding changes the weights)."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def random_compilation(spec: str, overrides: Sequence[str] = (), seed: int = 0) -> Compilation:
    """``specs/<spec>.yaml`` compiled, with random weights drawn from ``seed`` and batch-norm
    statistics that are not the identity (:func:`randomize`)."""
    torch.manual_seed(seed)  # the compiled module's initial (random) weights
    comp = build(load_spec(REPO / "specs" / f"{spec}.yaml", list(overrides)))
    randomize(comp.module)
    return comp


def calibration_images(comp: Compilation, count: int = 16) -> tuple[torch.Tensor, ...]:
    """``count`` images of the spec's training data for int8, random ones where the data is not
    at hand."""
    try:
        return tuple(spec_images(comp.spec, count, split=comp.spec.data.train_split))
    except DataError:
        return tuple(random_images(comp.spec.input.size, count))


def openvino_of(model: torch.nn.Module, size: int, precision: str) -> Candidate | None:
    """OpenVINO's own conversion of an eager model (its int8: NNCF on random images)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    x = torch.randn(1, 3, size, size)

    class Out(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)["out"]

    converted = ov.convert_model(Out(model).eval(), example_input=x)
    if precision == "int8":
        import nncf

        data = nncf.Dataset([i.numpy() for i in random_images((size, size), 8)])
        converted = nncf.quantize(converted, data, subset_size=8)
    hint = {"bf16": "bf16"}.get(precision, "f32")
    compiled = openvino_core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    return Candidate(f"OpenVINO of torchvision ({precision})",
                     lambda t: torch.from_numpy(compiled(t.numpy())[0].copy()),
                     precision=precision, kind="openvino-torchvision")


def plain_openvino(xml: Path, precision: str) -> Candidate:
    """An OpenVINO IR compiled from its file by OpenVINO alone, as a deployment outside Python
    or without specc runs it (the precision hint it carries applies)."""

    compiled = openvino_core().compile_model(str(xml), "CPU")
    return Candidate(f"OpenVINO runtime on {xml.name}, as it is",
                     lambda t: torch.from_numpy(compiled(t.numpy())[0].copy()),
                     precision=precision, kind="openvino-plain")


def static_artifacts(args: argparse.Namespace, module: torch.nn.Module,
                     requests: Sequence[Any], size: int, folder: Path) -> list[Candidate]:
    """The requested artifacts built for 1×3×``size``×``size`` alone (``--static``) with
    ``module``'s weights, and each OpenVINO IR among them as OpenVINO runs it alone."""
    comp = build(load_spec(REPO / "specs" / f"{args.spec}.yaml",
                           [*args.overrides, f"input.size=[{size}, {size}]"]))
    comp.module.load_state_dict(module.state_dict())
    comp.module.eval()
    build_to(comp, folder, deploy=Deployment(
        tuple(requests), tuple(random_images((size, size), 2)), "random",
        tuple(random_images((size, size), 16)), progress=print, static=True))
    out = []
    for request in requests:
        if request.target == "torchscript":
            continue
        artifact = load_artifact(folder / comp.spec.name / request.file)
        out.append(Candidate(f"{request.target} --static ({request.file})", logits_of(artifact),
                             precision=request.precision))
        if request.target == "openvino":
            out.append(plain_openvino(folder / comp.spec.name / request.file,
                                      request.precision))
    return out


def compiled_graph(module: torch.nn.Module) -> Candidate:
    """torch.compile (inductor) of the inference graph, weights frozen, channels_last."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    graph = inference_graph(module).to(memory_format=torch.channels_last)
    return Candidate("torch.compile (inductor, freezing, channels_last)",
                     logits_of(torch.compile(graph)), kind="compile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="zoo/torchvision_deeplabv3_resnet50")
    parser.add_argument("--sizes", type=int, nargs="+", default=[257, 513])
    parser.add_argument("--targets", nargs="+", default=["export", "aoti", "onnx", "openvino"])
    parser.add_argument("--precisions", nargs="+", default=["fp32"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="Leave out torch.compile.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the random weights (a run's agreement figures repeat).")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides",
                        help="Spec overrides (key=value), e.g. input.size=[257,257] for a spec "
                             "built for one size (aspp.image_pooling.kernel: fixed).")
    parser.add_argument("--static", action="store_true",
                        help="Also build the artifacts for each size alone (specc build "
                             "--static) and time them, and their OpenVINO IRs as OpenVINO runs "
                             "them alone.")
    args = parser.parse_args()

    cpu = cpu_info()
    print(f"CPU: {cpu.summary()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    comp = random_compilation(args.spec, args.overrides, args.seed)
    module = comp.module
    twin = torchvision_twin(comp, module)
    texts = [t if t not in ("aoti", "openvino") else f"{t}:{p}"
             for t in args.targets for p in (args.precisions if t in ("aoti", "openvino")
                                             else ["fp32"])]
    requests = parse_requests(texts)
    calibration = calibration_images(comp)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        checks = tuple(random_images(comp.spec.input.size, 2))
        build_to(comp, Path(tmp), deploy=Deployment(
            tuple(requests), checks, "random", calibration, progress=print))
        folder = Path(tmp) / comp.spec.name
        artifacts = [load_artifact(folder / r.file) for r in requests
                     if r.target != "torchscript"]
        extra = [] if args.no_compile else [compiled_graph(module)]
        for size in args.sizes:
            candidates = [Candidate("reference (eager)", logits_of(module), kind="reference")]
            if twin is not None:
                candidates.append(Candidate("torchvision (eager)", logits_of(twin),
                                            kind="torchvision"))
                candidates += [c for p in args.precisions
                               if (c := openvino_of(twin, size, p)) is not None]
            candidates += extra
            candidates += [Candidate(f"{a.entry['target']} ({a.path.name})", logits_of(a),
                                     precision=a.entry["precision"]) for a in artifacts]
            if args.static:
                candidates += static_artifacts(args, module, requests, size,
                                               Path(tmp) / f"static-{size}")
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
            macs = build(load_spec(REPO / "specs" / f"{args.spec}.yaml",
                                   [*args.overrides, f"input.size=[{size}, {size}]"])
                         ).manifest["macs"]
            rows = measure(candidates, x, macs=macs, repeats=args.repeats, progress=print)
            results.append({"size": size, "rows": rows})
            print(f"\n{args.spec} at 1×3×{size}×{size}")
            print("| run | precision | median ms | vs reference | vs torchvision | argmax |")
            print("|---|---|---|---|---|---|")
            for row in rows:
                versus = row["speedup_vs_torchvision"]
                print(f"| {row['name']} | {row['precision']} | {row['median_ms']:.1f} | "
                      f"{row['speedup']:.2f}× | "
                      f"{'—' if versus is None else f'{versus:.2f}×'} | "
                      f"{row['argmax_agreement'] * 100:.2f} % |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu.as_dict(), "spec": args.spec,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
