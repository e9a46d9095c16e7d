"""Training: the loss goes down, checkpoints survive kill -9, resume continues and refuses another
architecture, NaN stops the run, torchrun runs DDP on gloo (and prints an error its processes all
stop on once), bad data exits 2."""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import runkit
import torch
from PIL import Image

from runtime import checkpoint as ckpt
from runtime import train as train_mod
from runtime.plot import read_metrics
from specc.api import architecture_sha256
from specc.errors import TrainingError


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return runkit.base_run(tmp_path_factory)


def _iters(run: Path) -> list[int]:
    return [r["iter"] for r in read_metrics(run / "metrics.jsonl")]


# ---------------------------------------------------------------------------------------------
# The loop's pieces


def test_poly_lr() -> None:
    assert train_mod.poly_lr(0.007, 0, 100, 0.9) == 0.007
    assert train_mod.poly_lr(0.007, 50, 100, 0.9) == pytest.approx(0.007 * 0.5**0.9)
    assert train_mod.poly_lr(0.007, 99, 100, 0.9) > 0


def test_loss_ignores_void_and_never_divides_by_zero() -> None:
    logits = torch.randn(2, 3, 5, 5)
    labels = torch.full((2, 5, 5), 255)
    assert train_mod.segmentation_loss({"out": logits}, labels, 255, 0.4).item() == 0.0
    labels[0, 0, 0] = 1
    expected = torch.nn.functional.cross_entropy(logits[:1, :, :1, :1], labels[:1, :1, :1])
    got = train_mod.segmentation_loss({"out": logits}, labels, 255, 0.4)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    with_aux = train_mod.segmentation_loss({"out": logits, "aux": logits}, labels, 255, 0.4)
    assert with_aux.item() == pytest.approx(1.4 * expected.item(), rel=1e-5)
    with pytest.raises(TrainingError, match="upsample"):
        train_mod.segmentation_loss({"out": logits[..., :4]}, labels, 255, 0.4)


def test_weight_decay_and_frozen_bn() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    decay, no_decay = train_mod.param_groups(model, 4e-5)
    assert [p.ndim for p in decay["params"]] == [4]  # conv weight only
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # bias, BN γ, β
    train_mod.set_train_mode(model, freeze_bn=True)
    assert model.training and not model[1].training


# ---------------------------------------------------------------------------------------------
# A run


def test_loss_goes_down_and_run_folder_is_complete(trained: Path) -> None:
    records = read_metrics(trained / "metrics.jsonl")
    assert [r["iter"] for r in records] == list(range(1, runkit.BASE_ITERS + 1))
    losses = [r["loss"] for r in records]
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.75 * first, (first, last)
    lrs = [r["lr"] for r in records]
    assert lrs[0] == pytest.approx(0.02) and all(a > b for a, b in itertools.pairwise(lrs))
    assert 0.0 <= records[-1]["miou"] <= 1.0  # evaluated at the end
    weights, state, info = ckpt.load_checkpoint(trained)
    assert state["iteration"] == runkit.BASE_ITERS
    assert info["architecture_sha256"] == architecture_sha256(info["resolved"])
    assert info["resolved"]["train"]["iters"] == runkit.BASE_ITERS
    assert (trained / "checkpoint").is_symlink() and len(list(trained.glob("checkpoint-*"))) == 1
    assert (trained / "model.pt").is_file()
    bn = [k for k in weights if k.endswith("running_var")]
    assert bn and not all(torch.all(weights[k] == 1) for k in bn)  # BN statistics were trained


def test_crash_during_save_keeps_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    weights = {"w": torch.ones(2)}
    info = {"spec_sha256": "x", "architecture_sha256": "y", "resolved": {}}
    ckpt.save_checkpoint(tmp_path, weights=weights, state={"iteration": 1}, spec_info=info)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # stands in for a kill half-way through writing

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, weights={"w": torch.zeros(2)}, state={"iteration": 2},
                             spec_info=info)
    monkeypatch.undo()
    loaded, state, _ = ckpt.load_checkpoint(tmp_path)
    assert state["iteration"] == 1 and torch.equal(loaded["w"], torch.ones(2))
    ckpt.save_checkpoint(tmp_path, weights=weights, state={"iteration": 3}, spec_info=info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "checkpoint-0000003"]


def test_rng_state_round_trip() -> None:
    state = ckpt.rng_state()
    a = (np.random.rand(), torch.rand(1).item(), __import__("random").random())
    ckpt.set_rng_state(state)
    assert (np.random.rand(), torch.rand(1).item(), __import__("random").random()) == a


def test_kill_9_then_resume_continues(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [runkit.python(), "-m", "specc", "train", str(runkit.SPEC), "--out", str(run),
            "--iters", "30", "--save-every", "3", *runkit.sets(runkit.TINY)]
    env = {**os.environ, **runkit.ENV_ONE_THREAD}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runkit.wait_for(proc, run / "checkpoint")
    time.sleep(0.3)  # land somewhere in the next iterations, maybe in the middle of a save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, state, _ = ckpt.load_checkpoint(run)
    killed_at = state["iteration"]
    assert 3 <= killed_at < 30
    done = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming {run} at iteration {killed_at}" in done.stderr.replace("\n", "")
    assert _iters(run) == list(range(1, 31))  # continues; records past the checkpoint rewritten
    _, state, _ = ckpt.load_checkpoint(run)
    assert state["iteration"] == 30 and (run / "model.pt").is_file()


def test_resume_restores_optimizer_and_continues(trained: Path, tmp_path: Path) -> None:
    run = runkit.copy_run(trained, tmp_path / "run")
    _, before, _ = ckpt.load_checkpoint(run)
    iters = runkit.BASE_ITERS + 4
    runkit.train_tiny(run, [f"train.iters={iters}", f"train.save_every={iters}"], resume=True)
    assert _iters(run) == list(range(1, iters + 1))
    _, after, _ = ckpt.load_checkpoint(run)
    assert after["iteration"] == iters
    assert after["optimizer"]["state"].keys() == before["optimizer"]["state"].keys()


def test_resume_applies_new_momentum_and_weight_decay(trained: Path, tmp_path: Path) -> None:
    """train.momentum and train.weight_decay may change on resume, and then they apply: the
    optimizer state of the checkpoint brings its buffers, not its old settings."""
    iters = [f"train.iters={runkit.BASE_ITERS + 2}", f"train.save_every={runkit.BASE_ITERS + 2}"]
    same = runkit.copy_run(trained, tmp_path / "same")
    runkit.train_tiny(same, iters, resume=True)
    changed = runkit.copy_run(trained, tmp_path / "changed")
    runkit.train_tiny(changed, [*iters, "train.momentum=0.5", "train.weight_decay=0.01"],
                      resume=True)
    groups = ckpt.load_checkpoint(changed)[1]["optimizer"]["param_groups"]
    assert [(g["momentum"], g["weight_decay"]) for g in groups] == [(0.5, 0.01), (0.5, 0.0)]
    a, b = ckpt.load_checkpoint(same)[0], ckpt.load_checkpoint(changed)[0]
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


@pytest.mark.parametrize("override", ["backbone.output_stride=8", "aspp.channels=16"])
def test_resume_refuses_another_architecture(trained: Path, tmp_path: Path, override: str) -> None:
    run = runkit.copy_run(trained, tmp_path / "run")
    with pytest.raises(TrainingError, match="different architecture") as err:
        runkit.train_tiny(run, [override, "train.iters=50"], resume=True)
    assert override.split("=")[0] in str(err.value)  # says what changed
    assert ckpt.load_checkpoint(run)[1]["iteration"] == runkit.BASE_ITERS  # untouched


def test_resume_says_init_is_not_used_when_a_checkpoint_exists(
        trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--resume --init W`` restarts a job with one command line: W is loaded only when there is
    no checkpoint yet; otherwise the run's own weights are, and the message says so."""
    run = runkit.copy_run(trained, tmp_path / "run")
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", run, "--resume", "--init", trained,
                               "--iters", runkit.BASE_ITERS, *runkit.sets(runkit.TINY)], capsys)
    assert code == 0, err
    assert "initialized from" not in err
    assert f"--init {trained} is not used" in " ".join(err.split())


def test_init_second_stage_at_os8_with_frozen_bn(trained: Path, tmp_path: Path) -> None:
    """The paper's second stage: start from stage-1 weights, output stride 8, BN frozen."""
    run = tmp_path / "stage2"
    runkit.train_tiny(run, ["backbone.output_stride=8", "train.freeze_bn=true", "train.iters=2",
                            "train.save_every=2", "train.lr=0.001"], init=trained)
    before, _, _ = ckpt.load_checkpoint(trained)
    after, state, info = ckpt.load_checkpoint(run)
    assert state["iteration"] == 2 and info["resolved"]["backbone"]["output_stride"] == 8
    layers = [k.removesuffix("running_mean") for k in before if k.endswith("running_mean")]
    bn = [p + n for p in layers for n in ("weight", "bias", "running_mean", "running_var")]
    assert bn and all(torch.equal(before[k], after[k]) for k in bn)  # statistics and γ, β kept
    others = [k for k in before if k.endswith("weight") and k not in bn]
    assert any(not torch.equal(before[k], after[k]) for k in others)  # the rest trains


def test_new_run_refuses_to_overwrite(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", trained,
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and "--resume" in err


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    real = train_mod.segmentation_loss
    calls = {"n": 0}

    def poisoned(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        loss = real(*args, **kwargs)  # type: ignore[arg-type]
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(train_mod, "segmentation_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"loss is nan at iteration 5.*checkpoint-0000004"):
        runkit.train_tiny(run, ["train.iters=8", "train.save_every=2"])
    weights, state, _ = ckpt.load_checkpoint(run)
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not (run / "model.pt").exists()


def test_huge_lr_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", tmp_path / "run", "--iters", "12",
                               *runkit.sets([*runkit.TINY, "train.lr=1e30"])], capsys)
    assert code == 2
    assert "training stopped" in err and "Traceback" not in err


def _torchrun_train(*args: object) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node=2 -m specc train SPEC ARGS`` on the CPU (gloo)."""
    command = [runkit.python(), "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "specc", "train", str(runkit.SPEC), *map(str, args)]
    return subprocess.run(command, env={**os.environ, **runkit.ENV_ONE_THREAD},
                          capture_output=True, text=True, timeout=300)


def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = _torchrun_train("--out", run, "--iters", "3", "--save-every", "2",
                           *runkit.sets(runkit.TINY))
    assert done.returncode == 0, done.stderr
    assert _iters(run) == [1, 2, 3]
    _, state, _ = ckpt.load_checkpoint(run)
    assert state["iteration"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert (run / "model.pt").is_file()
    assert done.stderr.count("trained deeplabv3plus_mobilenetv2") == 1  # rank 0 reports
    # one process goes on from two: it trains, and says the result is not the two's
    alone = subprocess.run([runkit.python(), "-m", "specc", "train", str(runkit.SPEC),
                            "--out", str(run), "--iters", "4", "--resume",
                            *runkit.sets(runkit.TINY)],
                           env={**os.environ, **runkit.ENV_ONE_THREAD}, capture_output=True,
                           text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    assert ("note: the run was trained by 2 process(es) and goes on in 1: its data order and "
            "random draws from here differ from an uninterrupted run's (resume in 2 for the "
            "same result)") in alone.stderr
    assert ckpt.load_checkpoint(run)[1]["iteration"] == 4


def test_torchrun_error_every_process_meets_is_printed_once(tmp_path: Path) -> None:
    """A split too small for one batch stops both processes of the job alike: rank 0 alone says
    so, and each exits 2 (torchrun's summary lists every process's exit code)."""
    done = _torchrun_train("--out", tmp_path / "run",
                           *runkit.sets([*runkit.TINY, "data.synthetic.train_length=3"]))
    message = ("error: synthetic (train) has 3 images, fewer than one batch of 4 (2 per process "
               "× 2 processes)")
    assert done.returncode != 0
    assert done.stderr.count("fewer than one batch") == 1, done.stderr
    assert message in done.stderr.splitlines()  # the job's message: no rank before it
    assert re.findall(r"exitcode +: (-?\d+) \(pid", done.stderr) == ["2", "2"], done.stderr
    assert not (tmp_path / "run").exists()


def test_torchrun_error_one_process_meets_is_printed_by_it_after_its_rank(tmp_path: Path) -> None:
    """An image only one process reads cannot be read: that process says so, after its rank,
    and exits 2; the other, left waiting for it in a collective, loses it only after that."""
    root = _folder_data(tmp_path / "ds", [0, 0, 0, 0])  # one batch of 2 + 2: each image once
    (root / "images" / "train" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    done = _torchrun_train("--out", tmp_path / "run", "--iters", "2", "--data", f"folder:{root}",
                           *runkit.sets(runkit.TINY))
    said = re.findall(r"^rank ([01]): error: .*train/2\.png: cannot read image", done.stderr,
                      re.MULTILINE)
    assert len(said) == 1 and done.stderr.count("2.png: cannot read image") == 1, done.stderr
    assert "2" in re.findall(r"exitcode +: (-?\d+) \(pid", done.stderr), done.stderr
    lost = done.stderr.find("Connection closed by peer")
    assert lost == -1 or lost > done.stderr.index("2.png: cannot read image"), done.stderr


def test_batch_must_split_over_processes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(train_mod.distributed, "setup",
                        lambda device=None: train_mod.distributed.Context(rank=0, world_size=3))
    monkeypatch.setattr(train_mod.distributed, "cleanup", lambda ctx: None)
    with pytest.raises(TrainingError, match="multiple of 3"):
        runkit.train_tiny(tmp_path / "run")


@pytest.mark.parametrize(("world", "expected"), [
    (1, "fewer than one batch of 4"), (2, "fewer than one batch of 4 (2 per process × 2 "
                                          "processes)")])
def test_a_split_smaller_than_one_batch_says_how_many_images_a_batch_needs(
        world: int, expected: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(train_mod.distributed, "setup",
                        lambda device=None: train_mod.distributed.Context(rank=0,
                                                                          world_size=world))
    monkeypatch.setattr(train_mod.distributed, "cleanup", lambda ctx: None)
    with pytest.raises(TrainingError) as err:
        runkit.train_tiny(tmp_path / "run", ["data.synthetic.train_length=3"])
    assert str(err.value).endswith(f"has 3 images, {expected}")


def test_corrupt_training_image_in_worker_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "ds"
    for split in ("train", "val"):
        for i in range(4):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            rgb = np.random.default_rng(i).integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / "images" / split / f"{i}.png")
            Image.fromarray(np.zeros((24, 32), np.uint8)).save(root / "masks" / split / f"{i}.png")
    (root / "images" / "train" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", tmp_path / "run", "--iters", "4",
                               "--data", f"folder:{root}",
                               *runkit.sets([*runkit.TINY, "train.workers=2"])], capsys)
    assert code == 2
    assert "images/train/2.png" in err
    assert "Traceback" not in err and "worker" not in err


def _folder_data(root: Path, train_masks: list[int]) -> Path:
    """A folder data set: one train image per mask value (each mask of that one value) and two
    labelled val images."""
    splits = {"train": train_masks, "val": [0, 1]}
    for split, values in splits.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i, value in enumerate(values):
            rgb = np.random.default_rng(i).integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / "images" / split / f"{i}.png")
            Image.fromarray(np.full((24, 32), value, np.uint8)).save(root / "masks" / split /
                                                                     f"{i}.png")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_training_split_without_a_labelled_pixel_stops_before_training(
    workers: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a whole run at loss 0: exit 2 before the first step, nothing written."""
    root = _folder_data(tmp_path / "ds", [255] * 6)
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", tmp_path / "run", "--iters", "4",
                               "--data", f"folder:{root}",
                               *runkit.sets([*runkit.TINY, f"train.workers={workers}"])], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        f"error: folder:{root} (train): no pixel of its 6 images is labelled (every mask pixel "
        "is 255, which the loss ignores); there is nothing to train on. Masks hold class ids "
        "0..4; check the mask files and data.train_split")
    assert not (tmp_path / "run").exists()


def test_training_split_labelled_in_its_last_image_trains(tmp_path: Path) -> None:
    root = _folder_data(tmp_path / "ds", [255, 255, 255, 255, 3])
    result = runkit.train_tiny(tmp_path / "run", ["train.iters=2", f"data.source=folder:{root}"])
    assert result.iteration == 2


def test_classes_no_mask_labels_are_named_by_train_eval_and_class_weights(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Masks that label only class 0 (a two-class mask saved as 0/255 reads so): the mIoU of
    100 % comes with a note naming the classes left out, and class-weights warns."""
    root = _folder_data(tmp_path / "ds", [0, 0, 0, 0])
    for i in range(2):  # the val masks too: background, and 255 where the object is
        mask = np.zeros((24, 32), np.uint8)
        mask[8:16, 8:24] = 255
        Image.fromarray(mask).save(root / "masks" / "val" / f"{i}.png")
    tiny = runkit.sets([*runkit.TINY, "num_classes=2"])
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", tmp_path / "run", "--iters", "2",
                               "--data", f"folder:{root}", *tiny], capsys)
    assert code == 0, err
    note = ("note: 1 of 2 classes have no labelled pixel in the val split: 1 ({name}); the mIoU "
            "averages the others (255 in a mask is the ignore label, not a class)")
    assert "val mIoU 100.00 %" in err
    assert note.format(name="class_1") in err.splitlines()
    code, out, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", tmp_path / "run",
                                 "--data", f"folder:{root}", *tiny], capsys)
    assert code == 0, err
    assert note.format(name="class_1") in out.splitlines()
    code, _, err = runkit.cli(["class-weights", runkit.SPEC, "--data", f"folder:{root}", *tiny],
                              capsys)
    assert code == 0
    assert ("warning: 1 of 2 classes have no labelled pixel in the train split: 1 (class_1); "
            "they get weight 0 and are never trained") in err


def test_metrics_record_fields(trained: Path) -> None:
    first = json.loads((trained / "metrics.jsonl").read_text().splitlines()[0])
    assert {"iter", "loss", "lr", "it_s", "elapsed_s"} <= first.keys()


def test_init_from_backbone_only_weights(trained: Path, tmp_path: Path) -> None:
    """A backbone-only file (import-weights --backbone-only) starts the backbone; heads start fresh."""
    from safetensors.torch import save_file

    weights, _, _ = ckpt.load_checkpoint(trained)
    backbone = {k: v.contiguous() for k, v in weights.items() if k.startswith("backbone.")}
    source = tmp_path / "backbone.safetensors"
    save_file(backbone, str(source), metadata={"specc.contents": "backbone"})
    run = tmp_path / "run"
    runkit.train_tiny(run, ["train.iters=1", "train.save_every=1", "train.lr=1e-9",
                            "train.freeze_bn=true"], init=source)
    after, _, _ = ckpt.load_checkpoint(run)
    conv = [k for k in backbone if k.endswith("conv.weight")]
    assert conv and all(torch.allclose(after[k], backbone[k], atol=1e-6) for k in conv)
    heads = [k for k in after if k.startswith(("aspp.", "decoder.")) and k.endswith("conv.weight")]
    assert heads and any(not torch.allclose(after[k], weights[k], atol=1e-3) for k in heads)


def test_optimizer_is_fused_and_steps_as_the_per_parameter_loop() -> None:
    """make_optimizer's fused SGD gives the weights the per-parameter loop gives, to float
    rounding, over steps with momentum, weight decay on one group only and a parameter without gradient
    (as a frozen backbone leaves it)."""
    from types import SimpleNamespace

    from runtime import finetune

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                torch.nn.Conv2d(8, 4, 1))
    twin = copy.deepcopy(model)
    start = copy.deepcopy(model)
    tr = SimpleNamespace(lr=0.05, momentum=0.9)
    fused = train_mod.make_optimizer(finetune.lr_groups(model, 1e-3, {}), tr)
    loop = torch.optim.SGD(finetune.lr_groups(twin, 1e-3, {}).groups, lr=0.05, momentum=0.9,
                           foreach=False)
    assert fused.defaults["fused"] is True
    for step in range(4):
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            grad = torch.randn(a.shape)
            a.grad, b.grad = grad.clone(), grad.clone()
        if step == 2:
            model[0].weight.grad = twin[0].weight.grad = None
        fused.step()
        loop.step()
    for a, b, c in zip(model.parameters(), twin.parameters(), start.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-7)
        assert (a - c).abs().max().item() > 1e-3  # every parameter moved
