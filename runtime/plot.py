"""Training curves from ``RUN_DIR/metrics.jsonl``: loss, learning rate and mIoU, as one PNG.

matplotlib runs on its Agg backend (no display needed, works on servers and in CI). Lines of the
log that cannot be parsed — the last one, if training was killed while writing it — are skipped.
"""

from __future__ import annotations

import json
import math
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
