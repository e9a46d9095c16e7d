"""Data pipeline of the training runtime: data sets, augmentation and loaders.

A sample is ``(PIL RGB image, uint8 label array)`` with train ids and the ignore label 255;
:func:`open_dataset` opens one from a SOURCE string, the transforms turn samples into tensors and
:func:`build_loader` batches them.
"""

from __future__ import annotations

from .base import IGNORE_INDEX, Sample, SegmentationDataset, colorize, palette
from .layouts import SOURCE_FORMS, PairedDataset, open_dataset, open_split
from .loader import (
    VOC_HARD_CLASSES,
    Prefetcher,
    TrainOrder,
    TransformedDataset,
    bootstrap_indices,
    build_loader,
    class_ids,
    class_presence,
    has_labelled_pixel,
    train_stream,
)
from .synthetic import SyntheticSegmentation
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationTransform,
    TrainAugment,
    denormalize,
    eval_transform,
    train_transform,
)

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SOURCE_FORMS",
    "VOC_HARD_CLASSES",
    "PairedDataset",
    "Prefetcher",
    "Sample",
    "SegmentationDataset",
    "SegmentationTransform",
    "SyntheticSegmentation",
    "TrainAugment",
    "TrainOrder",
    "TransformedDataset",
    "bootstrap_indices",
    "build_loader",
    "class_ids",
    "class_presence",
    "colorize",
    "denormalize",
    "eval_transform",
    "has_labelled_pixel",
    "open_dataset",
    "open_split",
    "palette",
    "train_stream",
    "train_transform",
]
