"""Images of a spec's own data at its input size: what deployment artifacts are checked and
int8 artifacts calibrated on (``specc build --target``, ``specc bench``).

Images are taken evenly across the split, resized so that the shorter side covers the input size
and centre-cropped to it, then normalized with the spec's mean and std.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from runtime.data.layouts import open_split
from runtime.data.transforms import eval_transform
from runtime.metrics import confusion_matrix, scores
from specc.errors import DataError, SpeccError, SpeccWarning


def spec_images(spec: Any, count: int, split: str | None = None,
                source: str | None = None) -> list[torch.Tensor]:
    """``count`` images ``(1, 3, H, W)`` of the spec's data (``split`` defaults to its val split)
    at ``input.size``.

    Raises:
        DataError: the data set cannot be opened or read.
    """
    return [image for image, _ in labelled_images(spec, count, split, source)]


def labelled_images(spec: Any, count: int, split: str | None = None,
                    source: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`spec_images` with their labels ``(1, H, W)``, cropped alike."""
    if count <= 0:
        return []
    dataset = open_split(spec, split or spec.data.val_split, source)
    transform = eval_transform(mean=spec.input.mean, std=spec.input.std,
                               ignore_index=spec.train.ignore_index)
    step = max(1, len(dataset) // count)
    pairs = []
    for index in range(0, min(len(dataset), step * count), step):
        image, label = transform(dataset[index])
        pairs.append((fit(image.unsqueeze(0), spec.input.size),
                      fit_label(label.unsqueeze(0), spec.input.size)))
    return pairs


def mean_iou(spec: Any, labels: list[torch.Tensor], logits: list[torch.Tensor]) -> float:
    """The mIoU of ``logits`` against ``labels`` (what ``specc eval`` reports)."""
    cm = sum(confusion_matrix(out.argmax(1), label, spec.num_classes,
                              spec.train.ignore_index) for out, label in zip(logits, labels,
                                                                             strict=True))
    return scores(cm).miou


def fit_label(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A label (N, h, w) resized (nearest) and cropped as :func:`fit` does its image."""
    return fit(label.unsqueeze(1).float(), size, mode="nearest").squeeze(1).long()


def fit(image: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """``image`` (N, C, h, w) resized so that it covers ``size`` and centre-cropped to it."""
    h, w = image.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    if scale != 1:
        resized = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
        image = F.interpolate(image, size=resized, mode="nearest") if mode == "nearest" else \
            F.interpolate(image, size=resized, mode="bilinear", align_corners=False,
                          antialias=scale < 1)
    h, w = image.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return image[..., top:top + size[0], left:left + size[1]].contiguous()


def random_images(size: Sequence[int], count: int, seed: int = 0) -> list[torch.Tensor]:
    """Standard-normal images, for checking an artifact when the spec's data is not at hand."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, *size, generator=g) for _ in range(count)]


@dataclass(frozen=True)
class CheckImages:
    """What deployment artifacts are checked and calibrated on, and how the checks are scored."""

    checks: tuple[torch.Tensor, ...]
    #: Where the check images came from, for ``artifacts.json``.
    source: str
    calibration: tuple[torch.Tensor, ...]
    #: The mIoU of one logits tensor per check image; None when the images have no labels.
    score: Callable[[list[torch.Tensor]], float] | None


def check_images(spec: Any, count: int, calibration: int, int8: bool) -> CheckImages:
    """``count`` labelled images of the spec's val split (random images when its data is not at
    hand, then unscored) and, for int8, ``calibration`` images of its training split.

    Raises:
        SpeccError: int8 asked for while the spec's data cannot be read.
    """
    try:
        pairs = labelled_images(spec, count)
    except DataError as err:
        if int8:
            raise SpeccError(f"int8 needs calibration images of the spec's data: {err}") from None
        return CheckImages(tuple(random_images(spec.input.size, count)),
                           f"{count} random images (the spec's data: {err})", (), None)
    labels = [label for _, label in pairs]
    calib = spec_images(spec, calibration, split=spec.data.train_split) if int8 else []
    if int8 and len(calib) < calibration:
        warnings.warn(SpeccWarning(
            f"--calibration {calibration}: the {spec.data.train_split} split of "
            f"{spec.data.source} has {len(calib)} images; int8 is calibrated on those "
            f"{len(calib)}"), stacklevel=2)
    return CheckImages(tuple(image for image, _ in pairs),
                       f"{len(pairs)} images of {spec.data.source} ({spec.data.val_split})",
                       tuple(calib), lambda logits: mean_iou(spec, labels, logits))
