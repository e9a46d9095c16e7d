"""Joint image/label augmentation of the DeepLab papers, on torchvision.transforms.v2.

Training (DeepLabv3 §4.1): random scale from a discrete set (0.5 to 2.0 in steps of 0.25), pad to
the crop size with the mean colour (image) and the ignore label (label), random crop, random
left-right flip, then float conversion and mean/std normalization. Optional photometric steps
(``data.color_jitter``, ``data.blur``; off by default, as in the papers) come first, on the image
alone and before padding, so the padding keeps the mean colour. Evaluation: normalization only,
optionally padding to a fixed size.

The image is wrapped as ``tv_tensors.Image`` and the label as ``tv_tensors.Mask``, so every v2
transform moves both with the same parameters, and the label is always resized with nearest
neighbour (v2 coerces any interpolation to nearest for masks), so no new label values appear.

Both transforms take a sample ``(PIL image, uint8 label array)`` and return ``(image, label)``:
a float32 tensor ``(3, H, W)`` and an int64 tensor ``(H, W)``. The training one
(:class:`TrainAugment`) calls v2's functional kernels itself with parameters it draws, from
torch's global generator or from one it is given; it equals the v2 transform pipeline bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .base import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's pretrained backbones expect
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair; raises ValueError on anything else."""
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"expected a size or a (height, width) pair, got {size!r}")
    return int(size[0]), int(size[1])


class RandomDiscreteScale(v2.Transform):
    """Rescale image and label together by a factor drawn uniformly from a discrete set.

    The set is ``min_scale, min_scale + step, ..., max_scale`` (DeepLabv3 §4.1: 0.5 to 2.0 in steps
    of 0.25). The image is resized bilinearly with antialiasing, the label with nearest neighbour.
    """

    def __init__(self, min_scale: float, max_scale: float, step: float) -> None:
        super().__init__()
        if not 0 < min_scale <= max_scale or step <= 0:
            raise ValueError(f"bad scale range {min_scale}..{max_scale} step {step}")
        count = round((max_scale - min_scale) / step) + 1
        self.scales = [min_scale + i * step for i in range(count)]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = self.scales[int(torch.randint(len(self.scales), ()).item())]
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize,
            inpt,
            size=params["size"],
            interpolation=v2.InterpolationMode.BILINEAR,
            antialias=True,
        )


class PadToSize(v2.Transform):
    """Pad bottom and right up to at least ``size``: image with ``fill``, label with the ignore id.

    Padding only at the bottom and right, as the DeepLab TF input pipeline does, keeps the original
    pixels at the top-left, so evaluation predictions are cropped back by slicing.
    """

    def __init__(self, size: int | Sequence[int], fill: Sequence[int], ignore_index: int) -> None:
        super().__init__()
        self.size = _pair(size)
        self.fill = {tv_tensors.Image: list(fill), tv_tensors.Mask: ignore_index}

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        pad_bottom = max(0, self.size[0] - height)
        pad_right = max(0, self.size[1] - width)
        return {"padding": [0, 0, pad_right, pad_bottom]}  # left, top, right, bottom

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.fill.get(type(inpt), 0)
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=fill)


class SegmentationTransform:
    """Applies a v2 pipeline to a ``(PIL image, uint8 label)`` sample; returns plain tensors.

    Output: image float32 ``(3, H, W)`` normalized with mean/std, label int64 ``(H, W)``.
    """

    def __init__(self, pipeline: v2.Compose, mean: Sequence[float], std: Sequence[float]) -> None:
        self.pipeline = pipeline
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(
        self, sample: tuple[Image.Image | torch.Tensor, np.ndarray | torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = sample
        image = tv_tensors.Image(
            F.pil_to_tensor(image) if isinstance(image, Image.Image) else image
        )
        if not isinstance(label, torch.Tensor):  # copy only if read-only or not contiguous
            label = torch.from_numpy(np.require(label, np.uint8, ["C", "W"]))
        label = tv_tensors.Mask(label)
        image, label = self.pipeline(image, label)
        return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r})"


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    """uint8 image -> float in [0, 1] -> normalized; label -> int64 (what the loss indexes with)."""
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def mean_fill(mean: Sequence[float]) -> list[int]:
    """The mean colour as 0..255 integers: the padding colour, which normalizes to zero."""
    return [round(m * 255) for m in mean]


def photometric(color_jitter: Mapping[str, float] | None = None,
                blur: Mapping[str, Any] | None = None) -> list[v2.Transform]:
    """Colour jitter and Gaussian blur (``data.color_jitter`` / ``data.blur`` values), each applied
    with its probability; they change the image only (v2 passes masks through). Their random
    draws come from torch's global generator, which the training stream seeds per sample, so
    they are as reproducible as the crops and flips."""
    steps: list[v2.Transform] = []
    if color_jitter is not None:
        jitter = v2.ColorJitter(brightness=color_jitter["brightness"],
                                contrast=color_jitter["contrast"],
                                saturation=color_jitter["saturation"], hue=color_jitter["hue"])
        steps.append(v2.RandomApply([jitter], p=color_jitter["probability"]))
    if blur is not None:
        gaussian = v2.GaussianBlur(blur["kernel"], sigma=tuple(blur["sigma"]))
        steps.append(v2.RandomApply([gaussian], p=blur["probability"]))
    return steps


class TrainAugment:
    """The training augmentation (:func:`train_transform`) with its random draws from a given
    generator: optional photometric steps, random scale, pad, random crop, flip, normalize.

    ``augment(sample)`` draws from torch's global generator, as the v2 pipeline
    ``Compose([*photometric, RandomDiscreteScale, PadToSize, RandomCrop, RandomHorizontalFlip,
    ToDtype, Normalize])`` does, and gives bit for bit what that pipeline gives.
    ``augment(sample, generator)`` draws the same numbers from ``generator`` instead and leaves
    the global generator alone, so several threads can augment at once
    (:attr:`thread_safe`). The geometric steps call the v2 functional kernels directly with the
    drawn parameters: the same kernels as the pipeline at 0.57 of its cost per 128-px sample,
    as the pipeline's dispatch (flattening, type checks, size queries per step) is much of its
    time on small images. Photometric steps are v2 transforms that draw from the global generator; with a
    ``generator`` they run on a forked global generator seeded from it (and the augmentation is
    not thread safe).
    """

    def __init__(self, crop: tuple[int, int], scale: RandomDiscreteScale, flip: bool,
                 mean: Sequence[float], std: Sequence[float], ignore_index: int,
                 photometric_steps: Sequence[v2.Transform] = ()) -> None:
        self.crop = crop
        self.scales = scale.scales
        self.flip = flip
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.fill = mean_fill(mean)
        self.ignore_index = ignore_index
        self.photometric = v2.Compose(list(photometric_steps)) if photometric_steps else None

    @property
    def thread_safe(self) -> bool:
        """Whether ``augment(sample, generator)`` leaves every global random state alone."""
        return self.photometric is None

    def __call__(
        self, sample: tuple[Image.Image | torch.Tensor, np.ndarray | torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = sample
        image = F.pil_to_tensor(image) if isinstance(image, Image.Image) else image
        if not isinstance(label, torch.Tensor):  # copy only if read-only or not contiguous
            label = torch.from_numpy(np.require(label, np.uint8, ["C", "W"]))
        if self.photometric is not None:
            image = self._photometric(image, generator)
        g = torch.default_generator if generator is None else generator
        mask = label[None]  # (1, H, W): the kernels' layout for masks

        # random scale: bilinear with antialiasing for the image, nearest for the label
        height, width = image.shape[-2:]
        scale = self.scales[int(torch.randint(len(self.scales), (), generator=g))]
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
        image = F.resize_image(image, size, interpolation=v2.InterpolationMode.BILINEAR,
                               antialias=True)
        mask = F.resize_mask(mask, size, interpolation=v2.InterpolationMode.NEAREST)

        # pad bottom/right to the crop: mean colour and ignore label
        height, width = size
        padding = [0, 0, max(0, self.crop[1] - width), max(0, self.crop[0] - height)]  # l t r b
        if any(padding):
            image = F.pad_image(image, padding, fill=self.fill)
            mask = F.pad_mask(mask, padding, fill=self.ignore_index)
            height, width = height + padding[3], width + padding[2]

        # random crop (top drawn before left, and only along a side longer than the crop)
        top = int(torch.randint(0, height - self.crop[0] + 1, (), generator=g)) if (
            height > self.crop[0]) else 0
        left = int(torch.randint(0, width - self.crop[1] + 1, (), generator=g)) if (
            width > self.crop[1]) else 0
        image = F.crop_image(image, top, left, *self.crop)
        mask = F.crop_mask(mask, top, left, *self.crop)

        if self.flip and torch.rand(1, generator=g) < 0.5:
            image, mask = F.horizontal_flip_image(image), F.horizontal_flip_mask(mask)

        image = F.normalize_image(F.to_dtype_image(image, torch.float32, scale=True),
                                  mean=list(self.mean), std=list(self.std))
        return image, mask[0].to(torch.int64)

    def _photometric(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The photometric steps on the image, drawing from the global generator (forked and
        seeded from ``generator`` when one is given)."""
        assert self.photometric is not None
        if generator is None:
            return self.photometric(tv_tensors.Image(image)).as_subclass(torch.Tensor)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(torch.randint(2**62, (), generator=generator)))
            return self._photometric(image, None)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(crop={self.crop}, scales={self.scales}, flip={self.flip}, "
                f"photometric={self.photometric!r})")


def train_transform(
    crop_size: int | Sequence[int] = 513,  # DeepLabv3 §4.1: 513 crop (321 cost ~10 % mIoU on VOC)
    *,
    min_scale: float = 0.5,  # DeepLabv3 §4.1: random scale 0.5..2.0
    max_scale: float = 2.0,
    scale_step: float = 0.25,  # the TF DeepLab input pipeline's scale_factor_step_size
    flip: bool = True,  # DeepLabv3 §4.1: random left-right flip
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
    color_jitter: Mapping[str, float] | None = None,  # off: the papers use none
    blur: Mapping[str, Any] | None = None,
) -> TrainAugment:
    """The training augmentation: optional colour jitter and blur (:func:`photometric`), random
    scale, pad (mean / ignore), random crop, flip, normalize (:class:`TrainAugment`).

    Raises:
        ValueError: a malformed crop size or scale range (a programming error, not bad data).
    """
    return TrainAugment(_pair(crop_size), RandomDiscreteScale(min_scale, max_scale, scale_step),
                        flip, mean, std, ignore_index, photometric(color_jitter, blur))


def eval_transform(
    pad_to: int | Sequence[int] | None = None,  # DeepLabv3 evaluates on 513x513 padded inputs
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
) -> SegmentationTransform:
    """The evaluation transform: normalize only; with ``pad_to``, pad bottom/right to that size.

    Padding uses the mean colour and the ignore label, so padded pixels never count in the mIoU.
    """
    steps: list[v2.Transform] = []
    if pad_to is not None:
        steps.append(PadToSize(pad_to, mean_fill(mean), ignore_index))
    return SegmentationTransform(v2.Compose(steps + _finish(mean, std)), mean, std)


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the mean/std normalization of a ``(..., 3, H, W)`` image: back to [0, 1] floats."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return image * s + m
