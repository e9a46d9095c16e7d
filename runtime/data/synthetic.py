"""A built-in synthetic segmentation data set: no download, no files, deterministic by seed.

Each sample is generated on the fly from a numpy ``Generator`` seeded with ``(seed, split, index)``,
so the same index, seed and split always give the same sample, on any machine and in any worker.

How a sample is made
--------------------
* **Background (class 0)**: a low-saturation base colour with a linear gradient in a random
  direction and, half of the time, soft sinusoidal stripes. Background is never strongly coloured,
  so it cannot be confused with an object.
* **Objects (classes 1 .. K-1)**: 3 to 7 per image, each a random shape (disc, ellipse, rotated
  rectangle, triangle, ring or cross) at a random position. Sizes are log-uniform from 1/16 to
  1/2 of the image side, which is the multi-scale problem ASPP addresses (DeepLabv3 §3.3). Larger
  objects are drawn first, so small ones are rarely hidden.
* **Class signature**: a class is recognisable from local appearance alone, whatever its shape. Its
  colour is one of ``ceil((K-1)/2)`` hues spread evenly around the colour wheel, in a bright or a
  dark variant, and its texture (flat, stripes, checker or dots, at a class-specific orientation)
  modulates brightness. Each object jitters its colour (about 4 % per channel and ±12 % brightness)
  and the whole image gets Gaussian pixel noise, so the task is learnable but not a lookup table.
* **Labels**: train ids per pixel, plus the ignore label 255 on a band about two pixels wide
  around every object's outline (like VOC's void borders), where the true class is ambiguous.

Generating one 128×128 sample takes about a millisecond: every shape is evaluated as a signed
distance on its bounding box only. A training run reads each sample once per epoch, so a data set
that fits in :data:`CACHE_BYTES` keeps what it generated (read-only arrays) and generates each
sample once per process: the same arrays, at no cost from the second epoch on.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image

from specc.errors import DataError

from .base import IGNORE_INDEX, Sample, SegmentationDataset, check_class_count

SPLITS = {
    "train": 0,
    "val": 1,
}  # split id is part of the seed, so train and val never share samples

#: Largest data set (image and label bytes) kept in memory once generated: the default 2000
#: images of 128 px take 131 MB.
CACHE_BYTES = 1 << 30

SHAPES = ("disc", "ellipse", "rectangle", "triangle", "ring", "cross")
TEXTURES = ("flat", "stripes", "checker", "dots")


def class_colors(num_classes: int) -> np.ndarray:
    """Base RGB colours in [0, 1], shape ``(num_classes, 3)``; row 0 (background) is unused grey."""
    num_objects = num_classes - 1
    num_hues = max(1, math.ceil(num_objects / 2))
    colors = np.full((num_classes, 3), 0.5, dtype=np.float32)
    for c in range(1, num_classes):
        hue = ((c - 1) % num_hues) / num_hues
        bright = (c - 1) < num_hues  # first pass round the wheel bright, second pass dark
        value = 0.95 if bright else 0.55
        colors[c] = colorsys.hsv_to_rgb(hue, 0.9, value)
    return colors


class SyntheticSegmentation(SegmentationDataset):
    """Procedurally generated images of textured, coloured shapes with per-pixel labels.

    Args:
        split: ``"train"`` or ``"val"`` (different seeds, so the splits never share samples).
        num_classes: classes including background 0; at least 2.
        image_size: side of the square images, in pixels.
        length: number of samples; defaults to 2000 for train and 200 for val.
        seed: base seed; with ``split`` and the index it fixes every sample.
        ignore_border: half-width in pixels of the ignore band around each object.

    Raises:
        DataError: unknown split or a parameter out of range.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        num_classes: int = 21,  # VOC's 20 objects + background (DeepLabv3 §4), so VOC specs run as-is
        image_size: int = 128,  # big enough for objects from 1/16 to 1/2 of the side to be visible
        length: int | None = None,
        seed: int = 0,
        ignore_border: float = 1.0,  # ~2 px void band, like VOC's object outlines
    ) -> None:
        if split not in SPLITS:
            raise DataError(f"synthetic: unknown split {split!r}; expected one of {sorted(SPLITS)}")
        if num_classes < 2:
            raise DataError(f"synthetic: num_classes must be at least 2, got {num_classes}")
        check_class_count("synthetic", num_classes)
        if image_size < 16:
            raise DataError(f"synthetic: image_size must be at least 16, got {image_size}")
        if length is None:
            length = (
                2000 if split == "train" else 200
            )  # enough variety for a CPU demo; val is quick
        if length < 1:
            raise DataError(f"synthetic: length must be positive, got {length}")
        self.name = "synthetic"
        self.split = split
        self.image_size = image_size
        self.length = length
        self.seed = seed
        self.ignore_border = ignore_border
        self.class_names = ("background", *(f"class_{c}" for c in range(1, num_classes)))
        self._colors = class_colors(num_classes)
        coords = np.arange(image_size, dtype=np.float32)
        self._ys = coords[:, None]
        self._xs = coords[None, :]
        keep = length * image_size * image_size * 4 <= CACHE_BYTES  # RGB + label, uint8
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if keep else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        image, label = self._sample(self._check_index(index))
        return Image.fromarray(image), label

    def load_label(self, index: int) -> np.ndarray:
        return self._sample(self._check_index(index))[1]

    def _sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index``, generated on first use and then kept when the set fits the cache;
        the arrays are read-only, so no reader can change what the next one gets."""
        if self._cache is None:
            return self.generate(index)
        sample = self._cache.get(index)
        if sample is None:
            sample = self.generate(index)
            for array in sample:
                array.flags.writeable = False
            self._cache[index] = sample
        return sample

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as arrays: image ``(S, S, 3)`` uint8 and label ``(S, S)`` uint8."""
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        size = self.image_size
        image = self._background(rng)
        label = np.zeros((size, size), dtype=np.uint8)
        num_objects = int(rng.integers(3, 8))
        # log-uniform diameters in [S/16, S/2]: the range of scales ASPP is built for
        diameters = np.sort(size * 2.0 ** rng.uniform(-4.0, -1.0, num_objects))[::-1]
        for diameter in diameters:
            self._draw_object(rng, image, label, float(diameter))
        image += rng.standard_normal(image.shape, dtype=np.float32) * 0.04  # sensor-like noise
        np.clip(image, 0.0, 1.0, out=image)
        return (image * 255.0 + 0.5).astype(np.uint8), label

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """A low-saturation background: base colour, gradient and optional stripes, ``(S, S, 3)``."""
        size = self.image_size
        base = rng.uniform(0.3, 0.7) + rng.uniform(-0.06, 0.06, 3)  # grey with a faint tint
        angle = rng.uniform(0.0, 2.0 * math.pi)
        ramp = (self._xs * math.cos(angle) + self._ys * math.sin(angle)) / size  # (S, S)
        shade = rng.uniform(-0.25, 0.25) * ramp
        if rng.random() < 0.5:
            period = rng.uniform(8.0, 40.0)
            phi = rng.uniform(0.0, math.pi)
            proj = self._xs * math.cos(phi) + self._ys * math.sin(phi)
            shade = shade + 0.08 * np.sin(proj * (2.0 * math.pi / period))
        return (base[None, None, :] + shade[:, :, None]).astype(np.float32)

    def _draw_object(
        self, rng: np.random.Generator, image: np.ndarray, label: np.ndarray, diameter: float
    ) -> None:
        """Paint one object of a random class into ``image`` and ``label`` in place."""
        size = self.image_size
        cls = int(rng.integers(1, self.num_classes))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        radius = diameter / 2.0
        cy, cx = rng.uniform(0.0, size, 2)
        theta = rng.uniform(0.0, math.pi)
        pad = radius * 1.5 + self.ignore_border + 1.0  # the bounding box with room for the band
        y0, y1 = max(0, int(cy - pad)), min(size, int(cy + pad) + 1)
        x0, x1 = max(0, int(cx - pad)), min(size, int(cx + pad) + 1)
        if y0 >= y1 or x0 >= x1:
            return
        dy = self._ys[y0:y1] - cy  # (h, 1)
        dx = self._xs[:, x0:x1] - cx  # (1, w)
        dist = _signed_distance(shape, dx, dy, radius, theta, rng)  # (h, w), > 0 inside

        inside = dist > 0.0
        color = self._colors[cls] * rng.uniform(0.88, 1.12) + rng.normal(0.0, 0.04, 3)
        texture = _texture(cls, self._window(y0, y1, x0, x1))
        patch = image[y0:y1, x0:x1]
        patch[inside] = (texture[..., None] * color.astype(np.float32))[inside]
        window = label[y0:y1, x0:x1]
        window[inside] = cls
        window[np.abs(dist) < self.ignore_border] = IGNORE_INDEX

    def _window(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Absolute pixel coordinates of a window, as broadcastable ``(h, 1)`` and ``(1, w)``."""
        return self._ys[y0:y1], self._xs[:, x0:x1]


def _signed_distance(
    shape: str,
    dx: np.ndarray,
    dy: np.ndarray,
    radius: float,
    theta: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Approximate signed distance in pixels to a shape's outline: positive inside, negative out."""
    cos, sin = math.cos(theta), math.sin(theta)
    u = dx * cos + dy * sin  # coordinates in the shape's rotated frame
    v = dy * cos - dx * sin
    if shape == "disc":
        return radius - np.sqrt(u * u + v * v)
    if shape == "ellipse":
        a, b = radius, radius * rng.uniform(0.45, 0.8)
        return (1.0 - np.sqrt((u / a) ** 2 + (v / b) ** 2)) * b
    if shape == "rectangle":
        a, b = radius, radius * rng.uniform(0.4, 1.0)
        return np.minimum(a - np.abs(u), b - np.abs(v))
    if shape == "triangle":
        inradius = radius * 0.6  # a triangle of circumradius ~radius
        dists = [
            inradius - (u * math.cos(k * 2.0 * math.pi / 3) + v * math.sin(k * 2.0 * math.pi / 3))
            for k in range(3)
        ]
        return np.minimum(np.minimum(dists[0], dists[1]), dists[2])
    if shape == "ring":
        width = max(2.5, radius * rng.uniform(0.25, 0.45))  # never thinner than the ignore band
        return width / 2.0 - np.abs(np.sqrt(u * u + v * v) - (radius - width / 2.0))
    # cross: the union of two perpendicular bars
    arm = max(2.5, radius * rng.uniform(0.25, 0.4))
    bar1 = np.minimum(radius - np.abs(u), arm - np.abs(v))
    bar2 = np.minimum(arm - np.abs(u), radius - np.abs(v))
    return np.maximum(bar1, bar2)


def _texture(cls: int, coords: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Brightness modulation (around 1.0) of class ``cls`` over a window, ``(h, w)`` float32."""
    ys, xs = coords
    kind = TEXTURES[cls % len(TEXTURES)]
    period = 5.0 + (cls * 7) % 5  # 5..9 px: class-specific and visible at 1/16 of a 128 px image
    omega = 2.0 * math.pi / period
    if kind == "flat":
        return np.ones(np.broadcast_shapes(ys.shape, xs.shape), dtype=np.float32)
    if kind == "stripes":
        phi = (cls * 0.61) % math.pi  # class-specific orientation
        wave = np.sin((xs * math.cos(phi) + ys * math.sin(phi)) * omega)
        return (1.0 + 0.18 * np.sign(wave)).astype(np.float32)
    if kind == "checker":
        return (1.0 + 0.18 * np.sign(np.sin(xs * omega) * np.sin(ys * omega))).astype(np.float32)
    dots = (np.sin(xs * omega) * np.sin(ys * omega)) > 0.5
    return np.where(dots, np.float32(0.7), np.float32(1.05))
