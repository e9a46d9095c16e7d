"""The compiler's commands: validate, build, info, schema, import-weights, diff and graph.

Each one turns its flags into calls of the plain compiler modules and prints what they return;
the tables are laid out in :mod:`specc.cli.render`. None of these modules imports torch, so
``specc --help`` and ``specc validate`` start fast; the functions that need torch import it
themselves.
"""

from __future__ import annotations

import json
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from specc.advice import atrous_branches, stage_receptive_fields
from specc.analysis import info as info_of
from specc.api import Compilation, compile_spec, load_spec
from specc.artifacts import shown
from specc.build import Deployment, build_to
from specc.cli import render
from specc.diff import Side, compare, load_side
from specc.errors import SpeccError
from specc.fsutil import atomic_write_bytes, output_file, output_folder, reporting_os_errors
from specc.graphviz import collapsed, layers, render_dot, render_matplotlib, to_dot
from specc.importers import import_weights
from specc.spec import json_schema
from specc.targets import Request, check_libraries, half_int8_range, parse_requests

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a spec value: key.path=value (YAML), e.g. backbone.output_stride=8.")]


def _specs_dir() -> Path:
    return Path("specs")


def _all_specs() -> list[Path]:
    root = _specs_dir()
    if not root.is_dir():
        raise SpeccError("--all: no specs/ folder in the current directory")
    return sorted(root.rglob("*.yaml"))


def validate(
    specs: Annotated[list[Path], typer.Argument(help="Spec files.")],
    set_: SetOpt = None,
    strict: Annotated[bool, typer.Option(help="Treat warnings as errors.")] = False,
) -> None:
    """Check specs: errors (exit 2) and warnings for legal but suspicious choices."""
    warned = False
    for path in specs:
        comp = compile_spec(load_spec(path, set_ or []))
        for note in comp.warnings:
            render.err.print(f"{note}", markup=False)
        warned |= bool(comp.warnings)
        render.out.print(f"ok: {path} — {comp.network.title}", markup=False)
    if strict and warned:
        raise SpeccError("warnings found and --strict given")


def build(
    specs: Annotated[list[Path] | None, typer.Argument(help="Spec files.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every spec under specs/.")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("generated"),
    set_: SetOpt = None,
    weights: Annotated[Path | None, typer.Option(
        help="Weights to put in model.pt: a .safetensors or .pt state dict, a run folder or a "
             "model.pt (a build's own passes on the file its weights came from).")] = None,
    fresh_weights: Annotated[bool, typer.Option(
        help="Build with freshly initialised weights even over a build whose model.pt holds "
             "weights from a file, which are then replaced (without it such a rebuild is "
             "refused unless --weights is given).")] = False,
    check: Annotated[bool, typer.Option(
        help="Write nothing; exit 1 if the output folder differs from what the specs compile "
             "to.")] = False,
    strict: Annotated[bool, typer.Option(help="Treat warnings as errors.")] = False,
    target: Annotated[list[str] | None, typer.Option(
        help="Also write a deployment artifact, checked against the model: export (.pt2), "
             "aoti, onnx or openvino, optionally with a precision (aoti:int8, openvino:bf16). "
             "Repeatable.")] = None,
    precision: Annotated[str, typer.Option(
        help="Precision of aoti/openvino targets without one: auto (bf16 where the CPU has it, "
             "else fp32; fp16 for --device cuda), fp32, bf16, int8, or fp16 (--device cuda "
             "only).")] = "auto",
    device: Annotated[str, typer.Option(
        help="What aoti packages are compiled for: cpu, or cuda (this machine's GPU; fp32, "
             "fp16 or bf16). The other targets run on the CPU.")] = "cpu",
    calibration: Annotated[int, typer.Option(
        min=0, max=10_000, help="Images of the spec's data that int8 targets are calibrated "
                                "on.")] = 32,
    check_images: Annotated[int, typer.Option(
        min=1, max=10_000, help="Images each artifact is checked on against the model.")] = 4,
    int8_range: Annotated[str, typer.Option(
        help="int8 ranges: half (7-bit activations for aoti, half-range weights for openvino: "
             "no saturation on CPUs without VNNI, such as AVX2-only ones), full (for CPUs "
             "with VNNI or AMX only) or auto (half where this CPU has no VNNI).")] = "auto",
    static: Annotated[bool, typer.Option(
        help="Make every artifact for one input shape, 1×3×H×W at the spec's input.size "
             "(change it with --set input.size=[H,W]): faster where a deployment serves one "
             "size; the openvino and onnx files are rewritten for it and for this machine's "
             "CPU, so OpenVINO's own runtime and onnxruntime run them as fast as specc does. "
             "eval and predict pad smaller images up to it; larger ones need --tile.")] = False,
) -> None:
    """Compile specs to OUT/<name>/model.py, manifest.json and model.pt (TorchScript), and
    deployment artifacts with --target."""
    paths = list(specs or [])
    if all_:
        paths += _all_specs()
    if not paths:
        raise SpeccError("nothing to build: give spec files or --all")
    if device == "cuda":
        from runtime.devices import resolve_device

        resolve_device(device)  # refused where torch sees no GPU, before anything is built
    requests = parse_requests(target or [], precision, device=device)
    half_int8_range(int8_range)  # refuse an unknown value before anything is built
    if static and not requests:
        raise SpeccError("--static makes deployment artifacts for one input shape; give the "
                         "targets with --target")
    if requests and check:
        raise SpeccError("--check compares the committed files; it takes no --target")
    if weights is not None and fresh_weights:
        raise SpeccError(f"--fresh-weights builds without weights, so it takes no --weights "
                         f"(given {weights}); give one or the other")
    check_libraries(requests)
    if not check:
        output_folder(out_dir)
    differs = []
    for path in paths:
        comp = compile_spec(load_spec(path, set_ or []))
        for note in comp.warnings:
            render.err.print(note, markup=False)
        if strict and comp.warnings:
            raise SpeccError(f"{path}: warnings found and --strict given")
        deploy = (_deployment(comp, requests, calibration, check_images, int8_range, static)
                  if requests else None)
        result = build_to(comp, out_dir, weights=weights, fresh_weights=fresh_weights,
                          check=check, deploy=deploy)
        if check:
            if result:
                differs.extend(result)
                render.out.print(f"differs: {path} → {', '.join(result)}", markup=False)
            else:
                render.out.print(f"in sync: {path}", markup=False)
        else:
            render.out.print(f"built: {path} → {', '.join(result)}", markup=False)
    if differs:
        raise typer.Exit(1)


def _deployment(comp: Compilation, requests: list[Request], calibration: int,
                count: int, int8_range: str = "auto", static: bool = False) -> Deployment:
    """The artifacts of ``--target`` with their check and calibration images
    (:func:`runtime.calibration.check_images`)."""
    from runtime.calibration import check_images

    images = check_images(comp.spec, count, calibration,
                          any(r.precision == "int8" for r in requests))
    return Deployment(tuple(requests), images.checks, images.source, images.calibration,
                      progress=lambda text: render.err.print(f"  {text}", markup=False),
                      score=images.score, int8_range=int8_range, static=static)


def info(
    spec: Annotated[Path, typer.Argument(help="Spec file.")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    size: Annotated[tuple[int, int] | None, typer.Option(
        help="Input size H W for feature sizes and multiply-adds (default: input.size).")] = None,
    set_: SetOpt = None,
) -> None:
    """The schedule table, ASPP rates, parameters, multiply-adds and receptive field."""
    overrides = list(set_ or [])
    if size is not None:
        if min(size) <= 0:
            raise SpeccError(f"--size: expected positive H W, found {size[0]} {size[1]}")
        overrides.append(f"input.size=[{size[0]}, {size[1]}]")
    comp = compile_spec(load_spec(spec, overrides))
    data = info_of(comp)
    data["atrous_branches"] = atrous_branches(comp)
    data["stages"] = stage_receptive_fields(comp)
    if json_:
        print(json.dumps(data, indent=2))
        return
    render.print_info(data)


def schema() -> None:
    """Print the JSON Schema of the spec language (for editor completion)."""
    print(json.dumps(json_schema(), indent=2))


def import_weights_command(
    spec: Annotated[Path, typer.Argument(help="Spec file.")],
    src: Annotated[Path, typer.Argument(
        help="The foreign state dict: a torch.save'd .pth/.pt or a .safetensors file.")],
    from_: Annotated[str, typer.Option(
        "--from", help="Where it comes from: torchvision (DeepLabV3 or ImageNet ResNet), timm "
                       "(aligned Xception, ResNet), smp (segmentation_models_pytorch DeepLabV3 or "
                       "DeepLabV3Plus, ResNet/ResNeXt encoder) or mmseg (an MMSegmentation "
                       "checkpoint of a ResNet segmentor).")],
    out: Annotated[Path, typer.Option("--out", help="The .safetensors file to write.")],
    set_: SetOpt = None,
    backbone_only: Annotated[bool, typer.Option(
        "--backbone-only", help="Write only the backbone's tensors (the heads keep their "
                                "initialisation); for training, not for `specc build "
                                "--weights`.")] = False,
) -> None:
    """Map a torchvision, timm or smp state dict onto a spec's tensors (no download, ever)."""
    output_file(out)
    imported = import_weights(spec, src, from_, out, overrides=set_ or [],
                              backbone_only=backbone_only)
    typer.echo(f"imported {len(imported.state)} tensors from {src} ({imported.kind}) → {out}")
    for warning in imported.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if imported.dropped:
        typer.echo(f"left out {len(imported.dropped)} source tensors: "
                   + shown(imported.dropped))
    if imported.backbone_only:
        typer.echo(f"{out} holds only the backbone; the other tensors keep their initialisation "
                   "(specc train --init starts the backbone from it; specc build --weights needs a "
                   "whole model)")


class DiffFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


def diff(
    a: Annotated[Path, typer.Argument(metavar="A", help="Spec file, or built folder with "
                                      "manifest.json.")],
    b: Annotated[Path, typer.Argument(metavar="B", help="Spec file, or built folder with "
                                      "manifest.json.")],
    set_a: Annotated[list[str] | None, typer.Option(
        "--set-a", help="Override a value of spec A: key.path=value (YAML).")] = None,
    set_b: Annotated[list[str] | None, typer.Option(
        "--set-b", help="Override a value of spec B: key.path=value (YAML).")] = None,
    format_: Annotated[DiffFormat, typer.Option(
        "--format", help="table (rich, for a terminal), json, or markdown (for a pull "
        "request).")] = DiffFormat.table,
) -> None:
    """What changes between two variants: spec keys, schedule, cost, graph, and whether a
    checkpoint of A loads into B. Exit 0 identical, 1 differ, 2 error."""
    side_a, side_b = _both_sides((a, list(set_a or []), "a"), (b, list(set_b or []), "b"))
    result = compare(side_a, side_b)
    if format_ is DiffFormat.json:
        print(json.dumps(result, indent=2))
    elif format_ is DiffFormat.markdown:
        print(render.diff_markdown(result), end="")
    else:
        render.print_diff(result)
    if not result["identical"]:
        raise typer.Exit(1)


def _both_sides(*sides: tuple[Path, list[str], str]) -> list[Side]:
    """Load every side of a diff; when several are broken, report each, not just the first.

    Raises:
        SpeccError: the last side's error, after the others are printed.
    """
    loaded, errors = [], []
    for path, overrides, which in sides:
        try:
            loaded.append(load_side(path, overrides, which))
        except SpeccError as exc:
            errors.append(exc)
    for exc in errors[:-1]:
        render.err.print(render.error_text(exc), markup=False)
    if errors:
        raise errors[-1]
    return loaded


class GraphFormat(str, Enum):
    dot = "dot"
    svg = "svg"
    png = "png"


#: The format each --out suffix names (.gv is Graphviz's other suffix for dot text).
GRAPH_SUFFIXES = {".dot": GraphFormat.dot, ".gv": GraphFormat.dot, ".svg": GraphFormat.svg,
                  ".png": GraphFormat.png}
#: Suffixes of image and document formats that graph does not write; a file named so would get
#: dot text (or another format's bytes) under a name that promises something else.
OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".pdf",
                        ".ps", ".eps")


def _graph_format(format_: GraphFormat | None, out: Path | None) -> GraphFormat:
    """--format, else the one --out's suffix names, else dot. A --format that another of those
    suffixes contradicts (``--format svg --out g.png``) is refused: either way one of the two
    would be wrong, a PNG file holding SVG or an SVG the user did not ask for. So is an --out
    named for an image format graph does not write (``g.jpg``).

    Raises:
        SpeccError: --format and --out's suffix name different formats, or --out another
            image format.
    """
    if out is not None and out.suffix.lower() in OTHER_IMAGE_SUFFIXES:
        raise SpeccError(f"--out {out}: graph writes dot, svg or png, not {out.suffix}; give "
                         f"--out {out.with_suffix('.png')} (or .svg, .dot)")
    named = GRAPH_SUFFIXES.get(out.suffix.lower()) if out is not None else None
    if format_ is None:
        return named or GraphFormat.dot
    if named is not None and named is not format_:
        raise SpeccError(f"--format {format_.value} and --out {out} disagree ({out.suffix} is "
                         f"the suffix of {named.value}); drop --format to write {named.value}, "
                         f"or give --out {out.with_suffix('.' + format_.value)}")
    return format_


class Renderer(str, Enum):
    auto = "auto"
    dot = "dot"
    matplotlib = "matplotlib"


def graph(
    spec: Annotated[Path, typer.Argument(help="Spec file.")],
    format_: Annotated[GraphFormat | None, typer.Option(
        "--format", help="dot (text), svg or png; default: from --out's suffix, else dot. "
                         "An --out ending in .dot, .gv, .svg or .png must agree with it.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output file (default: standard output; png needs a file).")] = None,
    collapse: Annotated[bool, typer.Option(
        help="One node per backbone unit, runs of identical units as one node.")] = False,
    renderer: Annotated[Renderer, typer.Option(
        help="For svg/png: Graphviz's dot, matplotlib, or auto (dot when installed).")
    ] = Renderer.auto,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a spec value: key.path=value (YAML).")] = None,
) -> None:
    """The model DAG grouped by stage, nodes filled by output stride, labels with dilation."""
    format_ = _graph_format(format_, out)
    if format_ is GraphFormat.png and out is None:
        raise SpeccError("--format png writes binary data: give --out FILE")
    if out is not None:
        output_file(out)
    net = compile_spec(load_spec(spec, set_ or [])).network
    drawn = collapsed(net) if collapse else layers(net)
    dot_text = to_dot(drawn)
    if format_ is GraphFormat.dot:
        data = dot_text.encode()
    elif renderer is Renderer.dot or (renderer is Renderer.auto and shutil.which("dot")):
        data = render_dot(dot_text, format_.value)
    else:
        if renderer is Renderer.auto:
            print("note: Graphviz's dot is not installed; drawing with matplotlib (a plainer "
                  "layout). Install graphviz (apt-get install graphviz) for clustered output.",
                  file=sys.stderr)
        data = render_matplotlib(drawn, format_.value)
    if out is None:
        sys.stdout.write(data.decode())
        return
    with reporting_os_errors(out, "cannot write the graph"):
        atomic_write_bytes(out, data)
    print(f"wrote {out} ({len(drawn.nodes)} nodes)", file=sys.stderr)
