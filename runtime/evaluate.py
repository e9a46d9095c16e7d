"""Evaluation: multi-scale, flipped inference and confusion-matrix mIoU over a validation split.

Inference (DeepLabv3 §4.3, "Inference strategy"): the image is run at every scale of ``scales``
(the paper's set is 0.5, 0.75, 1.0, 1.25, 1.5, 1.75), and with ``flip`` also mirrored left-right;
each output's logits are resized bilinearly back to the original resolution, turned into softmax
probabilities and averaged. The prediction is the arg-max of the average. ``scales=(1.0,)``
without flip is plain single-scale inference.

Images are evaluated one at a time at their own size (no padding, no resizing of the labels),
so the score is exactly that of the full-resolution label maps. In a ``torchrun`` job each
process evaluates every ``world_size``-th image and the confusion matrices are summed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runtime import distributed
from runtime.data import build_loader, eval_transform, open_split
from runtime.devices import resolve_device
from runtime.metrics import SegmentationScores, confusion_matrix, scores
from runtime.report import SILENT, Reporter
from specc.api import build
from specc.artifacts import load_weights, read_weights
from specc.errors import SpeccError


def parse_scales(text: str | None) -> tuple[float, ...]:
    """``"0.5,0.75,1"`` → ``(0.5, 0.75, 1.0)``; None or empty → ``(1.0,)``.

    Raises:
        SpeccError: a value that is not a positive number.
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
        out.append(value)
    return tuple(out)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """Mixed precision on CUDA when ``dtype`` is bf16/fp16; a no-op otherwise."""
    if dtype is None or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=dtype)


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
) -> torch.Tensor:
    """Softmax probabilities ``(N, C, H, W)`` at the input resolution, averaged over scales/flips.

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
            with autocast(images.device, amp_dtype):
                logits = _logits(model, inp)
            logits = logits.float()
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
) -> SegmentationScores:
    """Run ``model`` over ``batches`` of ``(images, labels)`` and score the predictions.

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
            for images, labels in batches:
                images, labels = images.to(device), labels.to(device)
                probs = predict_probs(model, images, scales, flip, amp_dtype)
                cm += confusion_matrix(probs.argmax(dim=1), labels, num_classes, ignore_index)
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
        batch_size=1,  # images keep their own size: no padding, no label resizing
        shuffle=False,
        num_workers=min(spec.train.workers, 2),
        seed=spec.train.seed,
        indices=shard,
    )
    return dataset, loader


def evaluate_checkpoint(
    doc: Any,
    checkpoint: Path,
    *,
    source: str | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    reporter: Reporter | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Build the spec's model, load the weights at ``checkpoint`` and evaluate it.

    ``device`` is ``cpu`` or ``cuda`` (default: CUDA when available).

    ``doc`` is a loaded spec (``specc.api.load_spec``), overrides already applied, so weights
    trained at output stride 16 can be evaluated at 8. Returns the JSON report of ``specc eval``.

    Raises:
        WeightsError: the weights are missing, unreadable, or do not fit the model.
        DataError: the validation data cannot be read.
        SpeccError: a device that is not valid or not available.
    """
    spec = doc.spec
    ctx = distributed.Context(device=resolve_device(device))
    model = build(doc).module
    weights = read_weights(checkpoint)
    load_weights(model, weights)
    model.to(ctx.device).eval()
    dataset, loader = val_batches(spec, ctx, source)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.train.precision)
    result = evaluate(
        model, loader, spec.num_classes, device=ctx.device, scales=scales, flip=flip,
        ignore_index=spec.train.ignore_index, amp_dtype=amp if ctx.device.type == "cuda" else None,
        total=len(dataset), reporter=reporter,
    )
    report = result.as_dict(dataset.class_names)
    report.update({
        "checkpoint": str(weights.file),
        "data": source or spec.data.source,
        "split": spec.data.val_split,
        "images": len(dataset),
        "scales": list(scales),
        "flip": flip,
        "output_stride": spec.backbone.output_stride,
        "spec_sha256": doc.sha256,
    })
    return report
