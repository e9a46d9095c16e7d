"""The runtime's commands: train, eval, predict, plot, samples and class-weights.

Each one turns its flags into ``--set`` overrides of the spec (so the run's recorded spec says
what was really used), calls the runtime and prints where the results are. Bad input raises a
:class:`~specc.errors.SpeccError`, which the CLI prints as one message with exit code 2. The
runtime modules import torch (and plot matplotlib), so each function imports them itself: that
keeps ``specc --help`` and the compiler's commands fast.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shlex
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from specc.api import load_spec
from specc.cli import render
from specc.errors import SpeccError, SpeccWarning
from specc.fsutil import atomic_write_bytes, atomic_write_text, output_file, output_folder

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a spec value: key.path=value (YAML), e.g. train.lr=0.01.")]
DataOpt = Annotated[str | None, typer.Option(
    "--data", help="Data source: synthetic, voc:PATH, cityscapes:PATH, ade20k:PATH, folder:PATH.")]
ScalesOpt = Annotated[str | None, typer.Option(
    "--scales", help="Comma-separated inference scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75.")]
FlipOpt = Annotated[bool, typer.Option(
    "--flip", help="Also average the left-right mirrored prediction.")]
TileOpt = Annotated[str | None, typer.Option(
    "--tile", help="Sliding-window inference for large images: window size auto (the spec's "
                   "input.size), N or HxW; probabilities of overlapping windows are averaged.")]
OverlapOpt = Annotated[float | None, typer.Option(
    "--overlap", help="With --tile: fraction of the window that neighbours share (default 0.33).")]
AlignOpt = Annotated[bool, typer.Option(
    "--align/--no-align", help="Pad each image (bottom, right) to the next size the network was "
    "trained at (≡ the training crop modulo the output stride) and crop the prediction back; "
    "--no-align runs images at their own size.")]
DeviceOpt = Annotated[str | None, typer.Option(
    help="cpu or cuda; default cuda when available. An unavailable device is an error.")]


def _overrides(set_: list[str] | None, **flags: Any) -> list[str]:
    """``--set`` values followed by the dedicated flags that were given (flags win)."""
    out = list(set_ or [])
    for key, value in flags.items():
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")  # JSON is YAML: strings stay strings
    return out


@contextmanager
def _worker_errors() -> Iterator[None]:
    """Show a data error raised in a DataLoader worker with its own message.

    PyTorch re-raises a worker's exception in the main process with the worker's traceback
    folded into the message; the user needs only the last part (which names the file).
    """
    try:
        yield
    except SpeccError as err:
        text = str(err)
        if "Original Traceback" not in text:
            raise
        _, _, message = text.rpartition(f"{type(err).__module__}.{type(err).__qualname__}: ")
        try:
            clean = type(err)(message.strip())
        except TypeError:
            clean = SpeccError(message.strip())
        raise clean from None


def train(
    spec: Annotated[Path, typer.Argument(help="The spec file (YAML).")],
    data: DataOpt = None,
    iters: Annotated[int | None, typer.Option(help="Training iterations (train.iters).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per step over all processes (train.batch_size).")] = None,
    crop: Annotated[int | None, typer.Option(
        help="Square training crop N×N (data.crop; input.size is left as it is).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run folder; default runs/<spec name>.")] = None,
    save_every: Annotated[int | None, typer.Option(
        help="Iterations between checkpoints (train.save_every).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from RUN_DIR/checkpoint (same architecture only).")] = False,
    init: Annotated[Path | None, typer.Option(
        help="Start from these weights (run folder, .safetensors, model.pt, or a torchvision "
             "DeepLabV3 / ResNet state dict), e.g. stage 1 before fine-tuning at output stride "
             "8. Weights for another num_classes load all but the classifier layers, which "
             "start fresh.")] = None,
    device: DeviceOpt = None,
    set_: SetOpt = None,
    tensorboard: Annotated[bool, typer.Option(
        "--tensorboard", help="Also log loss, lr, mIoU, per-class IoU, prediction overlays and "
                              "the model graph to RUN_DIR/tensorboard (needs tensorboard).")] = False,
) -> None:
    """Train a spec's model; checkpoints, metrics.jsonl and model.pt go to the run folder.

    Under `torchrun --nproc_per_node=N -m specc train ...` the global batch is split over N processes (DistributedDataParallel).
    """
    from runtime.devices import resolve_device  # torch: not at start-up
    from runtime.train import train as run_training

    resolve_device(device)  # a device that is not valid or not available: before any work
    if tensorboard:
        from runtime.tensorboard import require_tensorboard

        require_tensorboard()
    doc = load_spec(spec, _overrides(
        set_, **{"data.source": data, "train.iters": iters, "train.batch_size": batch_size,
                 "data.crop": None if crop is None else [crop, crop], "train.save_every": save_every}))
    run_dir = output_folder(out or Path("runs") / doc.spec.name)
    console = render.err
    options = [*_given(("--data", data), ("--iters", iters), ("--batch-size", batch_size),
                       ("--crop", crop), ("--out", run_dir), ("--save-every", save_every),
                       ("--device", device)),
               *(arg for value in set_ or [] for arg in ("--set", value))]
    if tensorboard:
        options.append("--tensorboard")
    try:
        with _worker_errors():
            result = run_training(doc, run_dir, resume=resume, init=init, device=device,
                                  reporter=render.RichReporter(console), tensorboard=tensorboard)
    except KeyboardInterrupt:
        if _is_rank_0():
            console.print(_interrupted(spec, run_dir, options, resume, init,
                                       doc.spec.train.save_every), markup=False)
        raise typer.Exit(130) from None
    if result.model_path is None:  # not rank 0
        return
    lines = [f"trained {doc.spec.name}: {result.iteration} iterations"
             + (f", last loss {result.loss:.4f}" if result.loss is not None else ""),
             f"checkpoint: {run_dir / 'checkpoint'}", f"model:      {result.model_path}",
             f"metrics:    {run_dir / 'metrics.jsonl'}"]
    tr = doc.spec.train
    if tr.accumulate > 1:
        lines.insert(1, f"effective batch {tr.batch_size * tr.accumulate} ({tr.batch_size} × "
                        f"{tr.accumulate} accumulated)")
    if result.scores is not None and result.scores["miou"] is None:
        lines.insert(1, "val mIoU — (no pixel of the val split is labelled)")
    elif result.scores is not None:
        lines.insert(1, f"val mIoU {100 * result.scores['miou']:.2f} %, pixel accuracy "
                        f"{100 * result.scores['pixel_accuracy']:.2f} %")
        note = render.unlabelled_note(result.scores, doc.spec.data.val_split)
        if note:
            lines.insert(2, note)
    console.print("\n".join(lines), markup=False)


def _given(*pairs: tuple[str, Any]) -> list[str]:
    """``--flag value`` for each pair whose value was given (not None)."""
    return [str(arg) for flag, value in pairs if value is not None for arg in (flag, value)]


def _is_rank_0() -> bool:
    """Whether this process speaks for the run: the only one, or rank 0 under torchrun."""
    return os.environ.get("RANK", "0") == "0"


def _interrupted(spec: Path, run_dir: Path, options: list[str], resume: bool,
                 init: Path | None, save_every: int) -> str:
    """The line ``specc train`` prints when Ctrl-C stops it: where the last checkpoint is (the
    checkpoint link is replaced only once a save is complete, so a save cut short by the
    interrupt leaves the previous one in place) and the command that goes on from it, the
    options of this run and ``--resume`` (without ``--init``: the checkpoint holds the weights).
    Before the first save it gives the command that starts again."""
    from runtime.checkpoint import CHECKPOINT_NAME, checkpoint_dir

    saved = checkpoint_dir(run_dir)
    if saved is None or not CHECKPOINT_NAME.fullmatch(saved.name):
        again = _command(spec, [*options, *_given(("--init", init)),
                                *(["--resume"] if resume else [])])
        return (f"interrupted before the first checkpoint (one every train.save_every = "
                f"{save_every} iterations): nothing to resume; start again with: {again}")
    iteration = int(saved.name.rpartition("-")[2])
    return (f"interrupted: the last checkpoint is {run_dir / 'checkpoint'} (iteration "
            f"{iteration}); resume with: {_command(spec, [*options, '--resume'])}")


def _command(spec: Path, options: list[str]) -> str:
    """``specc train SPEC OPTIONS`` as a shell line; under torchrun, the torchrun line that starts
    the same layout again: its processes per node and, on several nodes, their number and a
    place for the rendezvous options. Those the user must give again: torchrun's environment
    does not hold them (``MASTER_ADDR:MASTER_PORT`` is the process group's store, which under a
    c10d rendezvous is a free port node 0 picked, not ``--rdzv-endpoint``)."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    train = ["specc", "train", str(spec), *options]
    if world == 1:
        return shlex.join(train)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
    nodes = world // per_node
    if nodes == 1:
        return shlex.join(["torchrun", f"--nproc_per_node={per_node}", "-m", *train])
    line = shlex.join(["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={per_node}",
                       "RDZV_ARGS", "-m", *train])
    return (f"{line} (on each of the {nodes} nodes, RDZV_ARGS being the rendezvous options the "
            "run was started with: --rdzv-backend, --rdzv-endpoint and --rdzv-id, or "
            "--master-addr, --master-port and the node's own --node-rank)")


def eval_(
    spec: Annotated[Path, typer.Argument(help="The spec file (YAML).")],
    checkpoint: Annotated[Path | None, typer.Option(
        help="Run folder, .safetensors weights, TorchScript model.pt, or an artifact of specc "
             "build --target (.pt2, .onnx, .xml; on the device they were built for); default "
             "runs/<spec name>.")] = None,
    data: DataOpt = None,
    scales: ScalesOpt = None,
    flip: FlipOpt = False,
    set_: SetOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: DeviceOpt = None,
    tile: TileOpt = None,
    overlap: OverlapOpt = None,
    batch_size: Annotated[int, typer.Option(
        min=1, help="Images of one size per forward pass; images of other sizes go one at a "
                    "time.")] = 8,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Also write the confusion matrix (JSON, heat map), the per-class IoU chart "
                      "and the worst images' panels to this folder.")] = None,
    worst: Annotated[int, typer.Option(
        min=0, help="With --out: how many of the worst images to draw.")] = 8,
    align: AlignOpt = True,
) -> None:
    """Evaluate weights on the validation split: mIoU, per-class IoU, pixel accuracy.

    `--set backbone.output_stride=8` evaluates weights trained at 16 (DeepLabv3 §4.3).
    """
    from runtime.devices import resolve_device  # torch: not at start-up
    from runtime.evaluate import evaluate_checkpoint, parse_scales
    from runtime.tiling import tiling_from_options

    resolve_device(device)
    scale_list = parse_scales(scales)
    doc = load_spec(spec, _overrides(set_, **{"data.source": data}))
    tiling = tiling_from_options(tile, overlap, doc.spec.input.size)
    if out is not None:
        output_folder(out)
    with _worker_errors():
        report = evaluate_checkpoint(doc, checkpoint or Path("runs") / doc.spec.name,
                                     scales=scale_list, flip=flip, device=device, tiling=tiling,
                                     batch_size=batch_size, out=out, worst=worst,
                                     align=align, reporter=render.RichReporter(render.err))
    if json_:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    render.print_eval(report, doc.spec.name, scale_list, flip)
    if out is not None:
        typer.echo(f"confusion matrix, per-class IoU and worst images in {out}/")


def predict(
    model: Annotated[Path, typer.Argument(
        help="A spec file, a TorchScript model.pt (or the run or build folder holding it), or an "
             "artifact of specc build --target "
             "(.pt2, .onnx, .xml in its build folder).")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    checkpoint: Annotated[Path | None, typer.Option(
        help="With a spec: run folder, .safetensors or model.pt; default runs/<spec name>.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("predictions"),
    scales: ScalesOpt = None,
    flip: FlipOpt = False,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    tile: TileOpt = None,
    overlap: OverlapOpt = None,
    align: AlignOpt = True,
) -> None:
    """Segment images: writes <name>_mask.png (class ids: VOC colours, 16-bit grey past 256
    classes) and <name>_overlay.png. An image that cannot be decoded is skipped, the others are
    still written, and every skipped one is listed at the end (exit 2)."""
    from runtime.devices import resolve_device  # torch: not at start-up
    from runtime.evaluate import artifact_device, is_artifact, parse_scales
    from runtime.predict import load_predictor, predict_files
    from runtime.tiling import tiling_from_options

    target = resolve_device(artifact_device(model, device) if is_artifact(model) else device)
    output_folder(out)
    scale_list = parse_scales(scales)
    tiling_from_options(tile, overlap, (1, 1))  # a bad --tile/--overlap: before loading weights
    predictor = load_predictor(model, checkpoint, set_ or [])
    if not align:
        predictor = dataclasses.replace(predictor, align=None)
    tiling = tiling_from_options(tile, overlap, predictor.input_size)
    done = predict_files(predictor, images, out, scales=scale_list, flip=flip, device=target,
                         tiling=tiling)
    for image, mask, overlay in done.written:
        typer.echo(f"{image}: {mask}  {overlay}")
    failed = f", {len(done.failed)} failed" if done.failed else ""
    typer.echo(f"{len(done.written)} image(s) segmented with {predictor.source}{failed}; "
               f"results in {out}/")
    if done.failed:
        raise SpeccError(f"{len(done.failed)} image(s) could not be decoded and have no mask or "
                         "overlay; fix or replace them and predict them again:\n"
                         + "\n".join(f"  {problem}" for problem in done.failed))


def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or its metrics.jsonl).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="PNG to write; default RUN_DIR/curves.png.")] = None,
) -> None:
    """Plot loss, learning rate and mIoU curves from RUN_DIR/metrics.jsonl to a PNG."""
    from runtime.plot import plot_run  # matplotlib: not at start-up

    if out is not None:
        output_file(out)
    typer.echo(f"curves: {plot_run(run_dir, out)}")


def samples(
    spec: Annotated[Path, typer.Argument(help="The spec file (YAML).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("samples"),
    split: Annotated[str | None, typer.Option(help="Split; default the spec's data.val_split.")] = None,
    count: Annotated[int, typer.Option(help="How many images, from the first.")] = 4,
    data: Annotated[str | None, typer.Option(
        help="Data source; default the spec's data.source.")] = None,
    set_: SetOpt = None,
) -> None:
    """Write the first images of a data split as PNGs (<i>_image.png, <i>_label.png in VOC
    colours): something to look at, and inputs for `specc predict`."""
    from runtime.data import colorize, open_split  # torch: not at start-up

    if count <= 0:
        raise SpeccError(f"--count: expected a positive number, found {count}")
    output_folder(out)
    doc = load_spec(spec, set_ or [])
    d = doc.spec.data
    split = split or d.val_split
    dataset = open_split(doc.spec, split, data)
    for i in range(min(count, len(dataset))):
        image, label = dataset[i]
        for suffix, picture in (("image", image), ("label", colorize(label))):
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            atomic_write_bytes(out / f"{i:04d}_{suffix}.png", buffer.getvalue())
    typer.echo(f"{min(count, len(dataset))} {split} image(s) of {data or d.source} in {out}/")


def check_data(
    spec: Annotated[Path, typer.Argument(help="The spec file (YAML).")],
    data: DataOpt = None,
    split: Annotated[list[str] | None, typer.Option(
        "--split", help="A split to check (repeatable); default the spec's data.train_split "
                        "and data.val_split.")] = None,
    set_: SetOpt = None,
) -> None:
    """Read every image and mask of the training and validation splits once, and list every
    file that cannot be read (not only the first) and the classes no mask labels. Exit 2 when
    a file is bad. Training reads a file when its turn comes, hours in on a large data set."""
    from runtime.data import open_split  # torch: not at start-up
    from runtime.data.check import check_split

    doc = load_spec(spec, _overrides(set_, **{"data.source": data}))
    d = doc.spec.data
    splits = split or list(dict.fromkeys([d.train_split, d.val_split]))
    bad = 0
    for name in splits:
        dataset = open_split(doc.spec, name)
        with _worker_errors():
            found = check_split(dataset, doc.spec.train.workers)
        bad += len(found.problems)
        verdict = (f"{len(found.problems)} unreadable" if found.problems else "all readable")
        lines = [f"{dataset.name} ({name}): {found.samples} samples, {verdict}"]
        lines += [f"  {problem}" for problem in found.problems]
        empty = found.unlabelled_classes
        if empty:
            listed = render.unlabelled_classes(empty, dataset.class_names, len(found.pixels),
                                               "here")
            lines.append(f"  note: {listed} ({render.IGNORE_HINT})")
        typer.echo("\n".join(lines))
    if bad:
        raise SpeccError(f"{bad} sample(s) cannot be read; fix or remove the files named above")


def class_weights(
    spec: Annotated[Path, typer.Argument(help="The spec file (YAML).")],
    method: Annotated[str, typer.Option(
        help="median_frequency (median of the class frequencies ÷ each, Eigen & Fergus) or "
             "inverse (total ÷ (classes × class pixels)).")] = "median_frequency",
    data: DataOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Also write the YAML snippet to this file.")] = None,
    set_: SetOpt = None,
) -> None:
    """Class weights from the training split's label frequencies, as a YAML snippet for the
    spec's train.loss.class_weights (a class with no pixel gets 0)."""
    from runtime.data import open_split  # torch: not at start-up
    from runtime.losses import METHODS, pixel_counts, weights_from_counts

    if method not in METHODS:
        raise SpeccError(f"--method: expected one of {', '.join(METHODS)}, found {method!r}")
    if out is not None:
        output_file(out)
    doc = load_spec(spec, _overrides(set_, **{"data.source": data}))
    d = doc.spec.data
    dataset = open_split(doc.spec, d.train_split)
    with _worker_errors():
        pixels, image_pixels = pixel_counts(dataset, doc.spec.train.workers)
    weights = weights_from_counts(pixels, image_pixels, method)  # type: ignore[arg-type]
    empty = [c for c, n in enumerate(pixels) if n == 0]
    if empty:
        listed = render.unlabelled_classes(empty, dataset.class_names, len(pixels),
                                           f"in the {d.train_split} split")
        warnings.warn(SpeccWarning(f"{listed}; they get weight 0 and are never trained "
                                   f"({render.IGNORE_HINT})"), stacklevel=1)
    text = (f"# {method} class weights from {len(dataset)} {d.train_split} image(s) of "
            f"{d.source}; pixels per class: {', '.join(str(int(n)) for n in pixels)}\n"
            f"train:\n  loss:\n    class_weights: [{', '.join(repr(w) for w in weights)}]\n")
    if out is not None:
        atomic_write_text(out, text)
    typer.echo(text, nl=False)
