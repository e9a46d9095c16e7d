"""The pixel losses of ``train.loss``, and class weights from a training set's labels.

Every loss is a weighted mean of per-pixel cross-entropies over labelled pixels (``ignore_index``
pixels count for nothing):

* ``cross_entropy`` — all labelled pixels (DeepLabv3 §4.1). With ``class_weights`` a pixel of
  class c counts ``w[c]`` times, in the sum and in the count (``F.cross_entropy``'s weighted
  mean); ``label_smoothing`` mixes ``ε/C`` of every class into each target.
* ``hard_pixel`` — online hard-pixel mining as in the TF DeepLab code (``top_k_percent_pixels``):
  of a batch's labelled pixels, only the ``top_k`` fraction with the highest losses count (at
  least one pixel). For the first ``warmup_iters`` iterations every labelled pixel counts, so
  the mining starts from a model that has learned something.

A batch with no labelled pixel has loss 0 (not 0/0). Under ``train.accumulate`` each
micro-batch's loss is its own mean, divided by the number of micro-batches.

:func:`pixel_counts` and :func:`weights_from_counts` serve ``specc class-weights``: the pixel
frequency of each class in the training labels, turned into inverse-frequency or median-frequency
(Eigen & Fergus, 2015) weights.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from specc.errors import TrainingError

#: Values of ``specc class-weights --method``.
METHODS = ("median_frequency", "inverse")


def class_weight_tensor(loss: Any, num_classes: int, device: torch.device | str
                        ) -> torch.Tensor | None:
    """``train.loss.class_weights`` as a tensor on ``device`` (None when not given).

    Raises:
        TrainingError: not one weight per class, or all of them zero.
    """
    weights = loss.class_weights
    if weights is None:
        return None
    if len(weights) != num_classes:
        raise TrainingError(f"train.loss.class_weights: expected {num_classes} weights (one per "
                            f"class, num_classes), found {len(weights)}")
    if not any(w > 0 for w in weights):
        raise TrainingError("train.loss.class_weights: expected at least one weight above 0, "
                            "found all 0")
    return torch.tensor(weights, dtype=torch.float32, device=device)


def pixel_losses(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, *,
                 weight: torch.Tensor | None = None, label_smoothing: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel (weighted, smoothed) cross-entropy, 0 at ignored pixels, and each pixel's
    weight in the mean (its class weight, 1 without weights; 0 when ignored)."""
    losses = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=ignore_index,
                             reduction="none", label_smoothing=label_smoothing)
    labelled = labels != ignore_index
    if weight is None:
        return losses, labelled.to(losses.dtype)
    return losses, weight[labels.masked_fill(~labelled, 0)] * labelled


def hard_pixel_fraction(loss: Any, iteration: int) -> float:
    """The fraction of labelled pixels that count at ``iteration``: 1 for ``cross_entropy`` and
    during the hard-pixel warm-up, ``top_k`` after it."""
    if loss.kind == "hard_pixel" and iteration >= loss.warmup_iters:
        return float(loss.top_k)
    return 1.0


def mean_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, loss: Any, *,
              iteration: int = 0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The loss ``train.loss`` describes for one batch (see the module's docstring)."""
    losses, pixel_weight = pixel_losses(logits, labels, ignore_index, weight=weight,
                                        label_smoothing=loss.label_smoothing)
    fraction = hard_pixel_fraction(loss, iteration)
    if fraction < 1.0:
        labelled = labels != ignore_index
        kept = max(1, math.ceil(fraction * int(labelled.sum())))
        candidates = losses[labelled]
        if candidates.numel():
            top, where = candidates.topk(min(kept, candidates.numel()))
            return top.sum() / _nonzero(pixel_weight[labelled][where].sum())
    return losses.sum() / _nonzero(pixel_weight.sum())


def _nonzero(total: torch.Tensor) -> torch.Tensor:
    """``total``, or 1 where it is 0 (a batch without labelled pixels gives loss 0)."""
    return torch.where(total > 0, total, torch.ones_like(total))


# -- class weights from label frequencies ---------------------------------------------------------


class _CountView(Dataset[np.ndarray]):
    """Per-image pixel counts of each class (and of the images a class appears in)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> np.ndarray:
        label = self.dataset.load_label(index)
        return np.bincount(label.ravel(), minlength=256)[: self.dataset.num_classes]


def pixel_counts(dataset: Any, num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For each class: labelled pixels of that class, and pixels of the images it appears in.

    Raises:
        DataError: a label file is missing, unreadable or holds invalid values.
    """
    classes = dataset.num_classes
    pixels = np.zeros(classes, dtype=np.int64)
    image_pixels = np.zeros(classes, dtype=np.int64)
    loader = DataLoader(_CountView(dataset), batch_size=None, num_workers=num_workers)
    for row in loader:
        counts = np.asarray(row, dtype=np.int64)
        pixels += counts
        image_pixels += (counts > 0) * counts.sum()
    return pixels, image_pixels


def weights_from_counts(pixels: np.ndarray, image_pixels: np.ndarray,
                        method: Literal["median_frequency", "inverse"]) -> list[float]:
    """Class weights from :func:`pixel_counts`; a class with no pixel gets weight 0.

    * ``median_frequency``: ``freq_c = pixels_c / image_pixels_c`` (its frequency in the images
      it appears in), weight ``median(freq) / freq_c`` (Eigen & Fergus, 2015).
    * ``inverse``: ``total / (classes present × pixels_c)``, so the pixel-weighted mean is 1.

    Raises:
        TrainingError: an unknown method, or no labelled pixel at all.
    """
    present = pixels > 0
    if not present.any():
        raise TrainingError("the training labels hold no labelled pixel: no class weights")
    weights = np.zeros(len(pixels), dtype=np.float64)
    if method == "median_frequency":
        freq = pixels[present] / image_pixels[present]
        weights[present] = np.median(freq) / freq
    elif method == "inverse":
        weights[present] = pixels.sum() / (present.sum() * pixels[present])
    else:
        raise TrainingError(f"--method: expected one of {', '.join(METHODS)}, found {method!r}")
    return [round(float(w), 6) for w in weights]
