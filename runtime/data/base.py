"""What every data set in the runtime shares: the sample convention, safe file reading, label checks.

A *sample* is ``(image, label)``: a PIL RGB image and a ``uint8`` array of shape ``(H, W)`` holding
train ids ``0 .. num_classes - 1`` or the ignore label 255. Every reader converts its on-disk label
encoding into train ids through a 256-entry lookup table (:func:`label_table`); raw values that the
layout does not define map to ``-1`` and are reported as a :class:`DataError` naming the file.

Reading goes through :func:`read_image` and :func:`read_label`, which force Pillow to decode the
whole file, so a truncated or corrupt file is reported when it is read instead of surfacing as a
traceback deep inside a DataLoader worker.

Images of every mode Pillow opens are read, scaled by their true bit depth to the range the model
takes (0..1, held as 8-bit RGB like every other sample): 8-bit modes (``1``, ``L``, ``LA``, ``P``,
``RGB``, ``RGBA``, ``CMYK``, ``YCbCr``, ``LAB``, ...) through Pillow's own colour conversion, with
any alpha channel dropped; 16-bit grey (``I;16``, and ``I`` with values in 0..65535) divided by
65535; floating-point grey (``F``, e.g. a float TIFF) taken to lie in 0..1, and refused with the
file named when a value lies outside or is not finite. 16-bit RGB PNGs are reduced to 8 bits by
Pillow itself. Label images must hold class ids in one integer channel (``L``, ``P``, ``I;16``,
``I`` or ``1``); a colour or floating-point mask is refused.

Images and labels are read the way a viewer shows them: a camera's EXIF orientation tag (a
photo stored sideways, to be turned on display) is applied, so predictions line up with the
picture the user sees and with masks drawn over it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from specc.errors import DataError

IGNORE_INDEX = 255  # "void" label of VOC and Cityscapes; the loss and mIoU skip it (DeepLabv3 §4.1)
#: Most classes a data set's labels can hold: train ids 0..254 below the ignore label.
MAX_DATASET_CLASSES = IGNORE_INDEX

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


def check_class_count(name: str, num_classes: int) -> None:
    """Refuse a class count that 8-bit train ids cannot hold beside the ignore label: a model
    of 256 classes would have its last class ignored wherever a mask labels it (never trained,
    never scored), and past 256 the ids do not fit in a sample's ``uint8`` label at all.

    Raises:
        DataError: naming the data set, ``num_classes`` and the limit.
    """
    if num_classes > MAX_DATASET_CLASSES:
        raise DataError(
            f"{name}: num_classes must be at most {MAX_DATASET_CLASSES}, got {num_classes} "
            f"(masks hold train ids 0..{MAX_DATASET_CLASSES - 1} in 8 bits and {IGNORE_INDEX} "
            "is the ignore label)"
        )


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
    """Read an image file fully and return it as 8-bit RGB, scaled by its true bit depth.

    Raises:
        DataError: the file is missing, truncated, not an image Pillow can decode, of a mode that
            has no RGB reading, or a float image with values outside 0..1.
    """
    with _image_errors(path), Image.open(path) as img:
        img.load()  # decode now, so truncation is caught here
        return to_rgb(upright(img), path)


def check_image(path: Path) -> tuple[int, int]:
    """The ``(width, height)`` an image file's header gives, without decoding its pixels.

    Cheap enough to run over every input of a command before it decodes any of them, so a
    missing file or one that is not an image stops the command before it writes anything; a file
    cut short after its header still passes and is reported by :func:`read_image`.

    Raises:
        DataError: the file is missing, a directory, or not an image Pillow can open.
    """
    with _image_errors(path), Image.open(path) as img:
        return img.size


@contextmanager
def _image_errors(path: Path) -> Iterator[None]:
    """Turn the errors of opening and decoding the image at ``path`` into DataErrors naming it."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected an image file, found a directory") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read image: {err}") from None


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation tag says it is shown; itself when it has none."""
    return ImageOps.exif_transpose(img) or img


#: Modes holding one channel of 16-bit (or wider integer) grey, read as 0..65535.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """``img`` as 8-bit RGB with values scaled by the mode's true range (see the module text).

    Raises:
        DataError: values outside the mode's range (negative or past 65535 in ``I``, outside 0..1
            or not finite in ``F``), or a mode Pillow cannot convert to RGB.
    """
    if img.mode in WIDE_GREY_MODES:
        values = np.asarray(img)
        _check_range(values, 0, 65535, path, img.mode, "16-bit grey is read as 0..65535")
        return _grey_to_rgb(values / 65535.0)
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        _check_range(values, 0.0, 1.0, path, img.mode, "floating-point images are read as 0..1")
        return _grey_to_rgb(values)
    if img.mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow warns when a palette with transparency goes to RGB
    try:
        return img.convert("RGB")
    except ValueError:
        raise DataError(f"{path}: cannot read images of mode {img.mode!r} as RGB; save it as "
                        "8-bit or 16-bit RGB or grey") from None


def _check_range(values: np.ndarray, low: float, high: float, path: Path, mode: str,
                 rule: str) -> None:
    """DataError naming the file when ``values`` are not all finite and within ``low..high``."""
    if not values.size:
        return
    if not np.isfinite(values).all():
        raise DataError(f"{path}: mode {mode!r} image holds values that are not finite (NaN or "
                        f"infinity); {rule}")
    found_low, found_high = values.min(), values.max()
    if found_low < low or found_high > high:
        raise DataError(f"{path}: mode {mode!r} image holds values from {found_low:g} to "
                        f"{found_high:g}; {rule} (rescale the image into {low:g}..{high:g})")


def _grey_to_rgb(unit: np.ndarray) -> Image.Image:
    """An RGB image of grey values in 0..1, rounded to the nearest of 256 levels."""
    grey = np.rint(unit * 255.0).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))


#: Label modes that hold integer class ids in one channel.
LABEL_MODES = ("L", "P", "1", *WIDE_GREY_MODES)


def read_label(path: Path, table: np.ndarray, num_classes: int) -> np.ndarray:
    """Read a label image of class ids and map its values to train ids with ``table``.

    For a palette ('P') PNG the palette index is the label, as in VOC's ``SegmentationClass``;
    16-bit grey (``I;16``, ``I``) and 1-bit masks are read as the integers they hold.

    Raises:
        DataError: the file is missing or unreadable, is not a single-channel integer label image,
            or holds values the layout does not define (the message lists them).
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = upright(img)
            mode = img.mode
            raw = np.asarray(img)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected a label image, found a directory") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read label image: {err}") from None
    if mode not in LABEL_MODES:
        raise DataError(
            f"{path}: label images must hold class ids in one integer channel (palette 'P', "
            f"grey 'L', 16-bit 'I;16' or 'I', 1-bit '1'), found mode {mode!r}"
            + (" (a colour mask? save the class ids, not colours)" if mode in ("RGB", "RGBA")
               else "")
        )
    raw = raw.astype(np.int64)
    outside = (raw < 0) | (raw >= table.size)
    mapped = table[np.where(outside, 0, raw)]
    bad_mask = outside | (mapped < 0)
    if bad_mask.any():
        bad = np.unique(raw[bad_mask])
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
    return [line for _, line in numbered_lines(path)]


def numbered_lines(path: Path) -> list[tuple[int, str]]:
    """The non-empty, stripped lines of a text file with their 1-based line numbers, for
    messages that point at a line. A byte-order mark (Windows editors write one) is not part of
    the first line.

    Raises:
        DataError: the file is missing or not valid UTF-8 text.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
            if line.strip()]


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
