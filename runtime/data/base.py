"""What every data set in the runtime shares: the sample convention, safe file reading, label checks.

A *sample* is ``(image, label)``: a PIL RGB image and a ``uint8`` array of shape ``(H, W)`` holding
train ids ``0 .. num_classes - 1`` or the ignore label 255. Every reader converts its on-disk label
encoding into train ids through a 256-entry lookup table (:func:`label_table`); raw values that the
layout does not define map to ``-1`` and are reported as a :class:`DataError` naming the file.

Reading goes through :func:`read_image` and :func:`read_label`, which force Pillow to decode the
whole file, so a truncated or corrupt file is reported when it is read instead of surfacing as a
traceback deep inside a DataLoader worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from specc.errors import DataError

IGNORE_INDEX = 255  # "void" label of VOC and Cityscapes; the loss and mIoU skip it (DeepLabv3 §4.1)

Sample = tuple[Image.Image, np.ndarray]


class SegmentationDataset:
    """A map-style data set of ``(image, label)`` samples; subclasses fill in the reading.

    Attributes every data set exposes: ``class_names`` (one name per train id), ``num_classes``,
    ``ignore_index`` (255) and ``name`` (the SOURCE string it was opened from, for messages).
    """

    name: str = "dataset"
    class_names: tuple[str, ...] = ()
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        """How many train ids the labels use (the model's number of output channels)."""
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError

    def load_label(self, index: int) -> np.ndarray:
        """The label of sample ``index`` alone; readers override it to skip decoding the image."""
        return self[index][1]

    def _check_index(self, index: int) -> int:
        """Return ``index`` as a non-negative position; raises IndexError past the end."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} samples")
        return index


def label_table(mapping: Mapping[int, int]) -> np.ndarray:
    """A 256-entry lookup table from raw label values to train ids; undefined values map to -1."""
    table = np.full(256, -1, dtype=np.int16)
    for raw, train_id in mapping.items():
        table[raw] = train_id
    return table


def identity_table(num_classes: int) -> np.ndarray:
    """The table of layouts that store train ids directly: ``0 .. num_classes - 1`` and 255."""
    mapping = {i: i for i in range(num_classes)}
    mapping[IGNORE_INDEX] = IGNORE_INDEX
    return label_table(mapping)


def read_image(path: Path) -> Image.Image:
    """Read an image file fully and return it as RGB.

    Raises:
        DataError: the file is missing, truncated, or not an image Pillow can decode.
    """
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so truncation is caught here
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read image: {err}") from None


def read_label(path: Path, table: np.ndarray, num_classes: int) -> np.ndarray:
    """Read a label PNG (palette or grayscale) and map its values to train ids with ``table``.

    For a palette ('P') PNG the palette index is the label, as in VOC's ``SegmentationClass``.

    Raises:
        DataError: the file is missing or unreadable, is not a single-channel label image, or holds
            values the layout does not define (the message lists them).
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            raw = np.asarray(img)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read label image: {err}") from None
    if mode not in ("P", "L"):
        raise DataError(
            f"{path}: label images must be palette ('P') or grayscale ('L') PNGs holding class ids,"
            f" found mode {mode!r}"
        )
    mapped = table[raw]
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0])
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise DataError(
            f"{path}: label values {shown} are not valid for {num_classes} classes"
            f" (expected 0..{num_classes - 1} or the ignore label {IGNORE_INDEX})"
        )
    return mapped.astype(np.uint8)


def check_same_size(
    image: Image.Image, label: np.ndarray, image_path: Path, label_path: Path
) -> None:
    """Raise DataError if an image and its label do not have the same height and width."""
    if label.shape != (image.height, image.width):
        raise DataError(
            f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image"
            f" {image_path} is {image.width}x{image.height} (width x height)"
        )


def read_lines(path: Path) -> list[str]:
    """The non-empty, stripped lines of a text file (split lists, class lists).

    Raises:
        DataError: the file is missing or not valid UTF-8 text.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory; raise DataError saying ``what`` was expected there."""
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found (no such directory)")
    return path


def palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: ``(num_colors, 3)`` uint8, index 255 is (224, 224, 192).

    Each index's bits are spread over the high bits of R, G and B, so neighbouring ids get clearly
    different colours; this is the palette VOC's label PNGs are stored with.
    """
    colors = np.zeros((num_colors, 3), dtype=np.uint8)
    for i in range(num_colors):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors[i] = (r, g, b)
    return colors


def colorize(label: np.ndarray | Sequence[Sequence[int]]) -> Image.Image:
    """A palette ('P') PIL image of a label map, coloured with the VOC palette (for ``predict``).

    Raises:
        DataError: the label map is not 2-D or holds values outside 0..255.
    """
    arr = np.asarray(label)
    if arr.ndim != 2:
        raise DataError(f"colorize: expected a 2-D label map, got shape {tuple(arr.shape)}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise DataError("colorize: label values must lie in 0..255")
    img = Image.fromarray(arr.astype(np.uint8))  # mode 'L'; putpalette turns it into 'P'
    img.putpalette(palette().tobytes())
    return img
