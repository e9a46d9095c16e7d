"""Images of a spec's own data at its input size: what deployment artifacts are checked and
int8 artifacts calibrated on (``specc build --target``, ``specc bench``).

Images are taken evenly across the split, resized so that the shorter side covers the input size
and centre-cropped to it, then normalized with the spec's mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from runtime.data.layouts import open_split
from runtime.data.transforms import eval_transform


def spec_images(spec: Any, count: int, split: str | None = None,
                source: str | None = None) -> list[torch.Tensor]:
    """``count`` images ``(1, 3, H, W)`` of the spec's data (``split`` defaults to its val split)
    at ``input.size``.

    Raises:
        DataError: the data set cannot be opened or read.
    """
    if count <= 0:
        return []
    dataset = open_split(spec, split or spec.data.val_split, source)
    transform = eval_transform(mean=spec.input.mean, std=spec.input.std,
                               ignore_index=spec.train.ignore_index)
    step = max(1, len(dataset) // count)
    images = []
    for index in range(0, min(len(dataset), step * count), step):
        image, _ = transform(dataset[index])
        images.append(fit(image.unsqueeze(0), spec.input.size))
    return images


def fit(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``image`` (N, 3, h, w) resized so that it covers ``size`` and centre-cropped to it."""
    h, w = image.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    if scale != 1:
        resized = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
        image = F.interpolate(image, size=resized, mode="bilinear", align_corners=False,
                              antialias=scale < 1)
    h, w = image.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return image[..., top:top + size[0], left:left + size[1]].contiguous()


def random_images(size: Sequence[int], count: int, seed: int = 0) -> list[torch.Tensor]:
    """Standard-normal images, for checking an artifact when the spec's data is not at hand."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, *size, generator=g) for _ in range(count)]
