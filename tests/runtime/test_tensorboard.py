"""specc train --tensorboard: the event files read back with TensorBoard's own reader."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import runkit
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runtime.tensorboard import Board

ITERS = 4


@pytest.fixture(scope="module")
def board_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("board") / "run"
    runkit.train_tiny(run, [f"train.iters={ITERS}", "train.eval_every=2",
                            "train.log_every=1", f"train.save_every={ITERS}"], tensorboard=True)
    return run


def _events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_scalars_match_metrics_jsonl(board_run: Path) -> None:
    events = _events(board_run)
    records = [json.loads(line) for line in (board_run / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["iter"], pytest.approx(r[key], rel=1e-6)) for r in records]
    evaluated = [r for r in records if "miou" in r]
    assert [e.step for e in events.Scalars("miou")] == [r["iter"] for r in evaluated] == [2, 4]
    assert events.Scalars("miou")[-1].value == pytest.approx(evaluated[-1]["miou"], rel=1e-6)
    per_class = evaluated[-1]["per_class_iou"]
    names = ["background", "class_1", "class_2", "class_3", "class_4"]
    for name, iou in zip(names, per_class, strict=True):
        tag = f"iou/{name}"
        if iou is None:
            assert tag not in events.Tags()["scalars"]
        else:
            assert events.Scalars(tag)[-1].value == pytest.approx(iou, rel=1e-6)


def test_overlays_and_graph(board_run: Path) -> None:
    events = _events(board_run)
    tags = events.Tags()
    assert sorted(t for t in tags["images"]) == ["val/0", "val/1", "val/2"]
    shots = events.Images("val/0")
    assert [s.step for s in shots] == [2, 4]
    assert (shots[0].width, shots[0].height) == (3 * 64, 64 + 16)  # image | labels | prediction
    assert tags["graph"]
    graph = events.Graph()
    assert any("Conv2d" in node.op or "conv" in node.op.lower() for node in graph.node)


def test_resume_replaces_what_was_logged_past_the_checkpoint(tmp_path: Path) -> None:
    """An interrupted run may have logged steps after its last checkpoint; the resumed run logs
    them again, and TensorBoard shows each step once, the resumed run's (as metrics.jsonl)."""
    run = tmp_path / "run"
    sets = ["train.log_every=1", "train.eval_every=0", "train.save_every=2"]
    runkit.train_tiny(run, [*sets, "train.iters=2"], tensorboard=True)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tensorboard")) as lost:  # logged, then killed before a save
        for step in (3, 4):
            lost.add_scalar("loss", 99.0, step)
    runkit.train_tiny(run, [*sets, "train.iters=4"], tensorboard=True, resume=True)
    losses = [(e.step, e.value) for e in _events(run).Scalars("loss")]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses == [(r["iter"], pytest.approx(r["loss"], rel=1e-6)) for r in records]
    assert [step for step, _ in losses] == [1, 2, 3, 4]


def test_graph_shows_no_torch_deprecation_warning(tmp_path: Path) -> None:
    """The graph is traced by torch.jit.trace, which recent torch releases deprecate: the run's
    output does not carry torch's notices about it."""
    board = Board(tmp_path, ["a"], (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        board.graph(runkit.random_network(), (33, 33))
    board.close()
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]


def test_without_the_flag_nothing_is_written(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = runkit.base_run(tmp_path_factory)
    assert not (run / "tensorboard").exists()


def test_missing_tensorboard_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    code, _, err = runkit.cli(["train", runkit.SPEC, "--tensorboard", "--out", tmp_path / "run",
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "tensorboard package is not installed" in err and "specc[tensorboard]" in err
    assert not (tmp_path / "run").exists()
