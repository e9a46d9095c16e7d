"""Figures as PNG: training curves from ``RUN_DIR/metrics.jsonl`` (loss, learning rate and mIoU),
and an evaluation's confusion matrix and per-class IoU.

matplotlib runs on its Agg backend (no display needed, works on servers and in CI). Lines of the
log that cannot be parsed — the last one, if training was killed while writing it — are skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specc.errors import SpeccError
from specc.fsutil import atomic_write

METRICS = "metrics.jsonl"
FIGURE = "curves.png"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in file order, malformed lines skipped.

    Raises:
        SpeccError: the file does not exist.
    """
    if not path.is_file():
        raise SpeccError(f"{path}: no such metrics file (written by `specc train`)")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "iter" in record:
            records.append(record)
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """``(iterations, values)`` of the records that have a finite ``key``."""
    pairs = [(r["iter"], float(r[key])) for r in records
             if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Draw loss, lr and mIoU against iteration into ``out`` (default ``RUN_DIR/curves.png``).

    Raises:
        SpeccError: the run folder has no metrics, or they hold no training records.
    """
    import matplotlib  # here, not at the top: slow to import, and Agg must precede pyplot

    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    path = run_dir / METRICS if run_dir.is_dir() else run_dir
    records = read_metrics(path)
    if not records:
        raise SpeccError(f"{path}: no training records to plot yet")
    out = out or path.parent / FIGURE
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    panels = (("loss", "training loss", "log"), ("lr", "learning rate (poly)", "linear"),
              ("miou", "validation mIoU", "linear"))
    for ax, (key, title, scale) in zip(axes, panels, strict=True):
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, linewidth=1.5)
            ax.set_yscale(scale if min(ys) > 0 else "linear")
        else:
            ax.text(0.5, 0.5, "no values yet", ha="center", va="center", transform=ax.transAxes)
        if key == "miou":
            ax.set_ylim(0.0, 1.0)  # a fraction: the full range shows how far there is to go
        ax.set_xlim(0, 1.03 * max(r["iter"] for r in records))  # room for the last marker
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
    fig.suptitle(path.parent.name)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return out


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no window), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> Path:
    """Write a figure as PNG atomically and release it."""
    plt = _pyplot()
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return out


def _label_size(count: int) -> float:
    """A tick-label font size that keeps ``count`` names legible side by side."""
    return max(4.0, min(10.0, 360.0 / max(count, 1)))


def plot_confusion(matrix: Sequence[Sequence[int]], names: Sequence[str], out: Path,
                   title: str = "") -> Path:
    """The confusion matrix as a heat map, each row divided by its sum (the share of a true
    class's pixels given each prediction), rows and columns labelled with the class names.

    A row without labelled pixels stays blank. With up to 25 classes each cell shows its percentage.
    """
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.full_like(counts, np.nan), where=rows > 0)
    n = len(names)
    side = min(24.0, 3.0 + 0.3 * n)
    fig, ax = plt.subplots(figsize=(side + 1.5, side), constrained_layout=True)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class's pixels")
    size = _label_size(n)
    ax.set_xticks(range(n), labels=list(names), rotation=90, fontsize=size)
    ax.set_yticks(range(n), labels=list(names), fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 25:
        for t in range(n):
            for p in range(n):
                if rows[t, 0] > 0 and counts[t, p] > 0:
                    ax.text(p, t, f"{100 * shares[t, p]:.0f}", ha="center", va="center",
                            fontsize=size * 0.8, color="white" if shares[t, p] > 0.5 else "black")
    ax.set_title(title or "confusion matrix (rows: truth, normalized)")
    return _save(fig, out)


def plot_class_iou(per_class: Sequence[float | None], names: Sequence[str], miou: float,
                   out: Path, title: str = "") -> Path:
    """Per-class IoU as a bar chart with the mean as a line; a class absent from the labels and
    the predictions (IoU None) is marked "n/a" instead of a bar."""
    plt = _pyplot()
    n = len(names)
    fig, ax = plt.subplots(figsize=(min(30.0, 3.0 + 0.35 * n), 4.5), constrained_layout=True)
    values = [0.0 if v is None else 100 * v for v in per_class]
    ax.bar(range(n), values, color="tab:blue")
    for i, v in enumerate(per_class):
        if v is None:
            ax.text(i, 1, "n/a", ha="center", va="bottom", rotation=90, fontsize=_label_size(n))
    if math.isfinite(miou):
        ax.axhline(100 * miou, color="tab:red", linewidth=1.2, label=f"mIoU {100 * miou:.1f} %")
        ax.legend(loc="upper right")
    ax.set_xticks(range(n), labels=list(names), rotation=90, fontsize=_label_size(n))
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU %")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title or "per-class IoU")
    return _save(fig, out)
