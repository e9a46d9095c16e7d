"""Segmentation metrics from a confusion matrix: per-class IoU, mean IoU and pixel accuracy.

The confusion matrix ``cm[t, p]`` counts pixels whose ground truth is class ``t`` and whose
prediction is class ``p``; pixels labelled ``ignore_index`` (255, VOC's void border) are skipped.
From it, for each class ``c``::

    IoU_c = TP / (TP + FP + FN) = cm[c, c] / (row_c + col_c - cm[c, c])

A class that appears neither in the ground truth nor in the predictions (``row_c + col_c == 0``)
has no defined IoU: it is reported as ``None`` and left out of the mean, as the official PASCAL
VOC and Cityscapes evaluation scripts do (their union is zero, so they drop out). Counting them
as 0 would punish a model for a class the evaluation set does not contain; counting them as 1
would reward it. Pixel accuracy is ``trace(cm) / cm.sum()`` over the non-ignored pixels.

Matrices from several processes or batches are added up before the IoU is taken (``all_reduce``
in distributed evaluation), never averaged per image, which is what "mIoU over the data set"
means in the papers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Count ``(target, prediction)`` pairs: an int64 ``(num_classes, num_classes)`` matrix.

    ``pred`` and ``target`` are integer tensors of the same shape (any shape). Target pixels equal
    to ``ignore_index`` are skipped; target values outside ``0 .. num_classes - 1`` are an error.

    Raises:
        ValueError: the shapes differ, or a target or prediction value is out of range.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target values must be 0..{num_classes - 1} or {ignore_index}")
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted values must be 0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationScores:
    """What ``specc eval`` reports; IoUs and accuracies are fractions in [0, 1]."""

    miou: float
    per_class_iou: list[float | None]  # None: class absent from ground truth and prediction
    pixel_accuracy: float
    mean_accuracy: float  # mean over classes present in the ground truth of TP / (TP + FN)
    pixels: int  # non-ignored pixels counted
    confusion: tuple[tuple[int, ...], ...] = ()  # cm[truth][prediction], the matrix scored

    @property
    def unlabelled_classes(self) -> list[int]:
        """The classes no pixel of the ground truth holds: the mIoU averages the others (a class
        only predicted scores 0). Masks saved as 0/255 for a two-class problem label class 1
        nowhere, since 255 is the ignore label: background alone then scores 100 %."""
        return [c for c, row in enumerate(self.confusion) if not any(row)]

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, object]:
        """A JSON-ready dict (a score of no labelled pixel, NaN here, is null there: JSON has
        no NaN); ``classes`` lists the class names when given."""
        out: dict[str, object] = {
            "miou": _finite(self.miou),
            "per_class_iou": list(self.per_class_iou),
            "pixel_accuracy": _finite(self.pixel_accuracy),
            "mean_accuracy": _finite(self.mean_accuracy),
            "pixels": self.pixels,
            "unlabelled_classes": self.unlabelled_classes,
        }
        if class_names is not None:
            out["classes"] = list(class_names)
        return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def scores(cm: torch.Tensor) -> SegmentationScores:
    """Per-class IoU, mIoU and pixel accuracy of a confusion matrix (see the module docstring).

    An empty matrix (no labelled pixel at all) gives mIoU and accuracies of NaN.
    """
    cm = cm.double().cpu()
    tp = cm.diagonal()
    gt = cm.sum(dim=1)  # TP + FN
    predicted = cm.sum(dim=0)  # TP + FP
    union = gt + predicted - tp
    per_class: list[float | None] = [
        (float(t / u) if u > 0 else None) for t, u in zip(tp.tolist(), union.tolist(), strict=True)
    ]
    present = [v for v in per_class if v is not None]
    total = float(cm.sum())
    accuracies = [float(t / g) for t, g in zip(tp.tolist(), gt.tolist(), strict=True) if g > 0]
    return SegmentationScores(
        miou=sum(present) / len(present) if present else math.nan,
        per_class_iou=per_class,
        pixel_accuracy=float(tp.sum()) / total if total else math.nan,
        mean_accuracy=sum(accuracies) / len(accuracies) if accuracies else math.nan,
        pixels=int(total),
        confusion=tuple(tuple(int(v) for v in row) for row in cm.long().tolist()),
    )
