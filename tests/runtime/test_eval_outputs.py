"""specc eval --out: confusion matrix, per-class IoU chart and the worst images, on real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import runkit
import torch
from PIL import Image

from runtime.data import colorize, eval_transform, open_split
from runtime.data.layouts import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES
from runtime.eval_outputs import WorstImages, class_names, error_panels
from runtime.evaluate import alignment, predict_probs
from runtime.metrics import confusion_matrix, scores
from runtime.plot import plot_confusion
from specc.api import build, load_spec
from specc.artifacts import load_weights, read_weights


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return runkit.base_run(tmp_path_factory)


def test_worst_images_keeps_the_lowest_miou() -> None:
    label = torch.tensor([[0, 0, 1, 1]])
    worst = WorstImages(2, 2)
    worst.add(0, torch.tensor([[0, 0, 1, 1]]), label)  # perfect: 1.0
    worst.add(1, torch.tensor([[1, 1, 0, 0]]), label)  # all wrong: 0.0
    worst.add(2, torch.tensor([[0, 0, 0, 1]]), label)  # (2/3 + 1/2) / 2
    worst.add(3, torch.tensor([[0, 0, 1, 1]]), torch.full((1, 4), 255))  # nothing labelled
    kept = worst.worst()
    assert [(round(m, 4), i) for m, i, _ in kept] == [(0.0, 1), (round(7 / 12, 4), 2)]
    assert np.array_equal(kept[0][2], [[1, 1, 0, 0]]) and kept[0][2].dtype == np.uint8
    assert WorstImages(0, 2).worst() == []


def test_fixed_layouts_name_their_classes() -> None:
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person"
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[18] == "bicycle"
    assert len(ADE20K_CLASSES) == 150 and ADE20K_CLASSES[0] == "wall"
    assert ADE20K_CLASSES[-1] == "flag"
    assert len(set(ADE20K_CLASSES)) == 150

    class Named:
        class_names = ("sky", "grass")

    assert class_names(Named(), 2) == ["sky", "grass"]
    assert class_names(Named(), 3) == ["class 0", "class 1", "class 2"]
    assert class_names(object(), 2) == ["class 0", "class 1"]


def test_error_panels_show_image_labels_and_prediction() -> None:
    image = Image.fromarray(np.full((6, 8, 3), 200, np.uint8))
    label = np.zeros((6, 8), np.uint8)
    label[:, 4:] = 255
    prediction = np.ones((6, 8), np.uint8)
    sheet = np.asarray(error_panels(image, label, prediction, ("a", "b", "c")))
    assert sheet.shape[:2] == (6 + 16, 24)
    body = sheet[16:]
    assert np.array_equal(body[:, :8], np.asarray(image))
    assert np.array_equal(body[:, 8:16], np.asarray(colorize(label).convert("RGB")))
    assert np.array_equal(body[:, 16:], np.asarray(colorize(prediction).convert("RGB")))


def test_confusion_heat_map_of_150_classes(tmp_path: Path) -> None:
    matrix = np.eye(150, dtype=int) * 10 + 1
    out = plot_confusion(matrix.tolist(), ADE20K_CLASSES, tmp_path / "c.png")
    with Image.open(out) as png:
        assert png.format == "PNG" and min(png.size) >= 1000


def _per_image_miou(trained: Path) -> list[float]:
    """Each validation image's own mIoU, computed here image by image on the training module
    (padded to the training grid, as specc eval runs it)."""
    doc = load_spec(runkit.SPEC, runkit.TINY)
    model = build(doc).module
    load_weights(model, read_weights(trained))
    model.eval()
    dataset = open_split(doc.spec, doc.spec.data.val_split)
    transform = eval_transform(mean=doc.spec.input.mean, std=doc.spec.input.std)
    values = []
    for i in range(len(dataset)):
        x, y = transform(dataset[i])
        with torch.inference_mode():
            pred = predict_probs(model, x[None], align=alignment(doc.resolved)).argmax(1)[0]
        values.append(scores(confusion_matrix(pred, y, runkit.NUM_CLASSES)).miou)
    return values


def test_eval_out_writes_confusion_iou_and_worst(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    code, stdout, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", trained, "--json",
                                    "--out", out, "--worst", "2", *runkit.sets(runkit.TINY)],
                                   capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert json.loads((out / "eval.json").read_text())["miou"] == report["miou"]
    confusion = json.loads((out / "confusion.json").read_text())
    names = ["background", "class_1", "class_2", "class_3", "class_4"]
    assert confusion["classes"] == names == report["classes"]
    matrix = np.asarray(confusion["matrix"])
    assert matrix.shape == (5, 5) and matrix.sum() == report["pixels"]
    # the matrix is the one scored: its IoUs are the report's
    assert scores(torch.tensor(matrix)).per_class_iou == report["per_class_iou"]
    for row, shares in zip(matrix, confusion["normalized"], strict=True):
        assert shares is None if row.sum() == 0 else sum(shares) == pytest.approx(1.0)
    for name in ("confusion.png", "class_iou.png"):
        with Image.open(out / name) as png:
            assert png.format == "PNG" and min(png.size) > 200
    # the two worst images are those with the lowest mIoU of their own, worst first
    per_image = _per_image_miou(trained)
    expected = sorted(range(len(per_image)), key=lambda i: (per_image[i], i))[:2]
    drawn = sorted(p.name for p in (out / "worst").iterdir())
    assert drawn == [f"01_{expected[0]:05d}.png", f"02_{expected[1]:05d}.png"]
    with Image.open(out / "worst" / drawn[0]) as png:
        assert png.size == (3 * 64, 64 + 16)
    assert sorted(report["outputs"]) == sorted(str(p) for p in out.rglob("*") if p.is_file())
    assert len(report["outputs"]) == 6
    # again into the same folder with fewer worst images: the panels of the last run only, and
    # a file of the user's own is left alone
    (out / "worst" / "notes.txt").write_text("mine")
    code, _, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", trained, "--out", out,
                               "--worst", "1", *runkit.sets(runkit.TINY)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (out / "worst").iterdir()) == [drawn[0], "notes.txt"]


def test_eval_out_on_a_file_exits_2(trained: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", trained, "--out", blocker,
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and "expected a folder" in err and "Traceback" not in err
