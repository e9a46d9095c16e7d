"""Reading every sample of a split once, before a long run does: ``specc check-data``.

Training reads a file when its turn comes, so a truncated image or a mask of the wrong size
stops a run hours in, and only the first such file is named. :func:`check_split` decodes every
image and label of a split (in ``num_workers`` processes), goes on past a bad one, and returns
every problem with the labelled pixels of each class, so that a class no mask holds shows too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, Dataset

from specc.errors import DataError

from .base import SegmentationDataset


@dataclass(frozen=True)
class SplitReport:
    """What :func:`check_split` found: the samples read, one message per sample that could not
    be read (naming its file), and the labelled pixels of each class over the others."""

    samples: int
    problems: list[str]
    pixels: np.ndarray  # (num_classes,) int64

    @property
    def unlabelled_classes(self) -> list[int]:
        return [c for c, n in enumerate(self.pixels.tolist()) if n == 0]


class _SampleCheck(Dataset[tuple[str | None, np.ndarray]]):
    """Sample ``index`` decoded whole (image and label, with the data set's own checks: sizes,
    label values), as its problem or its label's class histogram."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[str | None, np.ndarray]:
        empty = np.zeros(self.dataset.num_classes, np.int64)
        try:
            _, label = self.dataset[index]  # images are decoded whole as they are read
        except DataError as err:
            return str(err), empty
        counts = np.bincount(np.asarray(label).ravel(), minlength=256)
        return None, counts[: self.dataset.num_classes].astype(np.int64)


def check_split(dataset: SegmentationDataset, num_workers: int = 0) -> SplitReport:
    """Decode every sample of ``dataset`` once; see :class:`SplitReport`."""
    loader = DataLoader(_SampleCheck(dataset), batch_size=None, num_workers=num_workers)
    problems: list[str] = []
    pixels = np.zeros(dataset.num_classes, np.int64)
    for problem, counts in loader:
        if problem is not None:
            problems.append(problem)
        pixels += np.asarray(counts, np.int64)
    return SplitReport(len(dataset), problems, pixels)
