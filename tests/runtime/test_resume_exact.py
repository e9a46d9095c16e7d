"""Resume continues exactly: a run stopped at iteration k and resumed reads the same batches,
draws the same augmentation and dropout numbers, and ends with the weights of the run that was
never stopped (on the CPU, to float tolerance)."""

from __future__ import annotations

from pathlib import Path

import pytest
import runkit
import torch

from runtime import checkpoint as ckpt
from runtime import train as train_mod
from runtime.data import SyntheticSegmentation, TrainOrder, train_stream, train_transform

ITERS, STOP = 7, 3
RUN = [f"train.iters={ITERS}", f"train.save_every={STOP}", "data.synthetic.train_length=12",
       "train.lr=0.1"]


def _stop_at(monkeypatch: pytest.MonkeyPatch, iteration: int) -> None:
    """Make the run die at the start of step ``iteration`` (0-based), as a kill would."""
    real = train_mod._step

    def step(*args: object, **kwargs: object) -> float:
        if args[-1] == iteration:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "_step", step)


@pytest.mark.parametrize(("workers", "read_ahead"), [(0, False), (0, True), (2, False)])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, read_ahead: bool
) -> None:
    extra = [*RUN, f"train.workers={workers}"]
    straight = tmp_path / "straight"
    with monkeypatch.context() as m:
        m.setattr(train_mod, "usable_cores", lambda: 1)  # every core busy: the loop reads
        runkit.train_tiny(straight, extra)
    if read_ahead:  # the interrupted and resumed run reads in a thread instead
        monkeypatch.setattr(train_mod, "usable_cores", lambda: torch.get_num_threads() + 1)
    stopped = tmp_path / "stopped"
    with monkeypatch.context() as m:
        _stop_at(m, STOP + 1)  # one step past the checkpoint: that step is done again
        with pytest.raises(KeyboardInterrupt):
            runkit.train_tiny(stopped, extra)
    assert ckpt.load_checkpoint(stopped)[1]["iteration"] == STOP
    runkit.train_tiny(stopped, extra, resume=True)
    expected, _, _ = ckpt.load_checkpoint(straight)
    got, state, _ = ckpt.load_checkpoint(stopped)
    assert state["iteration"] == ITERS
    assert expected.keys() == got.keys()
    # the same operations on the same numbers: equal, not merely close (tolerance 0)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_order_resumed_at_any_batch_is_the_tail_of_the_whole_stream() -> None:
    whole = TrainOrder(10, 3, seed=5, rank=1, world_size=2)
    assert whole.batches_per_epoch == 1  # 5 samples per process, one whole batch of 3
    stream = [key for _, key in zip(range(30), whole, strict=False)]
    for start in range(6):
        tail = TrainOrder(10, 3, seed=5, rank=1, world_size=2, start_batch=start)
        got = [key for _, key in zip(range(30 - 3 * start), tail, strict=False)]
        assert got == stream[3 * start:]
    epochs = [sorted(i for i, _ in stream[e * 3:(e + 1) * 3]) for e in range(10)]
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled every epoch
    other = TrainOrder(10, 3, seed=5, rank=0, world_size=2)
    assert not set(other.epoch(4)) & set(whole.epoch(4))  # the processes share no sample


def test_augmentation_depends_on_the_position_not_the_global_generator() -> None:
    data = SyntheticSegmentation("train", num_classes=3, image_size=32, length=8)
    transform = train_transform(17, mean=(0.5,) * 3, std=(0.5,) * 3)
    loader, _ = train_stream(data, transform, 2, seed=3, num_workers=0)
    torch.manual_seed(1)
    a = next(iter(loader))[0]
    state = torch.get_rng_state()
    torch.manual_seed(99)  # a different global state changes nothing
    b = next(iter(loader))[0]
    torch.testing.assert_close(a, b)
    torch.manual_seed(1)
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), state)  # and the global generator is left alone
