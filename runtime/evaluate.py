"""Evaluation: multi-scale, flipped inference and confusion-matrix mIoU over a validation split.

Inference (DeepLabv3 §4.3, "Inference strategy"): the image is run at every scale of ``scales``
(the paper's set is 0.5, 0.75, 1.0, 1.25, 1.5, 1.75), and with ``flip`` also mirrored left-right;
each output's logits are resized bilinearly back to the original resolution, turned into softmax
probabilities and averaged. The prediction is the arg-max of the average. ``scales=(1.0,)``
without flip is plain single-scale inference.

Images are evaluated at their own resolution (no resizing of images or labels), so the score is
exactly that of the full-resolution label maps; each input is padded at the bottom and right to
the next size on the grid the network was trained on (:class:`Alignment`), and the padding's
logits are cut off again. Consecutive images of the same size go through
the network together, up to ``batch_size`` at a time (:func:`same_size_batches`); an image of
another size starts a new batch, so a data set of varying sizes runs one image at a time. In a
``torchrun`` job each process evaluates every ``world_size``-th image and the confusion matrices
are summed. ``specc eval`` runs the network after :func:`specc.passes.optimize_for_inference`
(batch norm folded into the convolutions, dropout and the auxiliary head dropped, channels-last
weights), which computes the same logits faster.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runtime import distributed
from runtime.data import build_loader, eval_transform, open_split
from runtime.devices import resolve_device
from runtime.eval_outputs import DEFAULT_WORST, WorstImages, write_eval_outputs
from runtime.metrics import SegmentationScores, confusion_matrix, scores
from runtime.report import SILENT, Reporter
from runtime.tiling import Tiling, tiled_labels
from specc.api import build
from specc.artifacts import load_weights, read_weights
from specc.errors import DataError, SpeccError, SpeccWarning
from specc.passes import optimize_for_inference

#: Images of one size per forward pass in ``specc eval``: enough to amortize the per-layer
#: overhead of a small network, few enough for the activations of 513×513 inputs on a GPU.
DEFAULT_EVAL_BATCH = 8


#: The largest inference scale: 8× on each side is 64× the pixels (the papers go to 1.75×); a
#: larger one would only exhaust memory.
MAX_SCALE = 8.0


def parse_scales(text: str | None) -> tuple[float, ...]:
    """``"0.5,0.75,1"`` → ``(0.5, 0.75, 1.0)``; None or empty → ``(1.0,)``.

    Raises:
        SpeccError: a value that is not a number in (0, :data:`MAX_SCALE`].
    """
    if not text:
        return (1.0,)
    out = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise SpeccError(f"--scales: {part.strip()!r} is not a number (e.g. 0.5,1.0,1.5)") from None
        if not value > 0:
            raise SpeccError(f"--scales: scales must be positive, found {value}")
        if not value <= MAX_SCALE:
            raise SpeccError(f"--scales: scales are at most {MAX_SCALE:g} (the image that many "
                             f"times larger on each side), found {value:g}")
        out.append(value)
    return tuple(out)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """Mixed precision on CUDA when ``dtype`` is bf16/fp16; a no-op otherwise."""
    if dtype is None or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=dtype)


@dataclass(frozen=True)
class Alignment:
    """The input sizes a network was trained at, side by side: ``≡ remainder (mod stride)``,
    where ``stride`` is its output stride and ``remainder`` the training crop's.

    A network with strided convolutions samples its input on a grid fixed by the input's size
    modulo its stride; trained on 97×97 crops at output stride 16 (97 ≡ 1), it sees a shifted
    grid on a 128×128 image, and the demo's val mIoU falls from 94 % to 86 %. Inference
    therefore pads each image at the bottom and right with zeros (the mean colour, after
    normalization) to the next aligned size, as DeepLab's own evaluation pads to its crop, and
    crops the logits back: the prediction covers the image's own pixels only. A network whose
    image pooling has a fixed kernel (``aspp.image_pooling.kernel: fixed``, the TF code's) was
    built for its input size, so smaller images are padded up to that (``minimum``), as the TF
    evaluation pads every image to its crop.
    """

    stride: int
    remainder: tuple[int, int]
    minimum: tuple[int, int] = (1, 1)

    def padded(self, size: Sequence[int]) -> tuple[int, int]:
        """The smallest aligned size at least ``size`` (height, width) and ``minimum``."""
        h, w = max(size[0], self.minimum[0]), max(size[1], self.minimum[1])
        return (h + (self.remainder[0] - h) % self.stride,
                w + (self.remainder[1] - w) % self.stride)


def alignment(resolved: dict[str, Any],
              bounds: dict[str, list[int | None]] | None = None) -> Alignment | None:
    """The :class:`Alignment` of a resolved spec (``doc.resolved``, or the one embedded in a
    built model): its output stride and training crop (``data.crop``, else ``input.size``), and
    for a fixed image-pooling kernel the input size as the least; None when the spec does not
    say. For a deployment artifact, its ``bounds`` (``ArtifactModule.input_bounds``) raise the
    least to the smallest height and width its graph takes, and an artifact of one height and
    width (``specc build --static``) has every smaller image padded up to exactly that."""
    height, width = ((bounds or {}).get(name) or [None, None] for name in ("height", "width"))
    if height[0] is not None and height[0] == height[1] and width[0] == width[1]:
        return Alignment(1, (0, 0), (int(height[0]), int(width[0])))
    least = (int(height[0] or 1), int(width[0] or 1))
    stride = (resolved.get("backbone") or {}).get("output_stride")
    size = (resolved.get("input") or {}).get("size")
    crop = (resolved.get("data") or {}).get("crop") or size
    if not isinstance(stride, int) or stride < 2 or not crop or len(crop) != 2:
        return None if least == (1, 1) else Alignment(1, (0, 0), least)
    pooling = (resolved.get("aspp") or {}).get("image_pooling") or {}
    fixed = isinstance(pooling, dict) and pooling.get("kernel") == "fixed" and size
    minimum = (int(size[0]), int(size[1])) if fixed else (1, 1)
    return Alignment(stride, (int(crop[0]) % stride, int(crop[1]) % stride),
                     (max(minimum[0], least[0]), max(minimum[1], least[1])))


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's ``"out"`` logits for a batch (works for eager and TorchScript models)."""
    result = model(images)
    return result["out"] if isinstance(result, dict) else result


def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    amp_dtype: torch.dtype | None = None,
    align: Alignment | None = None,
) -> torch.Tensor:
    """Softmax probabilities ``(N, C, H, W)`` at the input resolution, averaged over scales/flips.
    With ``align``, each (scaled, mirrored) input is padded to the next size the network was
    trained at and its logits cropped back (:class:`Alignment`).

    ``model`` must be in eval mode; call under ``torch.inference_mode()``.
    """
    height, width = images.shape[-2:]
    total: torch.Tensor | None = None
    count = 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = images if size == (height, width) else F.interpolate(
            images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        for mirrored in (False, True) if flip else (False,):
            inp = x.flip(-1) if mirrored else x
            padded = size if align is None else align.padded(size)
            if padded != size:
                inp = F.pad(inp, (0, padded[1] - size[1], 0, padded[0] - size[0]))
            with autocast(images.device, amp_dtype):
                logits = _logits(model, inp)
            logits = logits[..., :size[0], :size[1]].float()
            if mirrored:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear",
                                       align_corners=False)
            probs = logits.softmax(dim=1)
            total = probs if total is None else total + probs
            count += 1
    assert total is not None  # scales is never empty
    return total / count


def segment(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    amp_dtype: torch.dtype | None = None,
    tiling: Tiling | None = None,
    align: Alignment | None = None,
) -> torch.Tensor:
    """The predicted class of every pixel, ``(N, H, W)``: the arg-max of :func:`predict_probs`,
    over the whole image or, with ``tiling``, over sliding windows (:mod:`runtime.tiling`).

    ``model`` must be in eval mode; call under ``torch.inference_mode()``.
    """
    if tiling is None:
        return predict_probs(model, images, scales, flip, amp_dtype, align).argmax(dim=1)
    predict = window_predictor(model, scales, flip, amp_dtype, align)
    return torch.stack([tiled_labels(predict, image, tiling).long() for image in images])


def _note_other_normalization(weights: Any, spec: Any) -> None:
    """Warn when the weights were trained with another ``input.mean``/``input.std`` than the
    spec normalizes with (their spec record says): they load, and score lower, silently."""
    trained = ((weights.spec_info or {}).get("resolved") or {}).get("input") or {}
    for key in ("mean", "std"):
        theirs, ours = trained.get(key), list(getattr(spec.input, key))
        if theirs is not None and [float(v) for v in theirs] != [float(v) for v in ours]:
            warnings.warn(SpeccWarning(
                f"{weights.file}: trained with input.{key} {theirs}; the spec normalizes with "
                f"{ours}, so the scores are of images the model never saw so (set input.{key} "
                "to the weights' values)"), stacklevel=2)


def check_scales(model: Any, scales: Sequence[float]) -> None:
    """Refuse scales above 1 for an artifact exported for inputs of at most one size (``specc
    build --static``, a fixed image-pooling kernel): an image, or a ``--tile`` window, is
    padded up to that size, and enlarged past it no artifact call can take it (before, the
    refusal came at the first image and named ``--tile auto``, which does not help).

    Raises:
        SpeccError: naming the largest scale and the size the artifact takes.
    """
    bounds = getattr(model, "input_bounds", None) or {}
    most = [(bounds.get(name) or [None, None])[1] for name in ("height", "width")]
    if None in most or max(scales, default=1.0) <= 1:
        return
    raise SpeccError(f"--scales {max(scales):g}: this artifact takes images of at most "
                     f"{most[0]}×{most[1]} pixels (it was exported for that size, see "
                     "artifacts.json), and a scale above 1 enlarges every image or window past "
                     "it; give scales of at most 1, or evaluate the spec with its weights")


def window_predictor(
    model: nn.Module, scales: Sequence[float], flip: bool, amp_dtype: torch.dtype | None = None,
    align: Alignment | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``predict`` of :func:`runtime.tiling.tiled_bands`: each batch of windows at every
    scale and, with ``flip``, mirrored too."""

    def predict(windows: torch.Tensor) -> torch.Tensor:
        return predict_probs(model, windows, scales, flip, amp_dtype, align)

    return predict


def same_size_batches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Regroup ``(images, labels)`` batches so that consecutive images of the same height and
    width are stacked, at most ``batch_size`` images per batch (more only where one incoming
    batch is larger). Order is kept: an image of another size closes the batch before it."""
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    count = 0
    for batch_images, batch_labels in batches:
        new = batch_images.shape[0]
        if images and (batch_images.shape[-2:] != images[0].shape[-2:]
                       or count + new > batch_size):
            yield torch.cat(images), torch.cat(labels)
            images, labels, count = [], [], 0
        images.append(batch_images)
        labels.append(batch_labels)
        count += new
    if images:
        yield torch.cat(images), torch.cat(labels)


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    device: torch.device,
    ctx: distributed.Context | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    ignore_index: int = 255,
    amp_dtype: torch.dtype | None = None,
    total: int | None = None,
    reporter: Reporter | None = None,
    tiling: Tiling | None = None,
    batch_size: int = 1,
    on_image: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    align: Alignment | None = None,
) -> SegmentationScores:
    """Run ``model`` over ``batches`` of ``(images, labels)`` and score the predictions.

    With ``tiling`` each image is predicted window by window (:mod:`runtime.tiling`); with
    ``align`` each input is padded to a size the network was trained at (:class:`Alignment`). With
    ``batch_size`` above 1, consecutive images of one size are stacked into batches of up to that
    many (:func:`same_size_batches`); the scores do not depend on it. ``on_image``, when given,
    is called with each image's position in ``batches``, its ``(H, W)`` prediction and labels.

    The model is put in eval mode and restored to its previous mode afterwards. With ``ctx`` of
    several processes the confusion matrices of all processes are summed before scoring.
    Progress (images done of ``total``) goes to ``reporter`` on rank 0; None shows nothing.
    """
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    report = reporter if reporter is not None and (ctx is None or ctx.is_main) else SILENT
    done = 0
    try:
        with report.progress("eval", total) as progress, torch.inference_mode():
            for images, labels in same_size_batches(batches, batch_size):
                images, labels = images.to(device), labels.to(device)
                pred = segment(model, images, scales, flip, amp_dtype, tiling, align)
                cm += confusion_matrix(pred, labels, num_classes, ignore_index)
                if on_image is not None:
                    for offset in range(images.shape[0]):
                        on_image(done + offset, pred[offset], labels[offset])
                done += images.shape[0]
                progress.update(done)
    finally:
        model.train(was_training)
    if ctx is not None:
        distributed.all_reduce_sum(cm, ctx)
    return scores(cm)


def val_batches(
    spec: Any,
    ctx: distributed.Context,
    source: str | None = None,
    split: str | None = None,
) -> tuple[Any, Any]:
    """The validation data set of a spec and a loader over this process's share of it.

    Returns ``(dataset, loader)``; ``source`` and ``split`` override ``spec.data``.

    Raises:
        DataError: the data set cannot be opened (missing folder, wrong class count, ...).
    """
    data = spec.data
    dataset = open_split(spec, split or data.val_split, source)
    shard = list(range(ctx.rank, len(dataset), ctx.world_size))  # every image exactly once
    loader = build_loader(
        dataset,
        eval_transform(mean=spec.input.mean, std=spec.input.std, ignore_index=spec.train.ignore_index),
        batch_size=1,  # images keep their own size: no label resizing
        shuffle=False,
        num_workers=min(spec.train.workers, 2),
        seed=spec.train.seed,
        indices=shard,
    )
    return dataset, loader


def is_artifact(path: Path) -> bool:
    """Whether ``path`` names a deployment artifact of ``specc build --target``."""
    from specc.targets import DEPLOYED_SUFFIXES

    return Path(path).suffix in DEPLOYED_SUFFIXES


def artifact_device(path: Path, device: str | None) -> str:
    """Artifacts run where they were built for: the CPU, or the GPU for an ``aoti`` package
    built with ``--device cuda``; asking for another device is an error."""
    from specc.targets import check_cuda_artifact, listed_device

    built_for = listed_device(path)
    if device in (None, built_for):
        if built_for == "cuda":
            check_cuda_artifact(path)  # before a --device the user did not give is refused
        return built_for
    if built_for == "cuda":
        raise SpeccError(f"{path}: an aoti package compiled for CUDA runs on the GPU; for "
                         f"--device {device} build one for the CPU (specc build --target aoti)")
    raise SpeccError(f"{path}: this artifact runs on the CPU; --device {device} applies to a "
                     "spec's weights, a model.pt, or an aoti package built with --device cuda")


def open_artifact(path: Path, doc: Any) -> Any:
    """The artifact at ``path`` (:func:`specc.targets.load_artifact`), refused when it was built
    from another network than ``doc``'s (data and training settings may differ)."""
    from specc.targets import load_artifact

    artifact = load_artifact(path)
    built_from = artifact.info.get("spec", {}).get("architecture_sha256")
    if built_from != doc.architecture_sha256:
        raise SpeccError(f"{path}: built from another network than {doc.path} (architecture "
                         f"sha256 {str(built_from)[:12]} vs {doc.architecture_sha256[:12]})")
    return artifact


def evaluate_checkpoint(
    doc: Any,
    checkpoint: Path,
    *,
    source: str | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    reporter: Reporter | None = None,
    device: str | None = None,
    tiling: Tiling | None = None,
    batch_size: int = DEFAULT_EVAL_BATCH,
    out: Path | None = None,
    worst: int = DEFAULT_WORST,
    align: bool = True,
) -> dict[str, Any]:
    """Build the spec's model, load the weights at ``checkpoint`` and evaluate it.

    ``device`` is ``cpu`` or ``cuda`` (default: CUDA when available). With ``tiling`` each image
    is predicted by sliding windows (:mod:`runtime.tiling`). Images of one size are evaluated
    ``batch_size`` at a time, on the network after the inference passes. With ``out``, the
    confusion matrix, per-class IoU and the ``worst`` images are written there
    (:mod:`runtime.eval_outputs`) and the report lists the files under ``outputs``. With
    ``align`` (the default) each image is padded to a size the network was trained at
    (:class:`Alignment`).

    ``doc`` is a loaded spec (``specc.api.load_spec``), overrides already applied, so weights
    trained at output stride 16 can be evaluated at 8. Returns the JSON report of ``specc eval``.

    Raises:
        WeightsError: the weights are missing, unreadable, or do not fit the model.
        DataError: the validation data cannot be read.
        SpeccError: a device that is not valid or not available.
    """
    spec = doc.spec
    if is_artifact(checkpoint):
        ctx = distributed.Context(device=resolve_device(artifact_device(checkpoint, device)))
        model, source_file = open_artifact(checkpoint, doc), checkpoint
    else:
        ctx = distributed.Context(device=resolve_device(device))
        model = build(doc).module
        weights = read_weights(checkpoint)
        load_weights(model, weights)
        _note_other_normalization(weights, spec)
        model = optimize_for_inference(model).to(ctx.device)
        source_file = weights.file
    check_scales(model, scales)
    dataset, loader = val_batches(spec, ctx, source)
    aligned = alignment(doc.resolved, getattr(model, "input_bounds", None)) if align else None
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.train.precision)
    worst_images = WorstImages(worst if out is not None else 0, spec.num_classes,
                               spec.train.ignore_index)
    result = evaluate(
        model, loader, spec.num_classes, device=ctx.device, scales=scales, flip=flip,
        ignore_index=spec.train.ignore_index, amp_dtype=amp if ctx.device.type == "cuda" else None,
        total=len(dataset), reporter=reporter, tiling=tiling, batch_size=batch_size,
        on_image=worst_images.add if out is not None else None,
        align=aligned,
    )
    if result.pixels == 0:
        raise DataError(f"{source or spec.data.source} ({spec.data.val_split}): no pixel of its "
                        f"{len(dataset)} images is labelled (every mask pixel is the ignore "
                        f"label {spec.train.ignore_index}); there is nothing to score")
    report = result.as_dict(dataset.class_names)
    report.update({
        "checkpoint": str(source_file),
        "data": source or spec.data.source,
        "split": spec.data.val_split,
        "images": len(dataset),
        "scales": list(scales),
        "flip": flip,
        "batch_size": batch_size,
        "padded_to": None if aligned is None else {
            "stride": aligned.stride, "remainder": list(aligned.remainder),
            "minimum": list(aligned.minimum)},
        "tile": None if tiling is None else {"size": list(tiling.tile),
                                             "stride": list(tiling.stride)},
        "output_stride": spec.backbone.output_stride,
        "spec_sha256": doc.sha256,
    })
    if out is not None:
        written = write_eval_outputs(out, report, result, dataset, worst_images,
                                     spec.train.ignore_index)
        report["outputs"] = [str(path) for path in written]
    return report
