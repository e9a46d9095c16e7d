"""What ``specc eval --out DIR`` writes to show where a model is wrong.

* ``eval.json`` — the report ``specc eval --json`` prints;
* ``confusion.json`` — the confusion matrix with the class names: ``matrix[t][p]`` counts the
  pixels of true class ``t`` predicted as ``p`` (ignored pixels left out), and ``normalized``, each
  row divided by its sum (None for a class without labelled pixels);
* ``confusion.png`` — the normalized matrix as a heat map labelled with the class names;
* ``class_iou.png`` — the per-class IoU as a bar chart, with the mIoU;
* ``worst/NN_<image>.png`` — the ``k`` images with the lowest per-image mIoU, worst first, each as
  three panels: the image, its labels and the prediction (VOC colours); panels an earlier run
  left there are removed, other files are not.

Class names are the data set's (VOC, Cityscapes and ADE20K have fixed lists, a folder data set
reads ``classes.txt``), else ``class 0`` .. ``class N-1``. Every file is written atomically.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from runtime.data import colorize
from runtime.metrics import SegmentationScores, confusion_matrix, scores
from runtime.plot import plot_class_iou, plot_confusion
from specc.fsutil import atomic_write, atomic_write_text

#: The name of a panel in ``worst/``: its rank, then the image's name.
PANEL = re.compile(r"\d{2,}_.+\.png")

#: How many of the worst images ``specc eval --out`` draws when not told.
DEFAULT_WORST = 8
HEADER = 16  # pixels above each panel for its title


class WorstImages:
    """Keeps the ``k`` images with the lowest mIoU of their own (over the classes present in
    their labels or prediction) and their predictions, as ``evaluate`` hands them over."""

    def __init__(self, k: int, num_classes: int, ignore_index: int = 255) -> None:
        self.k, self.num_classes, self.ignore_index = k, num_classes, ignore_index
        self._heap: list[tuple[float, int]] = []  # (-mIoU, index): the best kept on top
        self._predictions: dict[int, np.ndarray] = {}

    def add(self, index: int, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Score image ``index`` (its ``(H, W)`` prediction and labels); an image without
        labelled pixels has no mIoU and is passed over."""
        if self.k <= 0:
            return
        miou = scores(confusion_matrix(prediction, label, self.num_classes,
                                       self.ignore_index)).miou
        if math.isnan(miou):
            return
        heapq.heappush(self._heap, (-miou, index))
        self._predictions[index] = prediction.to(torch.uint8 if self.num_classes <= 256
                                                 else torch.int32).cpu().numpy()
        if len(self._heap) > self.k:
            _, dropped = heapq.heappop(self._heap)
            del self._predictions[dropped]

    def worst(self) -> list[tuple[float, int, np.ndarray]]:
        """``(mIoU, index, prediction)`` of the kept images, worst first (ties by index)."""
        kept = sorted((-key, index) for key, index in self._heap)
        return [(miou, index, self._predictions[index]) for miou, index in kept]


def class_names(dataset: Any, num_classes: int) -> list[str]:
    """The data set's class names when it has one per class, else ``class 0`` .. ``class N-1``."""
    names = list(getattr(dataset, "class_names", ()) or ())
    return names if len(names) == num_classes else [f"class {i}" for i in range(num_classes)]


def confusion_record(result: SegmentationScores, names: Sequence[str],
                     ignore_index: int) -> dict[str, Any]:
    """The JSON record of ``confusion.json`` (see the module docstring)."""
    normalized = []
    for row in result.confusion:
        total = sum(row)
        normalized.append([v / total for v in row] if total else None)
    return {"classes": list(names), "rows": "true class", "columns": "predicted class",
            "ignore_index": ignore_index, "pixels": result.pixels,
            "matrix": [list(row) for row in result.confusion], "normalized": normalized}


def image_name(dataset: Any, index: int) -> str:
    """A file-name part for image ``index``: its file's stem when the data set has files."""
    pairs = getattr(dataset, "pairs", None)
    return Path(pairs[index][0]).stem if pairs else f"{index:05d}"


def error_panels(image: Image.Image, label: np.ndarray, prediction: np.ndarray,
                 titles: Sequence[str]) -> Image.Image:
    """Image, labels and prediction side by side, each under its title (colours: VOC palette;
    ignored pixels in the labels are the palette's light border colour)."""
    pictures = [image.convert("RGB"), colorize(label).convert("RGB"),
                colorize(prediction).convert("RGB")]
    width, height = image.size
    sheet = Image.new("RGB", (3 * width, height + HEADER), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (picture, title) in enumerate(zip(pictures, titles, strict=True)):
        sheet.paste(picture, (i * width, HEADER))
        draw.text((i * width + 2, 2), title, fill="black")
    return sheet


def write_eval_outputs(out: Path, report: dict[str, Any], result: SegmentationScores,
                       dataset: Any, worst: WorstImages, ignore_index: int) -> list[Path]:
    """Write the files of the module docstring into ``out``; returns their paths."""
    names = class_names(dataset, len(result.per_class_iou))
    out.mkdir(parents=True, exist_ok=True)
    title = f"{report.get('data', '')} {report.get('split', '')}".strip()
    written = [
        atomic_write_text(out / "eval.json", json.dumps(report, indent=2) + "\n"),
        atomic_write_text(out / "confusion.json",
                          json.dumps(confusion_record(result, names, ignore_index)) + "\n"),
        plot_confusion(result.confusion, names, out / "confusion.png",
                       f"confusion matrix, rows normalized: {title}"),
        plot_class_iou(result.per_class_iou, names, result.miou, out / "class_iou.png",
                       f"per-class IoU: {title}"),
    ]
    folder = out / "worst"
    panels = []
    for rank, (miou, index, prediction) in enumerate(worst.worst(), start=1):
        folder.mkdir(exist_ok=True)
        image, label = dataset[index]
        sheet = error_panels(image, label, prediction,
                             ("image", "labels", f"prediction: mIoU {100 * miou:.1f} %"))
        path = folder / f"{rank:02d}_{image_name(dataset, index)}.png"
        panels.append(atomic_write(path, lambda tmp, s=sheet: s.save(tmp, format="PNG")))
    _remove_stale_panels(folder, panels)
    return written + panels


def _remove_stale_panels(folder: Path, kept: list[Path]) -> None:
    """Delete the panels an earlier run left in ``folder`` (``NN_<image>.png`` not written now),
    so the folder shows this run's worst images only; other files are the user's and stay."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path not in kept and PANEL.fullmatch(path.name):
            path.unlink()
