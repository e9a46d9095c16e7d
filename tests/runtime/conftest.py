"""Fixtures for the runtime tests: small data set trees in each on-disk layout, written by Pillow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from runtime.data import palette

H, W = 24, 32  # small but not square, so a swapped height/width would show


def write_image(path: Path, height: int = H, width: int = W, seed: int = 0) -> Path:
    """Write a random RGB image; JPEG or PNG by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def write_label(path: Path, label: np.ndarray, *, mode: str = "L") -> Path:
    """Write a label PNG: grayscale ('L') or palette ('P', VOC palette, index = label)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(label, dtype=np.uint8))
    if mode == "P":
        img.putpalette(palette().tobytes())
        assert img.mode == "P"
    img.save(path)
    return path


def label_with(values: list[int], height: int = H, width: int = W) -> np.ndarray:
    """A label map cycling through ``values`` row by row (every value present)."""
    flat = np.resize(np.asarray(values, dtype=np.uint8), height * width)
    return flat.reshape(height, width)


VOC_LABEL = label_with([0, 15, 20, 255])
CITYSCAPES_RAW = label_with([7, 8, 26, 33, 0, 4, 255, 1])
ADE_RAW = label_with([0, 1, 2, 150])


def make_voc(root: Path, *, train_label: np.ndarray = VOC_LABEL) -> Path:
    """A VOC 2012 tree: train (a), val (b), train_aug (a, c; full-path lines), palette labels."""
    for i, name in enumerate("abc"):
        write_image(root / "JPEGImages" / f"{name}.jpg", seed=i)
    write_label(root / "SegmentationClass" / "a.png", train_label, mode="P")
    write_label(root / "SegmentationClass" / "b.png", label_with([0, 1]), mode="P")
    for name in "ac":
        write_label(root / "SegmentationClassAug" / f"{name}.png", label_with([0, 9]))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("a\n")
    (lists / "val.txt").write_text("b\n")
    (lists / "trainval.txt").write_text("a\nb\n")
    (lists / "train_aug.txt").write_text(
        "/JPEGImages/c.jpg /SegmentationClassAug/c.png\n/JPEGImages/a.jpg /SegmentationClassAug/a.png\n"
    )
    return root


def make_cityscapes(root: Path) -> Path:
    """A Cityscapes tree with one city and two images in train."""
    for i, stem in enumerate(["aachen_000001_000019", "aachen_000000_000019"]):
        write_image(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", seed=i)
        write_label(
            root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", CITYSCAPES_RAW
        )
    return root


def make_ade20k(root: Path) -> Path:
    """An ADE20K SceneParsing tree with one training and one validation image."""
    for split in ("training", "validation"):
        write_image(root / "images" / split / f"ADE_{split}_00000001.jpg")
        write_label(root / "annotations" / split / f"ADE_{split}_00000001.png", ADE_RAW)
    return root


def make_folder(
    root: Path, labels: dict[str, np.ndarray], *, classes: list[str] | None = None
) -> Path:
    """A folder layout: ``images/train/<stem>.jpg|png`` and ``masks/train/<stem>.png``."""
    for i, (stem, label) in enumerate(sorted(labels.items())):
        suffix = ".png" if i % 2 else ".jpg"
        write_image(root / "images" / "train" / f"{stem}{suffix}", *label.shape, seed=i)
        write_label(root / "masks" / "train" / f"{stem}.png", label)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The writers and expected labels above, for tests (conftest is not imported directly)."""
    return SimpleNamespace(
        H=H,
        W=W,
        write_image=write_image,
        write_label=write_label,
        label_with=label_with,
        VOC_LABEL=VOC_LABEL,
        CITYSCAPES_RAW=CITYSCAPES_RAW,
        ADE_RAW=ADE_RAW,
    )


@pytest.fixture(scope="session")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One read-only tree per layout, shared by the whole session."""
    base = tmp_path_factory.mktemp("layouts")
    return {
        "voc": make_voc(base / "voc"),
        "cityscapes": make_cityscapes(base / "cityscapes"),
        "ade20k": make_ade20k(base / "ade20k"),
        "folder": make_folder(
            base / "folder",
            {"x": label_with([0, 1, 2]), "y": label_with([0, 255])},
            classes=["sky", "grass", "rock"],
        ),
    }


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """Build a fresh tree of a layout under ``tmp_path`` (for tests that then break it)."""
    makers: dict[str, Callable[..., Path]] = {
        "voc": make_voc,
        "cityscapes": make_cityscapes,
        "ade20k": make_ade20k,
        "folder": make_folder,
    }

    def build(layout: str, **kwargs: object) -> Path:
        return makers[layout](tmp_path / layout, **kwargs)

    return build
