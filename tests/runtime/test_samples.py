"""`specc samples`: the first images of a split written as PNGs, labels in the VOC palette."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import runkit
from PIL import Image

from runtime.data import open_dataset, palette


def test_samples_writes_images_and_coloured_labels(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "samples"
    code, stdout, _ = runkit.cli(["samples", runkit.SPEC, "--out", out, "--count", "2",
                                  *runkit.sets(runkit.TINY)], capsys)
    assert code == 0 and "2 val image(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "0000_image.png", "0000_label.png", "0001_image.png", "0001_label.png"]
    dataset = open_dataset("synthetic", "val", runkit.NUM_CLASSES, seed=0, synthetic_size=64,
                           synthetic_length=6)
    image, label = dataset[1]
    assert np.array_equal(np.asarray(Image.open(out / "0001_image.png").convert("RGB")),
                          np.asarray(image))
    colours = np.asarray(Image.open(out / "0001_label.png").convert("RGB"))
    assert np.array_equal(colours, palette()[label])


def test_samples_bad_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = runkit.cli(["samples", runkit.SPEC, "--out", tmp_path, "--count", "0"], capsys)
    assert code == 2 and "--count" in err
