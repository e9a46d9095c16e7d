"""TensorBoard logging of a training run (``specc train --tensorboard``), into ``RUN_DIR/tensorboard``.

What is written:

* scalars at every logged iteration: ``loss``, ``lr``; at every evaluation ``miou``,
  ``pixel_accuracy`` and ``iou/<class name>`` for each class with a defined IoU;
* at every evaluation, ``val/<i>`` for the first :data:`OVERLAY_IMAGES` validation images: the
  image, its labels and the prediction side by side (VOC colours);
* once, the model's graph, traced on one input of the training crop's size.

``tensorboard`` is an optional dependency (``pip install 'specc[tensorboard]'``);
:func:`require_tensorboard` says so in one message before a run starts.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime.data import eval_transform
from runtime.eval_outputs import error_panels
from specc.errors import SpeccError

#: Validation images drawn at every evaluation: enough to follow, few enough to stay cheap.
OVERLAY_IMAGES = 3
FOLDER = "tensorboard"


def require_tensorboard() -> None:
    """Check that the ``tensorboard`` package is installed.

    Raises:
        SpeccError: it is not (with the command that installs it).
    """
    if importlib.util.find_spec("tensorboard") is None:
        raise SpeccError("--tensorboard: the tensorboard package is not installed; install it "
                         "with: pip install 'specc[tensorboard]' (or pip install tensorboard)")


class Board:
    """The TensorBoard writer of one run and what it knows to label its figures."""

    def __init__(self, run_dir: Path, class_names: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], start: int = 0) -> None:
        """A run resumed at iteration ``start`` marks it in the event file, so TensorBoard drops
        what the interrupted run logged past its checkpoint (steps after ``start``, as
        metrics.jsonl is cut back there) instead of drawing those steps twice."""
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / FOLDER), purge_step=start + 1 if start else None)
        self.class_names = list(class_names)
        self.transform = eval_transform(mean=mean, std=std)

    def record(self, record: dict[str, Any]) -> None:
        """The scalars of one metrics.jsonl record (its ``iter`` is the step)."""
        step = record["iter"]
        for key in ("loss", "lr", "miou", "pixel_accuracy"):
            value = record.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        for i, iou in enumerate(record.get("per_class_iou") or ()):
            if iou is not None:
                name = self.class_names[i] if i < len(self.class_names) else f"class {i}"
                self.writer.add_scalar(f"iou/{name}", iou, step)

    def graph(self, model: nn.Module, size: Sequence[int]) -> None:
        """The model's graph, traced in eval mode on one zero input of ``size`` (H, W); the
        model's mode is restored afterwards."""
        was_training = model.training
        model.eval()
        example = torch.zeros(1, 3, *size, device=next(model.parameters()).device)
        try:
            with warnings.catch_warnings():  # torch's "torch.jit.trace is deprecated", twice
                warnings.simplefilter("ignore", FutureWarning)
                self.writer.add_graph(model, example, use_strict_trace=False)
        finally:
            model.train(was_training)

    def overlays(self, model: nn.Module, dataset: Any, step: int) -> None:
        """Predict the first validation images and add each as image | labels | prediction."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            for i in range(min(OVERLAY_IMAGES, len(dataset))):
                picture, label = dataset[i]
                x, _ = self.transform((picture, label))
                with torch.inference_mode():
                    out = model(x[None].to(device))
                logits = out["out"] if isinstance(out, dict) else out
                prediction = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
                sheet = error_panels(picture, label, prediction, ("image", "labels", "prediction"))
                self.writer.add_image(f"val/{i}", np.asarray(sheet), step, dataformats="HWC")
        finally:
            model.train(was_training)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
