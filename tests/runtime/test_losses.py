"""train.loss against direct computations with torch.nn.functional; class weights from label
frequencies; gradient accumulation against one larger batch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import runkit
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from runtime import distributed, finetune, losses
from runtime import train as train_mod
from runtime.plot import read_metrics
from specc.errors import TrainingError
from specc.spec_train import LossSpec, TrainSpec

C = 4


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels with some ignored pixels."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 7, 9, generator=g) * 3
    labels = torch.randint(0, C, (2, 7, 9), generator=g)
    labels[0, :2] = 255
    labels[1, :, :3] = 255
    return logits, labels


WEIGHTS = [0.5, 2.0, 1.0, 3.0]


@pytest.mark.parametrize(("weights", "smoothing"), [(None, 0.0), (WEIGHTS, 0.0), (None, 0.1),
                                                    (WEIGHTS, 0.2)])
def test_cross_entropy_is_torchs_mean(batch, weights, smoothing) -> None:
    logits, labels = batch
    spec = LossSpec(class_weights=weights, label_smoothing=smoothing)
    w = losses.class_weight_tensor(spec, C, "cpu")
    got = losses.mean_loss(logits, labels, 255, spec, weight=w)
    expected = F.cross_entropy(logits, labels, weight=w, ignore_index=255,
                               label_smoothing=smoothing)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_hard_pixels_keep_the_top_fraction_after_warmup(batch, weights) -> None:
    logits, labels = batch
    spec = LossSpec(kind="hard_pixel", top_k=0.25, warmup_iters=3, class_weights=weights)
    w = losses.class_weight_tensor(spec, C, "cpu")
    per_pixel = F.cross_entropy(logits, labels, weight=w, ignore_index=255, reduction="none")
    labelled = labels != 255
    k = math.ceil(0.25 * int(labelled.sum()))
    top, where = per_pixel[labelled].topk(k)
    counts = (torch.ones_like(per_pixel) if w is None else w[labels.clamp(max=C - 1)])[labelled]
    expected = top.sum() / counts[where].sum()
    assert losses.mean_loss(logits, labels, 255, spec, iteration=3, weight=w).item() == \
        pytest.approx(expected.item(), rel=1e-5)
    # during the warm-up every labelled pixel counts
    warm = losses.mean_loss(logits, labels, 255, spec, iteration=2, weight=w)
    assert warm.item() == pytest.approx(
        F.cross_entropy(logits, labels, weight=w, ignore_index=255).item(), rel=1e-5)
    # the hardest quarter costs more than the average pixel
    assert expected > warm


def test_all_void_batch_is_zero_and_aux_is_weighted(batch) -> None:
    logits, labels = batch
    spec = LossSpec(kind="hard_pixel", class_weights=WEIGHTS)
    void = torch.full_like(labels, 255)
    assert losses.mean_loss(logits, void, 255, spec, iteration=5).item() == 0.0
    main = losses.mean_loss(logits, labels, 255, spec, iteration=5)
    both = train_mod.segmentation_loss({"out": logits, "aux": logits}, labels, 255, 0.4,
                                       loss_spec=spec, iteration=5)
    assert both.item() == pytest.approx(1.4 * main.item(), rel=1e-5)


def test_class_weights_must_match_the_classes() -> None:
    with pytest.raises(TrainingError, match=r"expected 4 weights .* found 3"):
        losses.class_weight_tensor(LossSpec(class_weights=[1, 1, 1]), 4, "cpu")
    with pytest.raises(TrainingError, match="all 0"):
        losses.class_weight_tensor(LossSpec(class_weights=[0, 0]), 2, "cpu")


def test_weights_from_counts_by_hand() -> None:
    pixels, image_pixels = np.array([6, 2, 0, 2]), np.array([10, 4, 0, 8])
    # frequencies 0.6, 0.5, 0.25: median 0.5
    assert losses.weights_from_counts(pixels, image_pixels, "median_frequency") == \
        pytest.approx([0.5 / 0.6, 1.0, 0.0, 2.0], rel=1e-5)
    assert losses.weights_from_counts(pixels, image_pixels, "inverse") == \
        pytest.approx([10 / 18, 10 / 6, 0.0, 10 / 6], rel=1e-5)


def test_class_weights_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Weights of a folder data set, computed by the command and by hand from the masks."""
    labels = {"a": np.array([[0, 0, 1, 255]] * 4, np.uint8),
              "b": np.array([[0, 2, 2, 2]] * 4, np.uint8)}
    root = tmp_path / "ds"
    for stem, label in labels.items():
        for folder, picture in (("images", np.zeros((*label.shape, 3), np.uint8)),
                                ("masks", label)):
            (root / folder / "train").mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(root / folder / "train" / f"{stem}.png")
    out = tmp_path / "weights.yaml"
    code, printed, err = runkit.cli(
        ["class-weights", runkit.SPEC, "--data", f"folder:{root}", "--out", out,
         "--method", "inverse", *runkit.sets(["num_classes=3", "train.workers=0"])], capsys)
    assert code == 0, err
    pixels = np.bincount(np.concatenate([v.ravel() for v in labels.values()]), minlength=256)[:3]
    expected = pixels.sum() / (3 * pixels)
    written = yaml.safe_load(out.read_text())
    assert written == yaml.safe_load(printed)
    assert written["train"]["loss"]["class_weights"] == pytest.approx(expected, rel=1e-5)
    code, _, err = runkit.cli(["class-weights", runkit.SPEC, "--method", "mode"], capsys)
    assert code == 2 and "--method: expected one of median_frequency, inverse" in err


# ---------------------------------------------------------------------------------------------
# Gradient accumulation


class PixelNet(nn.Module):
    """A per-pixel network (1×1 convs, no batch norm, no dropout): each image's loss depends on
    that image alone, so accumulating two batches of 2 is exactly one batch of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 1)
        self.classifier = nn.Conv2d(8, C, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(torch.relu(self.backbone(x)))}


def _one_step(model: nn.Module, micro: list[tuple[torch.Tensor, torch.Tensor]],
              accumulate: int) -> float:
    groups = finetune.lr_groups(model, 1e-4, {})
    optimizer = torch.optim.SGD(groups.groups, lr=0.1, momentum=0.9)
    tr = TrainSpec(accumulate=accumulate)
    return train_mod._step(model, optimizer, torch.amp.GradScaler("cpu", enabled=False), micro,
                           0.1, tr, distributed.Context(rank=0, world_size=1), None, False,
                           train_mod.Tuning(groups), Path("unused"), 0)


def test_accumulating_two_batches_of_2_is_one_batch_of_4() -> None:
    torch.manual_seed(0)
    images = torch.randn(4, 3, 6, 6)
    labels = torch.randint(0, C, (4, 6, 6))  # every pixel labelled: equal counts per half
    big, small = PixelNet(), PixelNet()
    small.load_state_dict(big.state_dict())
    whole = _one_step(big, [(images, labels)], 1)
    halves = _one_step(small, [(images[:2], labels[:2]), (images[2:], labels[2:])], 2)
    assert halves == pytest.approx(whole, rel=1e-6)
    for (name, a), b in zip(big.named_parameters(), small.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7), name


def test_accumulation_in_a_run_reads_more_batches_and_records_the_batch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    runkit.train_tiny(run, ["train.iters=2", "train.save_every=2", "train.batch_size=2",
                            "train.accumulate=2", "train.loss.kind=hard_pixel",
                            "train.loss.top_k=0.5"])
    record = json.loads((run / train_mod.RUN_RECORD).read_text())
    assert record["effective_batch"] == 4 and record["accumulate"] == 2
    assert record["loss"]["kind"] == "hard_pixel"
    assert [r["iter"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
