"""``specc bench``: time a spec's model, its inference passes, torchvision's twin (zoo specs)
and its deployment artifacts in one process (:mod:`specc.bench` measures, this module picks the
candidates and prints)."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from specc.cli import render
from specc.errors import DataError, SpeccError, SpeccWarning


def bench(
    model: Annotated[Path, typer.Argument(
        help="A spec file, or a build folder (its model.pt and the artifacts it lists).")],
    target: Annotated[list[str] | None, typer.Option(
        help="Artifacts to time: for a spec they are built into a temporary folder first "
             "(export, aoti[:precision], onnx, openvino[:precision]); for a build folder, "
             "those of its artifacts. Default: none for a spec, all for a folder.")] = None,
    precision: Annotated[str, typer.Option(
        help="Precision of aoti/openvino targets without one (auto, fp32, bf16, int8).")] = "auto",
    size: Annotated[tuple[int, int] | None, typer.Option(
        help="Input height and width (default: the spec's input.size).")] = None,
    batch: Annotated[int, typer.Option(min=1, max=1024, help="Images per batch.")] = 1,
    threads: Annotated[int | None, typer.Option(
        min=1, max=1024, help="Threads for torch, onnxruntime and OpenVINO.")] = None,
    repeats: Annotated[int, typer.Option(min=1, max=10_000, help="Timed runs each.")] = 10,
    warmup: Annotated[int, typer.Option(min=1, max=1000, help="Untimed runs each.")] = 2,
    weights: Annotated[Path | None, typer.Option(
        help="Weights for a spec (default: fresh ones; torchvision's twin gets the same).")] = None,
    calibration: Annotated[int, typer.Option(
        min=0, max=10_000, help="Calibration images for int8 targets.")] = 32,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Median/min/max latency, images/s, multiply-adds/s, speed-up and argmax agreement of a
    model and its artifacts, measured in one process with interleaved repeats."""
    import torch

    from specc.bench import Candidate, logits_of, measure, torchvision_twin
    from specc.hardware import cpu_info, usable_cores
    from specc.passes import optimize_for_inference

    if threads:
        cores = usable_cores()
        if threads > cores:
            warnings.warn(SpeccWarning(
                f"--threads {threads} on {cores} usable cores: the threads take turns on the "
                "cores, and runtimes that cap themselves at the core count (OpenVINO) then look "
                f"far faster than the others; the figures compare nothing. Use --threads {cores} "
                "or fewer"), stacklevel=1)
        torch.set_num_threads(threads)
    doc, module, folder = _reference(model, weights)
    comp = _compiled(doc, size)
    height, width = comp.spec.input.size
    with tempfile.TemporaryDirectory(prefix="specc-bench-") as tmp:
        artifacts = _artifacts(model, folder, comp, module, target, precision, calibration,
                               Path(tmp), threads)
        candidates = [Candidate("reference (eager)", logits_of(module.eval()), kind="reference"),
                      Candidate("inference passes (eager)",
                                logits_of(optimize_for_inference(module)), kind="passes")]
        twin = torchvision_twin(comp, module)
        if twin is not None:
            candidates.append(Candidate("torchvision (eager)", logits_of(twin),
                                        kind="torchvision"))
        candidates += [Candidate(f"{a.entry['target']} ({a.path.name})", logits_of(a),
                                 precision=a.entry["precision"]) for a in artifacts]
        x = _input(comp, batch)
        rows = measure(candidates, x, macs=comp.manifest["macs"], repeats=repeats,
                       warmup=warmup,
                       progress=lambda t: None if json_ else render.err.print(f"  {t}",
                                                                               markup=False))
    result = {"model": str(model), "spec": comp.spec.name, "size": [height, width],
              "batch": batch, "threads": torch.get_num_threads(), "repeats": repeats,
              "cpu": cpu_info().as_dict(), "torch": torch.__version__, "results": rows}
    if json_:
        print(json.dumps(result, indent=2))
        return
    render.print_bench(result)


def _reference(model: Path, weights: Path | None) -> tuple[Any, Any, Path | None]:
    """The spec document, its module with weights, and the build folder when one was given."""
    from specc.api import Document, build, load_spec
    from specc.artifacts import (
        TORCHSCRIPT,
        archive_spec_info,
        check_build_folder,
        load_weights,
        read_weights,
    )

    if model.is_dir():
        if weights is not None:
            raise SpeccError(f"{model}: a build folder carries its own weights; --weights "
                             "applies to a spec file")
        check_build_folder(model)
        info = archive_spec_info(model / TORCHSCRIPT)
        if info is None:
            raise SpeccError(f"{model}: no {TORCHSCRIPT} with a spec inside; build it with "
                             "specc build")
        doc = Document.from_resolved(info["resolved"], model / TORCHSCRIPT)
        module = build(doc).module
        load_weights(module, read_weights(model / TORCHSCRIPT))
        return doc, module, model
    doc = load_spec(model)
    module = build(doc).module
    if weights is not None:
        load_weights(module, read_weights(weights))
    return doc, module, None


def _compiled(doc: Any, size: tuple[int, int] | None) -> Any:
    """The compilation at the measured size (for its multiply-add count)."""
    from specc.api import Document, compile_spec

    if size is None:
        return compile_spec(doc)
    from specc.spec_train import MAX_SIZE

    if min(size) <= 0 or max(size) > MAX_SIZE:
        raise SpeccError(f"--size: expected H W from 1 to {MAX_SIZE}, found {size[0]} {size[1]}")
    resolved = dict(doc.resolved)
    resolved["input"] = {**resolved["input"], "size": list(size)}
    return compile_spec(Document.from_resolved(resolved, doc.path))


def _artifacts(model: Path, folder: Path | None, comp: Any, module: Any,
               targets: list[str] | None, precision: str, calibration: int, tmp: Path,
               threads: int | None) -> list[Any]:
    """The deployment artifacts to time, opened with :func:`specc.targets.load_artifact`."""
    import torch

    from specc.artifacts import spec_info
    from specc.targets import (
        ARTIFACTS,
        artifacts_json,
        check_libraries,
        load_artifact,
        parse_requests,
        read_listing,
    )

    requests = [r for r in parse_requests(targets or [], precision) if r.target != "torchscript"]
    check_libraries(requests)
    if folder is not None:
        listing = folder / ARTIFACTS
        if not listing.is_file():
            return []
        entries = read_listing(listing)["artifacts"]
        wanted = {r.file for r in requests}
        chosen = [e for e in entries
                  if e["target"] != "torchscript" and (not wanted or e["file"] in wanted)]
        if not torch.cuda.is_available():
            # a GPU package is timed where it runs; the CPU's artifacts here
            skipped = [e["file"] for e in chosen if e.get("device") == "cuda"]
            if skipped:
                warnings.warn(SpeccWarning(
                    f"{folder}: {', '.join(skipped)} compiled for CUDA, and torch sees no GPU "
                    "here; not timed"), stacklevel=1)
            chosen = [e for e in chosen if e.get("device") != "cuda"]
        return [load_artifact(folder / e["file"], threads) for e in chosen]
    if not requests:
        return []
    from runtime.calibration import check_images
    from specc.targets import write_targets

    images = check_images(comp.spec, 2, calibration, any(r.precision == "int8" for r in requests))
    entries = write_targets(module, comp.spec.input.size, requests, tmp,
                            check_images=images.checks, calibration=images.calibration,
                            progress=lambda t: render.err.print(f"  {t}", markup=False),
                            score=images.score)
    (tmp / ARTIFACTS).write_text(artifacts_json(spec_info(comp.doc), entries, "bench"))
    return [load_artifact(tmp / e["file"], threads) for e in entries]


def _input(comp: Any, batch: int) -> Any:
    """The measured batch: images of the spec's data where it is at hand, else random."""
    import torch

    from runtime.calibration import fit, random_images, spec_images

    try:
        images = spec_images(comp.spec, batch)
    except DataError:
        images = []
    images += random_images(comp.spec.input.size, batch - len(images), seed=1)
    return torch.cat([fit(i, comp.spec.input.size) for i in images])
