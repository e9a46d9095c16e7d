"""Batched evaluation on the inference-optimized network: the same confusion matrix as one image
at a time on the training module."""

from __future__ import annotations

from pathlib import Path

import pytest
import runkit
import torch

from runtime import distributed
from runtime.evaluate import evaluate, same_size_batches, val_batches
from specc.api import build, load_spec
from specc.artifacts import load_weights, read_weights
from specc.passes import optimize_for_inference

CPU = torch.device("cpu")


def _pairs(sizes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One ``(image, label)`` batch of one per size; the label of image i is filled with i."""
    return [(torch.randn(1, 3, h, w), torch.full((1, h, w), i)) for i, (h, w) in enumerate(sizes)]


def test_same_size_batches_groups_consecutive_images_of_one_size() -> None:
    sizes = [(33, 33), (33, 33), (33, 33), (40, 33), (33, 33), (33, 33)]
    groups = list(same_size_batches(_pairs(sizes), 2))
    assert [tuple(g[0].shape) for g in groups] == [
        (2, 3, 33, 33), (1, 3, 33, 33), (1, 3, 40, 33), (2, 3, 33, 33)]
    # order kept, images and labels stay together
    assert [int(v) for g in groups for v in g[1][:, 0, 0]] == list(range(6))
    assert len(list(same_size_batches(_pairs(sizes), 1))) == 6


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return runkit.base_run(tmp_path_factory)


def test_batched_optimized_eval_equals_one_at_a_time(trained: Path) -> None:
    """The trained run's validation set: the training module image by image against the
    optimized module eight at a time."""
    doc = load_spec(runkit.SPEC, runkit.TINY)
    model = build(doc).module
    load_weights(model, read_weights(trained))
    _, loader = val_batches(doc.spec, distributed.Context(device=CPU))
    before = evaluate(model, loader, runkit.NUM_CLASSES, device=CPU)
    after = evaluate(optimize_for_inference(model), loader, runkit.NUM_CLASSES, device=CPU,
                     batch_size=8)
    assert after.confusion == before.confusion and after.pixels == before.pixels > 0
    assert after.miou == before.miou and after.per_class_iou == before.per_class_iou


def test_batched_eval_of_varying_sizes_equals_one_at_a_time() -> None:
    """Random weights (predictions vary over the image), images of three sizes interleaved."""
    model = runkit.random_network()
    torch.manual_seed(1)
    sizes = [(33, 41), (33, 41), (49, 33), (33, 41), (33, 41), (33, 41), (65, 65), (65, 65)]
    pairs = [(torch.randn(1, 3, h, w), torch.randint(0, runkit.NUM_CLASSES, (1, h, w)))
             for h, w in sizes]
    before = evaluate(model, pairs, runkit.NUM_CLASSES, device=CPU)
    after = evaluate(optimize_for_inference(model), pairs, runkit.NUM_CLASSES, device=CPU,
                     batch_size=3)
    assert after.confusion == before.confusion
    predicted = torch.tensor(before.confusion).sum(0)
    assert (predicted > 0).sum() > 1, "predictions of one class would not show a wrong batch"
