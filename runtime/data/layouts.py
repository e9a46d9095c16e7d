"""Readers for segmentation data sets on disk, and :func:`open_dataset`, which parses a SOURCE string.

Accepted SOURCE strings:

* ``synthetic`` -- the built-in generated data set (:mod:`runtime.data.synthetic`);
* ``voc:PATH`` -- PASCAL VOC 2012 (``JPEGImages/``, palette PNGs in ``SegmentationClass/``, split
  lists in ``ImageSets/Segmentation/``; split ``train_aug`` reads the SBD labels in
  ``SegmentationClassAug/``), 21 classes;
* ``cityscapes:PATH`` -- Cityscapes fine annotations (``leftImg8bit/`` + ``gtFine/``), label ids
  mapped to the 19 train ids;
* ``ade20k:PATH`` -- ADE20K SceneParsing (``images/`` + ``annotations/``), 150 classes, label 0
  ignored;
* ``folder:PATH`` -- ``PATH/images/{split}/*`` with grayscale label PNGs of the same stem in
  ``PATH/masks/{split}/``; the class count comes from the model, or from ``PATH/classes.txt``.

Files are listed once, sorted, when a data set is opened; a missing file is reported then. Each
image is decoded when it is read, so a truncated file is reported by name when training reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from specc.errors import DataError

from .base import (
    IGNORE_INDEX,
    Sample,
    SegmentationDataset,
    check_class_count,
    check_same_size,
    identity_table,
    label_table,
    numbered_lines,
    read_image,
    read_label,
    read_lines,
    require_dir,
)
from .synthetic import SyntheticSegmentation

if TYPE_CHECKING:
    from specc.spec import Spec

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv/monitor",
)  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
# Cityscapes label id -> train id (cityscapesScripts labels.py); every other id is ignored.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

SOURCE_FORMS = "synthetic, voc:PATH, cityscapes:PATH, ade20k:PATH, folder:PATH"


class PairedDataset(SegmentationDataset):
    """Image/label file pairs read from disk, labels mapped to train ids through a lookup table."""

    def __init__(
        self,
        name: str,
        split: str,
        pairs: list[tuple[Path, Path]],
        class_names: tuple[str, ...],
        table: np.ndarray,
    ) -> None:
        self.name = name
        self.split = split
        self.pairs = pairs
        self.class_names = class_names
        self.table = table

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path = self.pairs[self._check_index(index)]
        image = read_image(image_path)
        label = read_label(label_path, self.table, self.num_classes)
        check_same_size(image, label, image_path, label_path)
        return image, label

    def load_label(self, index: int) -> np.ndarray:
        return read_label(self.pairs[self._check_index(index)][1], self.table, self.num_classes)


def _require_files(pairs: list[tuple[Path, Path]], where: Path) -> list[tuple[Path, Path]]:
    """Return ``pairs`` if non-empty and every file exists; DataError names the first missing one."""
    if not pairs:
        raise DataError(f"{where}: no samples found")
    for pair in pairs:
        for path in pair:
            if not path.is_file():
                kind = "image" if path is pair[0] else "label"
                raise DataError(f"{path}: {_not_a_file(path, kind)} (listed for {where})")
    return pairs


def _not_a_file(path: Path, kind: str) -> str:
    """Why ``path`` is no ``kind`` file: a folder of that name, or missing (naming a file of
    the same stem with another suffix or case when there is one: a mask saved as JPEG)."""
    if path.is_dir():
        return f"a folder, where the {kind} file should be"
    near = sorted(p.name for p in path.parent.glob("*")
                  if p.stem == path.stem and p.name != path.name) if path.parent.is_dir() else []
    if near:
        return (f"{kind} file not found; found {', '.join(near)}, expected the name "
                f"{path.name}")
    return f"{kind} file not found"


def voc(root: Path, split: str) -> PairedDataset:
    """PASCAL VOC 2012 segmentation: ``train``, ``val``, ``trainval`` or ``train_aug`` (SBD labels).

    Raises:
        DataError: the root, the split list or a listed file is missing.
    """
    require_dir(root, "PASCAL VOC 2012 root (with JPEGImages/ and ImageSets/Segmentation/)")
    list_path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_path.is_file():
        raise DataError(
            f"{list_path}: split list for VOC split {split!r} not found"
            " (splits: train, val, trainval, train_aug)"
        )
    label_dir = root / ("SegmentationClassAug" if split == "train_aug" else "SegmentationClass")
    require_dir(label_dir, f"label folder for VOC split {split!r}")
    # A line is an image id, or "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png" in some
    # train_aug lists: the first token's stem is the id either way.
    ids = sorted({Path(line.split()[0]).stem for line in read_lines(list_path)})
    pairs = [(root / "JPEGImages" / f"{i}.jpg", label_dir / f"{i}.png") for i in ids]
    return PairedDataset(
        f"voc:{root}", split, _require_files(pairs, list_path), VOC_CLASSES, identity_table(21)
    )


def cityscapes(root: Path, split: str) -> PairedDataset:
    """Cityscapes fine annotations (``train``, ``val`` or ``test``), label ids mapped to 19 train ids.

    Raises:
        DataError: the split folder, an image's ``gtFine_labelIds`` file, or all images are missing.
    """
    require_dir(root, "Cityscapes root (with leftImg8bit/ and gtFine/)")
    image_dir = require_dir(root / "leftImg8bit" / split, f"Cityscapes images of split {split!r}")
    suffix = "_leftImg8bit.png"
    label_dir = root / "gtFine" / split
    pairs = [
        (image, label_dir / image.parent.name / image.name.replace(suffix, "_gtFine_labelIds.png"))
        for image in sorted(image_dir.glob(f"*/*{suffix}"))
    ]
    mapping = dict.fromkeys(range(256), IGNORE_INDEX) | CITYSCAPES_TRAIN_IDS
    return PairedDataset(
        f"cityscapes:{root}",
        split,
        _require_files(pairs, image_dir),
        CITYSCAPES_CLASSES,
        label_table(mapping),
    )


def ade20k(root: Path, split: str) -> PairedDataset:
    """ADE20K SceneParsing (``train``/``training`` or ``val``/``validation``): label 0 ignored.

    Raises:
        DataError: the split folders or an image's annotation are missing.
    """
    require_dir(root, "ADE20K root (with images/ and annotations/)")
    subdir = {"train": "training", "val": "validation"}.get(split, split)
    image_dir = require_dir(root / "images" / subdir, f"ADE20K images of split {split!r}")
    label_dir = require_dir(root / "annotations" / subdir, f"ADE20K annotations of split {split!r}")
    pairs = [(image, label_dir / f"{image.stem}.png") for image in sorted(image_dir.glob("*.jpg"))]
    mapping = {0: IGNORE_INDEX} | {raw: raw - 1 for raw in range(1, 151)}  # 1..150 -> 0..149
    return PairedDataset(
        f"ade20k:{root}",
        split,
        _require_files(pairs, image_dir),
        ADE20K_CLASSES,
        label_table(mapping),
    )


def folder(root: Path, split: str, num_classes: int) -> PairedDataset:
    """A plain folder layout: ``images/{split}/*`` (any of ``IMAGE_SUFFIXES``) + ``masks/{split}/<stem>.png``.

    ``classes.txt`` (one name per line), when present, fixes the class count and names.

    Raises:
        DataError: a folder or a mask is missing, two images share a stem, ``classes.txt``
            disagrees with ``num_classes``, or ``num_classes`` is past what 8-bit masks hold
            beside the ignore label (:func:`~runtime.data.base.check_class_count`).
    """
    require_dir(root, "dataset folder (with images/ and masks/)")
    check_class_count(f"folder:{root}", num_classes)
    classes_path = root / "classes.txt"
    if classes_path.is_file():
        names = class_names(classes_path)
        if len(names) != num_classes:
            raise DataError(
                f"{classes_path}: lists {len(names)} classes but the model expects {num_classes}"
            )
    else:
        names = tuple(f"class_{i}" for i in range(num_classes))
    image_dir = require_dir(root / "images" / split, f"images of split {split!r}")
    mask_dir = require_dir(root / "masks" / split, f"masks of split {split!r}")
    # hidden files are not images: macOS writes ._NAME beside every file copied to some disks
    images = sorted(p for p in image_dir.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            raise DataError(f"{image}: same name as {stems[image.stem]}; masks are matched by stem")
        stems[image.stem] = image
    pairs = [(image, mask_dir / f"{image.stem}.png") for image in images]
    return PairedDataset(
        f"folder:{root}",
        split,
        _require_files(pairs, image_dir),
        names,
        identity_table(num_classes),
    )


def class_names(path: Path) -> tuple[str, ...]:
    """The class names of a ``classes.txt``, one per non-empty line, each listed once: two train
    ids of one name could not be told apart in reports, and ``train.hard_classes`` would name
    only the first.

    Raises:
        DataError: the file cannot be read, or a name is listed twice (both line numbers).
    """
    first_line: dict[str, int] = {}
    for number, name in numbered_lines(path):
        if name in first_line:
            raise DataError(f"{path}:{number}: the class name {name!r} is listed twice (first on "
                            f"line {first_line[name]}); expected each class once")
        first_line[name] = number
    return tuple(first_line)


FIXED_LAYOUTS: dict[str, tuple[Callable[[Path, str], PairedDataset], int, str]] = {
    "voc": (voc, len(VOC_CLASSES), "20 object classes + background"),
    "cityscapes": (cityscapes, len(CITYSCAPES_CLASSES), "the 19 Cityscapes train ids"),
    "ade20k": (ade20k, len(ADE20K_CLASSES), "the 150 SceneParsing classes; label 0 is ignored"),
}


def open_dataset(
    source: str,
    split: str,
    num_classes: int,
    *,
    seed: int = 0,
    synthetic_size: int = 128,  # see SyntheticSegmentation: objects from 1/16 to 1/2 of 128 px
    synthetic_length: int | None = None,
) -> SegmentationDataset:
    """Open the data set a SOURCE string names, for ``split``, checked against the model's classes.

    ``seed``, ``synthetic_size`` and ``synthetic_length`` only apply to ``synthetic``.

    Raises:
        DataError: an unknown SOURCE form, a missing path or file, or a data set whose class count
            is not ``num_classes`` (the message gives both numbers).
    """
    scheme, sep, rest = source.partition(":")
    if scheme == "synthetic" and not rest:
        return SyntheticSegmentation(
            split,
            num_classes=num_classes,
            image_size=synthetic_size,
            length=synthetic_length,
            seed=seed,
        )
    if scheme not in (*FIXED_LAYOUTS, "folder") or not sep:
        raise DataError(f"unknown data source {source!r}; expected one of: {SOURCE_FORMS}")
    if not rest:
        raise DataError(f"data source {source!r} needs a path after '{scheme}:'")
    root = Path(rest).expanduser()
    if scheme == "folder":
        return folder(root, split, num_classes)
    reader, expected, what = FIXED_LAYOUTS[scheme]
    require_dir(root, f"{scheme} data set root")
    if num_classes != expected:
        raise DataError(
            f"{root}: {scheme} has {expected} classes ({what}) but the model expects {num_classes}"
        )
    return reader(root, split)


def open_split(spec: Spec, split: str, source: str | None = None) -> SegmentationDataset:
    """The data set a spec trains or evaluates on, for ``split`` (``source`` overrides
    ``spec.data.source``).

    The one place that decides the built-in synthetic set's length: ``data.synthetic.train_length``
    for the training split, ``val_length`` for any other.

    Raises:
        DataError: as :func:`open_dataset`.
    """
    data = spec.data
    length = (data.synthetic.train_length if split == data.train_split
              else data.synthetic.val_length)
    return open_dataset(source or data.source, split, spec.num_classes, seed=spec.train.seed,
                        synthetic_size=data.synthetic.size, synthetic_length=length)
